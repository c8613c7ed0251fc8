"""Files and directories that appear whole or not at all.

A dataset written by ``dpo-recipe data generate``, a converted GGUF model in the cache, an
evaluation report and a cached set of reference log-probs are each written to a temporary
sibling and renamed into place, so a crash, a full disk or a second process never leaves half
of one where a reader would take it for complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_dir_atomically(target: Path, write: Callable[[Path], None], *, keep_existing: bool = False) -> Path:
    """``write(staging)``, then rename staging to ``target``.

    With ``keep_existing`` (cache entries) a ``target`` that another process filled first wins and
    ours is dropped; otherwise an existing ``target`` is replaced, the old one removed only after
    the new one is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; datasets and caches are meant to be read
        if keep_existing:
            try:
                os.rename(staging, target)
            except OSError:
                if not target.exists():
                    raise
        elif target.exists():
            retired = staging.with_name(staging.name + ".old")
            os.rename(target, retired)
            os.rename(staging, target)
            shutil.rmtree(retired)
        else:
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


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
