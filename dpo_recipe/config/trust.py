"""The trust boundary: what a recipe the user did not write may make dpo-recipe do.

A recipe reaches a run from three places. One the user names (``--recipe``, a packaged name or their
own file) says what they want. One downloaded with the run it describes (``train --from-hub``, an
adapter repo's ``recipe.yaml`` read by ``chat`` / ``eval`` / ``export``) says what *someone else*
did; reading it must not let that someone run code on the user's machine or read the user's files.
So a fetched recipe's values pass this one policy before anything loads:

- ``model.trust_remote_code`` is honoured only when the user gives it themselves (``--trust-remote-code``,
  as transformers asks for it); the model repo's Python would otherwise run as the user.
- Local paths -- ``model.name_or_path`` / ``model.gguf_file`` / ``model.init_adapter`` on disk, a chat
  template file, a data source on disk -- are refused unless the user sets that key: a path on the
  publisher's machine means nothing here, and on the user's it could name ``~/.ssh/id_rsa``, which a
  run copies into its folder and a push publishes. A chat template comes from a packaged name, or from
  the model or adapter repo itself.
- Keys the user sets on the command line (``--set``) are theirs, whatever the file said.

``assemble:`` / ``package:`` weight packages are checked for every recipe, fetched or not, where they
are resolved (``dpo_recipe.models.gguf``). Torch-free: the check runs before any heavy import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from dpo_recipe.config.loader import load_recipe, single_run_recipes
from dpo_recipe.config.schema import Recipe
from dpo_recipe.errors import RecipeError
from dpo_recipe.utils.files import packaged_dir

TRUST_REMOTE_CODE_FLAG = "--trust-remote-code"
# written by a run into the folder it claims and never pushed: a folder holding it is the user's own run, whose
# recorded paths are theirs (a downloaded copy of a pushed run lacks it)
RUN_MARKER = ".dpo-recipe-run"
_NOT_PATHS = ("builtin:", "package:", "assemble:")  # values that name something installed, not a file
# a Hub id may hold dots ("Qwen/Qwen2.5-0.5B"); these endings name files
_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".arrow", ".gguf", ".jinja", ".txt", ".yaml", ".yml", ".bin")


@dataclass(frozen=True)
class FetchedRecipe:
    """A recipe the user did not write: where it came from and what the user said on top of it."""

    origin: str  # how the user named it, e.g. "--from-hub alice/run@v2" or "adapter alice/tuned"
    user_keys: frozenset[str] = frozenset()  # SECTION.KEY items the user set on the command line
    trust_remote_code: bool = False  # the user passed --trust-remote-code
    # how the user gives a value themselves, by key prefix: "--set KEY=..." for training, --base / --data for
    # the adapter commands
    hints: tuple[tuple[str, str], ...] = ()
    local_paths: bool = False  # an adapter directory on this machine: its recorded paths are the user's own

    def hint(self, key: str) -> str:
        return next((how for prefix, how in self.hints if key.startswith(prefix)), f"--set {key}=...")


def user_keys(overrides: list[str] | tuple[str, ...]) -> frozenset[str]:
    """The ``SECTION.KEY`` names of ``--set SECTION.KEY=VALUE`` items."""
    return frozenset(item.partition("=")[0].strip() for item in overrides)


def packaged_chat_templates() -> list[str]:
    return sorted(p.stem for p in packaged_dir("models/chat_templates").glob("*.jinja"))


def looks_local(value: str) -> bool:
    """Whether a model / data value names something on this machine rather than a Hub repo or a builtin."""
    if not value or value.startswith(_NOT_PATHS):
        return False
    if value.startswith(("/", "~", ".", "\\")) or value.count("/") > 1 or value.lower().endswith(_FILE_SUFFIXES):
        return True
    return os.path.lexists(value)


def untrusted_values(recipe: Recipe, fetched: FetchedRecipe) -> list[str]:
    """What the fetched ``recipe`` asks for that only the user may ask for, one problem a key."""
    mine = fetched.user_keys
    problems = []
    model, data = recipe.model, recipe.data
    if model.trust_remote_code and not fetched.trust_remote_code and "model.trust_remote_code" not in mine:
        problems.append(
            f"model.trust_remote_code is true: the model repo '{model.name_or_path}' would run its own Python code "
            f"on this machine. Pass {TRUST_REMOTE_CODE_FLAG} if you trust that repo"
        )
    local_keys = {
        "model.name_or_path": model.name_or_path,
        "model.gguf_file": model.gguf_file or "",
        "model.init_adapter": model.init_adapter or "",
        "data.source": data.source if not data.sources else "",
    }
    for key, value in local_keys.items():
        if key not in mine and not fetched.local_paths and looks_local(value):
            problems.append(f"{key} is a local path ({value!r}); give it yourself ({fetched.hint(key)}) to use it")
    if "data.sources" not in mine and not fetched.local_paths:
        for index, entry in enumerate(data.sources):
            value = str(entry.get("source", "")) if isinstance(entry, dict) else ""
            if looks_local(value):
                problems.append(
                    f"data.sources[{index}].source is a local path ({value!r}); set data.sources yourself to use it"
                )
    template = model.chat_template
    if (
        template
        and "model.chat_template" not in mine
        and not fetched.local_paths
        and (template not in packaged_chat_templates())
    ):
        packaged = ", ".join(packaged_chat_templates())
        problems.append(
            f"model.chat_template {template!r} is a file, not a packaged template ({packaged}); a fetched recipe "
            "takes its template from a packaged name or from the model / adapter repo"
        )
    return problems


def refuse_untrusted(recipe: Recipe, fetched: FetchedRecipe) -> None:
    """A ``RecipeError`` naming every value of a fetched ``recipe`` the user must give themselves; raised
    before anything loads."""
    problems = untrusted_values(recipe, fetched)
    if problems:
        raise RecipeError(
            f"The recipe of {fetched.origin} was written by someone else, and it asks for what only you may allow: "
            f"{'; '.join(problems)}. Nothing was loaded. See docs/security.md."
        )


def _flat(section: Any, prefix: str) -> dict[str, Any]:
    return {f"{prefix}.{f.name}": getattr(section, f.name) for f in fields(section)}


def flat_recipe(recipe: Recipe) -> dict[str, Any]:
    """Every ``SECTION.KEY`` of a recipe and its value."""
    flat: dict[str, Any] = {}
    for f in fields(recipe):
        flat.update(_flat(getattr(recipe, f.name), f.name))
    return flat


def fetched_summary(recipe: Recipe, origin: str) -> str:
    """What a fetched recipe will load, and how it differs from the nearest packaged recipe, in a few lines.

    Printed before anything loads, so the user sees what a stranger's recipe asks for before it runs."""
    model, data = recipe.model, recipe.data
    weights = f" (weights {model.gguf_file})" if model.gguf_file else ""
    sources = [str(s.get("source")) for s in data.sources if isinstance(s, dict)] or [data.source]
    revision = f"@{data.revision}" if data.revision else ""
    loss = recipe.training.loss_type
    loss = " + ".join(loss) if isinstance(loss, list) else loss
    lines = [
        f"Recipe from {origin}:",
        f"  model: {model.name_or_path}@{model.revision}{weights}; remote code: "
        f"{'yes (' + TRUST_REMOTE_CODE_FLAG + ')' if model.trust_remote_code else 'no'}",
        f"  data: {', '.join(sources)}{revision}; objective {recipe.training.objective}, loss {loss}",
    ]
    packaged = {name: load_recipe(str(path)) for name, path in single_run_recipes().items()}
    if packaged:
        mine = flat_recipe(recipe)
        ignore = {"training.output_dir", "hub.push", "hub.repo_id", "data.revision"}

        def differences(other: Recipe) -> list[str]:
            theirs = flat_recipe(other)
            return [k for k in mine if k not in ignore and mine[k] != theirs[k]]

        name, nearest = min(packaged.items(), key=lambda item: len(differences(item[1])))
        changed = differences(nearest)
        listed = ", ".join(f"{k}={mine[k]!r}" for k in changed[:8]) + (" ..." if len(changed) > 8 else "")
        lines.append(f"  differs from packaged recipe '{name}' in: {listed or 'nothing'}")
    return "\n".join(lines)
