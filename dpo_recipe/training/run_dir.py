"""The output directory's life cycle: refuse to clobber a run, mark it unfinished, find where to resume.

A run writes checkpoints to ``OUTPUT_DIR/checkpoints`` and keeps an ``INCOMPLETE`` file (which says
how to resume) until its artifacts are in place, so an interrupted run never looks finished. A
failed write (disk full, quota, permissions) becomes one paragraph that says what is intact and how
to go on, instead of a traceback from deep inside a serializer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dpo_recipe.errors import RecipeError, SaveError

INCOMPLETE = "INCOMPLETE"
CHECKPOINTS = "checkpoints"


def newest_complete_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint whose trainer_state.json (written last by the Trainer) is whole.

    A kill during a save leaves a newer, half-written checkpoint directory; resuming from it
    would fail, so it is skipped.
    """
    candidates = [p for p in (out / CHECKPOINTS).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for path in sorted(candidates, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return path
    return None


def check_output_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a directory that cannot be written, or that holds a run the flags do not say what to do with."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problem = "is a file, not a directory" if not existing.is_dir() else "is not writable"
        raise RecipeError(
            f"training.output_dir {out}: {existing} {problem}, so nothing could be saved. "
            "Choose another --output-dir (or fix its permissions)."
        )
    has_checkpoints = any((out / CHECKPOINTS).glob("checkpoint-*"))
    if resume and newest_complete_checkpoint(out) is None:
        raise RecipeError(f"--resume: no complete checkpoint in {out / CHECKPOINTS}; start without --resume.")
    if resume or overwrite or not out.exists():
        return
    if (out / "metrics.json").exists():
        raise RecipeError(f"{out} holds a finished run. Pass --overwrite to replace it or choose another --output-dir.")
    if has_checkpoints or (out / INCOMPLETE).exists():
        raise RecipeError(f"{out} holds an interrupted run. Pass --resume to continue it or --overwrite to start over.")


def prepare_output_dir(out: Path, resume_command: str, *, overwrite: bool) -> None:
    """Create (or empty, with ``overwrite``) ``out`` and mark it unfinished until ``mark_finished``."""
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # a resumed run is not finished until it says so again
    (out / INCOMPLETE).write_text(
        f"This run has not finished. Continue it with:\n  {resume_command}\n", encoding="utf-8"
    )


def mark_finished(out: Path) -> None:
    (out / INCOMPLETE).unlink(missing_ok=True)


def os_error_behind(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write, or None when ``exc`` is not one.

    Python raises an OSError, but the Rust writers (tokenizers, safetensors) raise a plain Exception
    ending in "(os error N)" and torch.save a RuntimeError "file write failed"."""
    if isinstance(exc, OSError):
        return exc
    found = re.search(r"\(os error (\d+)\)", str(exc))
    if found:
        return OSError(int(found[1]), os.strerror(int(found[1])))
    if isinstance(exc, RuntimeError) and "file write failed" in str(exc):
        return OSError(str(exc).strip().splitlines()[-1])
    return None


@contextmanager
def write_failures_explained(out: Path, resume_command: str) -> Iterator[None]:
    """Turn a failed write inside the block into a ``SaveError``: what failed, what is intact (a
    half-written checkpoint is skipped on resume), and how to go on."""
    try:
        yield
    except Exception as exc:
        failure = os_error_behind(exc)
        if failure is None:
            raise
        raise save_error(failure, out, resume_command) from None


def save_error(failure: OSError, out: Path, resume_command: str) -> SaveError:
    checkpoint = newest_complete_checkpoint(out)
    what = f"{failure.strerror or failure}" + (f" ({failure.filename})" if failure.filename else "")
    if checkpoint is None:
        kept = "No checkpoint was complete yet; free space or fix permissions and start again with --overwrite."
    else:
        kept = (
            f"The last complete checkpoint, {checkpoint}, is intact; free space or fix permissions, then "
            f"continue with {resume_command}"
        )
    return SaveError(f"Writing to {out} failed: {what}. {kept}")
