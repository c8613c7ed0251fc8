"""Recipes: YAML files loaded into the typed dataclasses of ``schema``, with ``--set`` overrides.

Validation happens here, before any data or model is touched, so that a typo costs a second, not a
training run.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from dpo_recipe.config.checks import cross_checks, data_problems, judge_problems
from dpo_recipe.config.coercion import build_section
from dpo_recipe.config.schema import REQUIRED_SECTIONS, SECTIONS, DataSection, JudgeSection, Recipe
from dpo_recipe.config.vocabulary import NOT_READ_BY, OBJECTIVE_DEFAULTS, suggest
from dpo_recipe.errors import RecipeError
from dpo_recipe.utils.files import packaged_dir


def recipes_dir() -> Path:
    return packaged_dir("recipes")


def packaged_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


def single_run_recipes() -> dict[str, Path]:
    """The packaged recipes of one run each, without the ``stages:`` lists (``config.stages``)."""
    return {
        name: path
        for name, path in packaged_recipes().items()
        if not re.search(r"^stages:", path.read_text(encoding="utf-8"), re.MULTILINE)
    }


def recipe_summary(path: Path) -> str:
    """The first comment line of a recipe: what it is for."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def resolve_recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    packaged = packaged_recipes()
    if name_or_path in packaged:
        return packaged[name_or_path]
    close = difflib.get_close_matches(name_or_path, packaged, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise RecipeError(
        f"Recipe '{name_or_path}' is neither an existing file nor a packaged recipe.{hint} "
        f"Packaged recipes: {', '.join(packaged)}. Run 'dpo-recipe recipes list' to see them."
    )


# The recipe a user gets without naming one (dpo-recipe quickstart, dpo_recipe.train() in Python): the one
# the README's main job runs.
DEFAULT_RECIPE = "gemma3-270m-ja"


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe, apply ``key=value`` overrides, and validate everything at once."""
    path = resolve_recipe_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{path}: YAML syntax error{where}: {problem}. Fix the YAML and retry.") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections ({', '.join(SECTIONS)}).")
    if "stages" in raw:  # config.stages: one run a stage, each its own recipe
        raise RecipeError(
            f"{path} lists stages (recipes trained one after another), not one run's settings: train it with "
            f"'dpo-recipe train --recipe {name_or_path}', or name one of its stages' recipes here."
        )
    switched = apply_overrides(raw, overrides, source=str(path))
    return recipe_from_dict(_objective_switched(raw, switched, overrides, path), source=str(path))


def _objective_switched(
    raw: dict[str, Any], merged: dict[str, Any], overrides: list[str] | tuple[str, ...], path: Path
) -> dict[str, Any]:
    """``merged`` without the file's keys of the objective it was written for, when ``--set training.objective``
    names another: an objective owns its settings, so ``--set training.objective=sft`` on a DPO recipe trains
    as it is instead of asking the user to unset its loss keys one by one. Keys the user sets stay (and are
    checked)."""
    objective = merged.get("training", {}).get("objective") if isinstance(merged.get("training"), dict) else None
    written = raw.get("training", {}).get("objective") if isinstance(raw.get("training"), dict) else None
    if objective == written or objective not in NOT_READ_BY:
        return merged
    given = {item.partition("=")[0].strip() for item in overrides}
    left_out = []
    for dotted in NOT_READ_BY[objective]:
        section, key = dotted.split(".")
        values = raw.get(section)
        if dotted not in given and isinstance(values, dict) and key in values:
            del merged[section][key]
            left_out.append(dotted)
    if left_out:
        print(
            f"note: {path.name} was written for objective {written or 'dpo'}; under training.objective={objective} "
            f"its {', '.join(left_out)} are not read and were left out.",
            file=sys.stderr,
        )
    return merged


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str) -> dict[str, Any]:
    """Apply CLI ``section.key=value`` overrides; values are parsed as YAML scalars/lists."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    seen: dict[str, str] = {}
    for item in overrides:
        dotted, sep, text = item.partition("=")
        dotted = dotted.strip()
        if not sep or dotted.count(".") != 1:
            raise RecipeError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set training.learning_rate=1e-5.")
        if dotted in seen and seen[dotted] != text:
            raise RecipeError(
                f"--set {dotted} is given twice with different values ({seen[dotted]!r} and {text!r}); keep one."
            )
        seen[dotted] = text
        section, key = dotted.split(".")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise RecipeError(f"{source}: section '{section}' must be a mapping.")
        target[key] = value
    return merged


def data_section(values: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> DataSection:
    """A data section without a recipe, for the data commands (``data lint`` / ``convert`` / ``push``).

    ``values`` are the command's own options, ``overrides`` its ``--set data.KEY=VALUE`` items; both are
    checked as a recipe's keys are, so a key means the same on the command line as in a recipe.
    """
    raw = apply_overrides({"data": dict(values)}, overrides, source="--set")
    problems = [f"{name}: a data command takes data.KEY=VALUE only" for name in raw if name != "data"]
    section = build_section(DataSection, "data", raw["data"], problems)
    if not problems:
        problems.extend(data_problems(section))
    if problems:
        raise RecipeError(f"{'; '.join(problems)}. See 'dpo-recipe recipes keys' for every key and its form.")
    return section


def judge_section(recipe: str | None, overrides: list[str] | tuple[str, ...] = ()) -> JudgeSection:
    """The judge keys of ``dpo-recipe pairs judge`` and ``eval --judge``: the named recipe's (with its ``--set``
    items), else the defaults with ``--set judge.KEY=VALUE`` items, checked as a recipe's are. Never a recorded
    recipe's: an endpoint and the variable its key is read from are the user's to name."""
    if recipe is not None:
        return load_recipe(recipe, overrides).judge
    raw = apply_overrides({"judge": {}}, overrides, source="--set")
    problems = [f"{name}: without a recipe, --set takes judge.KEY=VALUE only" for name in raw if name != "judge"]
    section = build_section(JudgeSection, "judge", raw["judge"], problems)
    if not problems:
        problems.extend(judge_problems(Recipe(judge=section)))
    if problems:
        raise RecipeError(f"{'; '.join(problems)}. See 'dpo-recipe recipes keys' for every key and its form.")
    return section


def recipe_from_dict(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    problems: list[str] = []
    for name in raw:
        if name not in SECTIONS:
            problems.append(f"{name}: unknown section{suggest(name, SECTIONS)}")
    for name in REQUIRED_SECTIONS:
        if name not in raw:
            problems.append(f"{name}: required section is missing")
    training = raw.get("training")
    if isinstance(training, dict) and isinstance(training.get("objective"), str):  # the objective's own defaults
        raw = {**raw, "training": {**OBJECTIVE_DEFAULTS.get(training["objective"], {}), **training}}
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            problems.append(f"{name}: expected a mapping of keys, got {type(values).__name__}")
            values = {}
        sections[name] = build_section(cls, name, values, problems)
    recipe = Recipe(**sections)
    if not problems:
        problems.extend(cross_checks(recipe))
    if problems:
        listing = "; ".join(problems).rstrip("?") + ("?" if problems[-1].endswith("?") else ".")
        raise RecipeError(f"{source}: {listing} See 'dpo-recipe recipes keys' for every key and its form.")
    return recipe
