"""Files that appear whole or not at all, and where dpo-recipe's own files and its cache live.

A dataset written by ``dpo-recipe data generate``, a converted GGUF model in the cache, an
evaluation report and a cached set of reference log-probs are each written to a temporary
sibling and renamed into place, so a crash, a full disk or a second process never leaves half
of one where a reader would take it for complete.

In a wheel the packaged ``recipes/`` and ``cards/`` are installed inside the package; in a source
checkout or editable install they sit at the repository root. Both layouts resolve here. The cache
(GGUF conversions, reference log-probs) is one directory, ``DPO_RECIPE_CACHE``, so a user or a test
can move or clear it whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from dpo_recipe.errors import DataError


def foreign_entries(target: Path, mark: str) -> list[Path]:
    """What a non-empty ``target`` holds when it lacks ``mark``, the file its writer always writes (a dataset's
    ``dataset_dict.json``, an export's ``export.json``): a folder of other files, which ``--overwrite`` must not
    replace. Empty when ``target`` is missing, empty, or the writer's own."""
    target = Path(target)
    if not target.is_dir() or (target / mark).is_file():
        return []
    return sorted(target.iterdir())


def write_dir_atomically(
    target: Path,
    write: Callable[[Path], None],
    *,
    if_exists: Literal["replace", "keep", "refuse"] = "replace",
) -> Path:
    """``write(staging)``, then rename staging to ``target``.

    What happens to an existing ``target``: ``"replace"``: it is replaced, the old one removed only
    after the new one is in place; ``"keep"`` (cache entries): one that another process filled
    first wins and ours is dropped; ``"refuse"`` (a dataset directory the user named, ``--out``): a
    non-empty one is a ``DataError`` before anything is written, so nobody's files are lost to a typo.
    """
    target = Path(target)
    if if_exists == "refuse" and target.exists() and any(target.iterdir()):
        raise DataError(f"{target} already exists and is not empty. Choose another --out or pass --overwrite.")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", dir=target.parent))
    try:
        write(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; datasets and caches are meant to be read
        if if_exists == "keep":
            try:
                os.rename(staging, target)
            except OSError:
                if not target.exists():
                    raise
        elif target.exists():
            retired = staging.with_name(staging.name + ".old")
            os.rename(target, retired)
            os.rename(staging, target)
            if retired.is_symlink():  # the link is replaced by the folder; what it pointed to is not ours
                retired.unlink()
            else:
                shutil.rmtree(retired)
        else:
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def remove_abandoned_staging(target: Path) -> None:
    """Delete the staging folders of ``target`` that a killed process left (their names carry its pid).

    A kill -9 mid-write skips every ``finally``: the half-written folder stays, hidden, beside ``target``.
    Another live process's staging is left alone."""
    for leftover in target.parent.glob(f".{target.name}.*"):
        pid = leftover.name[len(target.name) + 2 :].split(".")[0]
        if not pid.isdigit() or not leftover.is_dir() or leftover.is_symlink():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
        except PermissionError:
            pass


def write_file_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """``write(staging)`` to a temporary file beside ``target``, then rename it over ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    staging = Path(name)
    try:
        write(staging)
        staging.chmod(0o644)  # mkstemp makes it private; reports and caches are meant to be read
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return target


_PACKAGE = Path(__file__).resolve().parents[1]  # dpo_recipe/


def packaged_dir(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"dpo_recipe is missing its '{name}/' directory: reinstall the package.")


def cache_root() -> Path:
    """``DPO_RECIPE_CACHE``, or ``~/.cache/dpo_recipe``: where conversions and reference log-probs are kept."""
    return Path(os.environ.get("DPO_RECIPE_CACHE", Path.home() / ".cache" / "dpo_recipe"))
