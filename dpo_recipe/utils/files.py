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

import atexit
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from dpo_recipe.errors import CacheError, DataError


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
    """``DPO_RECIPE_CACHE``, or ``~/.cache/dpo_recipe``: where conversions and reference log-probs are kept.

    An empty value once put the cache in the current folder, where ``cache clear`` then met the
    user's own ``gguf/`` and ``tiny/`` folders; a value naming a file failed deep inside a run. Both
    are refused here, before anything runs, with the variable to fix."""
    given = os.environ.get("DPO_RECIPE_CACHE")
    if given is None:
        return Path.home() / ".cache" / "dpo_recipe"
    if not given.strip():
        raise CacheError(
            "DPO_RECIPE_CACHE is set but empty, which would put the cache in the current folder. Set it to a "
            "folder of its own (e.g. DPO_RECIPE_CACHE=~/.cache/dpo_recipe) or unset it for the default."
        )
    root = Path(given).expanduser()
    blocking = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise CacheError(
            f"DPO_RECIPE_CACHE={given}: {blocking} is a file, not a folder, so nothing could be cached there. "
            "Set DPO_RECIPE_CACHE to a folder (it is created if missing) or unset it for ~/.cache/dpo_recipe."
        )
    return root


CACHE_MARKER = ".dpo-recipe-cache"  # in the cache root: what `cache clear` needs before it removes anything


def marked_cache_root(root: Path) -> Path:
    """``root``, created if missing, with the marker that says dpo-recipe keeps its cache there.

    Every write into the cache comes through here, so a folder holds the marker only once dpo-recipe
    has written into it; ``cache clear`` refuses a root without one."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / CACHE_MARKER
    if not marker.exists():
        text = (
            "dpo-recipe keeps its cache here (DPO_RECIPE_CACHE); `dpo-recipe cache clear` removes only its entries.\n"
        )
        write_file_atomically(marker, lambda staging: staging.write_text(text, encoding="utf-8"))
    return root


def cache_warning(message: str) -> None:
    """One ``Warning:`` line on stderr: the cache never stops a run, it says what it skipped or redid."""
    print(f"Warning: {message}", file=sys.stderr, flush=True)


_REPORTED: set[Path] = set()  # cache roots this process has already said it cannot write to
_BUILT_ELSEWHERE: dict[Path, Path] = {}  # cached folders this process had to build outside the cache
# cached folders this process has checked against their recorded hashes, with their files' sizes and times then
_VERIFIED: dict[Path, tuple] = {}


def report_unwritable(exc: OSError, root: Path) -> None:
    """Say once per process and cache root that the cache cannot be written; the run goes on without it."""
    if root not in _REPORTED:
        _REPORTED.add(root)
        cache_warning(f"cache not writable: {exc.filename or root}: {exc.strerror or exc}, continuing without it.")


HASHES = "dpo-recipe-sha256.json"  # in a cached folder: each file's sha256, recorded when it was built


def cached_folder(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, a ``<cache root>/<kind>/<name>`` folder (a converted GGUF base, the tiny model), built by
    ``build(folder)`` unless a copy whose files match their recorded hashes is already there.

    A damaged copy (a flipped bit, a truncated or deleted file) is rebuilt with a warning, never loaded;
    a cache that cannot be written builds into a temporary folder for this process, with a warning."""
    if target.exists() and _VERIFIED.get(target) == _stamp(target):  # the tokenizer, config and weights each ask
        return target
    damage = _damage(target) if target.exists() else None
    if target.exists() and damage is None:
        _VERIFIED[target] = _stamp(target)
        return target
    if target in _BUILT_ELSEWHERE:  # the tokenizer, config and weights each ask: built once
        return _BUILT_ELSEWHERE[target]
    if damage is not None:
        cache_warning(f"cache entry {target} is damaged ({damage}); rebuilding it.")
    try:
        marked_cache_root(target.parent.parent)
        replace = "keep" if damage is None else "replace"  # one filled by another process first wins
        write_dir_atomically(target, lambda staging: _built_with_hashes(staging, build), if_exists=replace)
        _VERIFIED[target] = _stamp(target)
        return target
    except OSError as exc:
        report_unwritable(exc, target.parent.parent)
    elsewhere = Path(tempfile.mkdtemp(prefix=f"dpo-recipe-{target.parent.name}-"))
    atexit.register(shutil.rmtree, elsewhere, True)
    build(elsewhere)
    _BUILT_ELSEWHERE[target] = elsewhere
    return elsewhere


def _stamp(folder: Path) -> tuple:
    """Each file's name, size and modification time: what a rewrite changes, read without hashing."""
    return tuple((p.as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")))


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read a MiB at a time (weights are hundreds of MB; ``hashlib.file_digest`` needs
    Python 3.11, the project supports 3.10)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): sha256_of(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != HASHES
    }


def _built_with_hashes(staging: Path, build: Callable[[Path], None]) -> None:
    build(staging)
    (staging / HASHES).write_text(json.dumps(_file_hashes(staging), indent=1), encoding="utf-8")


def _damage(folder: Path) -> str | None:
    """Why ``folder`` is not the copy its recorded hashes describe, or None when it is."""
    try:
        recorded = json.loads((folder / HASHES).read_text(encoding="utf-8"))
        found = _file_hashes(folder)
    except FileNotFoundError:
        return f"no {HASHES}: made by an older dpo-recipe, or damaged"
    except (OSError, ValueError) as exc:
        return f"unreadable {HASHES}: {type(exc).__name__}"
    if not isinstance(recorded, dict):
        return f"{HASHES} is not a table of hashes"
    changed = sorted(set(recorded) ^ set(found) | {n for n in recorded if recorded[n] != found.get(n)})
    return f"files unlike their recorded sha256: {', '.join(changed)}" if changed else None
