"""Recipes in a row: a recipe file whose key is ``stages:`` (SFT, then DPO) trains each stage from the adapter of
the one before it, as ``dpo-recipe train --recipe A --then B`` does.

    # SFT first, then DPO from its adapter
    stages:
      - recipe: gemma3-270m-ja          # a packaged name, or a path (relative to this file's folder)
        set:                            # its --set items, as a mapping
          training.objective: sft
      - gemma3-270m-ja                  # a stage with no settings of its own
    output_dir: outputs/gemma3-270m-ja-sft-dpo   # stage N writes OUTPUT_DIR/stage-N

The stage list is read and checked here, torch-free, before anything trains: a stage that is itself a list of
stages (the only way a list could loop) or a malformed entry is one paragraph naming the file and the entry.
Each stage's recipe is then checked whole by the front end (``dpo_recipe.train.stages_main``) before the first
stage trains, so an unknown objective in the last stage costs a second, not the first stage's run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dpo_recipe.config.loader import resolve_recipe_path
from dpo_recipe.config.vocabulary import suggest
from dpo_recipe.errors import RecipeError

STAGES_KEYS = ("stages", "output_dir")
STAGE_KEYS = ("recipe", "set")


@dataclass(frozen=True)
class Stage:
    """One run of a chain: a recipe (packaged name or path) and its own ``--set`` items."""

    recipe: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stages:
    """A ``stages:`` file: its stages in order and where the chain writes (default ``outputs/FILE_STEM``)."""

    stages: tuple[Stage, ...]
    output_dir: str


def read_stages(path: Path) -> Stages | None:
    """The stages ``path`` lists, or None when it is a plain recipe (no ``stages:`` key)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # not ours to report: loading it as a recipe names the problem
    if not isinstance(raw, dict) or "stages" not in raw:
        return None
    unknown = [f"{key}{suggest(str(key), STAGES_KEYS)}" for key in raw if key not in STAGES_KEYS]
    if unknown:
        raise RecipeError(
            f"{path}: a stages file holds 'stages:' and optionally 'output_dir:', not {', '.join(unknown)}. Put "
            "a stage's settings under its 'set:' (e.g. set: {training.learning_rate: 1.0e-5})."
        )
    entries, output_dir = raw["stages"], raw.get("output_dir")
    if not isinstance(entries, list) or not entries:
        raise RecipeError(f"{path}: 'stages:' must be a list of one or more recipes (a name, or recipe: + set:).")
    if output_dir is not None and (not isinstance(output_dir, str) or not output_dir.strip()):
        raise RecipeError(f"{path}: output_dir must be a folder path, got {output_dir!r}.")
    stages = tuple(_stage(entry, index, path) for index, entry in enumerate(entries, 1))
    return Stages(stages, output_dir or f"outputs/{path.stem}")


def _stage(entry: Any, index: int, path: Path) -> Stage:
    where = f"{path}: stage {index}"
    if isinstance(entry, str):
        entry = {"recipe": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("recipe"), str) or not entry["recipe"].strip():
        raise RecipeError(f"{where} must name its recipe: '- NAME_OR_PATH' or '- recipe: NAME_OR_PATH', got {entry!r}.")
    unknown = [f"{key}{suggest(str(key), STAGE_KEYS)}" for key in entry if key not in STAGE_KEYS]
    if unknown:
        raise RecipeError(f"{where} has {', '.join(unknown)}: a stage takes 'recipe:' and 'set:' only.")
    settings = entry.get("set") or {}
    if not isinstance(settings, dict):
        raise RecipeError(f"{where}: 'set:' must map SECTION.KEY to a value, got {type(settings).__name__}.")
    for key in settings:
        if key in ("training.output_dir", "model.init_adapter"):
            raise RecipeError(
                f"{where} sets {key}: in a chain, stage N writes OUTPUT_DIR/stage-N and starts from the adapter of "
                "the stage before it. Set the chain's folder with 'output_dir:' (or --output-dir)."
            )
    recipe = entry["recipe"]
    beside = path.parent / recipe
    if beside.is_file():
        recipe = str(beside)
    try:
        nested = resolve_recipe_path(recipe)
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    if nested.resolve() == path.resolve() or read_stages(nested) is not None:
        raise RecipeError(
            f"{where} names {recipe}, itself a list of stages; chains do not nest (one could loop back to "
            "itself). List that file's stages here instead."
        )
    overrides = tuple(f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in settings.items())
    return Stage(recipe, overrides)


def with_user_settings(stage: Stage, user: tuple[str, ...]) -> tuple[str, ...]:
    """The stage's own ``set:`` items, then the user's ``--set`` items, a key the user sets replacing the stage's."""
    given = {item.partition("=")[0].strip() for item in user}
    return (*(item for item in stage.overrides if item.partition("=")[0] not in given), *user)
