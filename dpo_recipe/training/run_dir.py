"""The output directory's life cycle: whose folder it is, who writes it now, whether it finished, where to resume.

A folder becomes a run folder when a run claims it: the run writes ``.dpo-recipe-run`` there first
and never touches a non-empty folder without that marker (a user's folder given by mistake to
``--output-dir`` keeps every file; ``--overwrite`` removes only the names a run writes). One run
writes a folder at a time: it holds an ``flock`` on ``.dpo-recipe-lock`` (which names it) while it
runs; a second run is refused at once, naming it, and a run that died (SIGKILL, power loss) held
nothing once its process was gone. Writes inside never follow symbolic links (a run folder holding
one is refused).

A run writes checkpoints to ``OUTPUT_DIR/checkpoints`` and keeps an ``INCOMPLETE`` file (which says
how to resume) until its artifacts are in place, so an interrupted run never looks finished. A
failed write (disk full, quota, permissions) becomes one paragraph that says what is intact and how
to go on, instead of a traceback from deep inside a serializer.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dpo_recipe.config.trust import RUN_MARKER
from dpo_recipe.errors import RecipeError, RunInterrupted, SaveError
from dpo_recipe.models.loading import TOKENIZER_FILES
from dpo_recipe.utils.files import write_file_atomically

INCOMPLETE = "INCOMPLETE"
CHECKPOINTS = "checkpoints"
LOCK = ".dpo-recipe-lock"  # flock-ed by the run writing the folder now; says who that is


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


INCOMPLETE_TEXT = "This run has not finished. Continue it with:\n  {command}\n"
# what a run writes at the top of its folder: all --overwrite may remove (anything else is the user's and stays)
RUN_ENTRIES = frozenset(
    {
        RUN_MARKER,
        LOCK,
        INCOMPLETE,
        CHECKPOINTS,
        ".staging",
        "runs",  # TensorBoard
        "plots",
        "train_log.jsonl",
        "metrics.json",
        "eval_report.json",
        "eval_report.judge-replies.jsonl",  # evaluation.judged.journal_path: an endpoint judge's replies so far
        "recipe.yaml",
        "README.md",
        "adapter_model.safetensors",
        "adapter_config.json",
        *TOKENIZER_FILES,
    }
)


def is_run_folder(out: Path) -> bool:
    """Whether ``out`` was claimed by a run (its marker), or is one a run of a version before markers wrote: its
    ``INCOMPLETE`` in a run's words, or a finished run's metrics beside its training log (which a push never
    sends, so a downloaded copy of a pushed run is not taken for one)."""
    marker, incomplete = out / RUN_MARKER, out / INCOMPLETE
    if marker.is_file() and not marker.is_symlink():
        return True
    try:
        if incomplete.is_file() and incomplete.read_text(encoding="utf-8").startswith(INCOMPLETE_TEXT[:30]):
            return True
    except (OSError, UnicodeDecodeError):
        return False
    return all((out / name).is_file() for name in ("metrics.json", "adapter_config.json", "train_log.jsonl"))


def is_finished(out: Path) -> bool:
    """Whether ``out`` holds a whole run: ``metrics.json`` is written last, ``INCOMPLETE`` removed after it."""
    return (out / "metrics.json").is_file() and not (out / INCOMPLETE).exists()


def _listing(paths: list[Path], out: Path) -> str:
    names = [str(p.relative_to(out)) for p in paths[:5]]
    return ", ".join(names) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


_HELD: dict[Path, int] = {}  # run folder -> the open, flock-ed descriptor of its lock, while this process writes it


def _holder(fd: int) -> str:
    """Who the lock file says holds it ("pid 123 on host, started ..."), for the message; never trusted further."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        pid, host, started = int(record["pid"]), str(record["host"])[:100], str(record["started"])[:40]
    except (OSError, ValueError, TypeError, KeyError, OverflowError, UnicodeDecodeError):
        return "a process that has not said who it is yet"
    return f"pid {pid} on {host}, started {started}"


def _try_lock(out: Path) -> tuple[int | None, str]:
    """``(descriptor, "")`` holding ``out``'s lock (``flock``, released by the kernel when the process ends, so a
    killed run never leaves a stale one), or ``(None, who holds it)``."""
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        return None, holder
    return fd, ""


def _held_error(out: Path, holder: str) -> RecipeError:
    return RecipeError(
        f"{out} is being written by another run ({holder}). Wait for it to end, or choose another --output-dir."
    )


def check_real_folder(out: Path, key: str, option: str) -> None:
    """``out`` (the folder ``key`` / ``option`` names) is no link, and it or its nearest existing parent is a
    folder that can be written: refused before anything is read or written."""
    existing = next(p for p in (out, *out.parents) if p.exists() or p.is_symlink())
    if out.is_symlink():
        raise RecipeError(
            f"{key} {out} is a symbolic link; a run writes only into a real folder. Give the "
            f"folder it points to ({os.path.realpath(out)}) or another {option}."
        )
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problem = "is a file, not a directory" if not existing.is_dir() else "is not writable"
        raise RecipeError(
            f"{key} {out}: {existing} {problem}, so nothing could be saved. "
            f"Choose another {option} (or fix its permissions)."
        )


def check_no_links(out: Path, option: str) -> None:
    """Nothing inside ``out`` is a symbolic link, which a run's writes or ``--overwrite`` would go through."""
    links = sorted(p for p in out.rglob("*") if p.is_symlink())
    if links:
        raise RecipeError(
            f"{out} holds symbolic links ({_listing(links, out)}); a run never writes through a link. Remove "
            f"them, or choose another {option}."
        )


def check_output_dir(out: Path, *, resume: bool, overwrite: bool, first: bool = True) -> None:
    """Refuse, before anything is read or written, a directory that cannot be written, that is not a run
    folder, that another run is writing, or that holds a run the flags do not say what to do with.

    ``first``: this is the launch's first process, the one that will hold the lock (the others would see it)."""
    check_real_folder(out, "training.output_dir", "--output-dir")
    if not out.exists() or not any(out.iterdir()):
        return
    if not is_run_folder(out):
        entries = sorted(out.iterdir())
        raise RecipeError(
            f"{out} is not empty and holds no dpo-recipe run ({_listing(entries, out)}); a run never writes into "
            "or deletes a folder of other files, with or without --overwrite. Choose a new or empty --output-dir."
        )
    if first and (out / LOCK).is_file():
        fd, holder = _try_lock(out)
        if fd is None:
            raise _held_error(out, holder)
        os.close(fd)  # closing releases it: only a look
    check_no_links(out, "--output-dir")
    if resume or overwrite:
        return
    if (out / "metrics.json").exists():
        raise RecipeError(f"{out} holds a finished run. Pass --overwrite to replace it or choose another --output-dir.")
    if any((out / CHECKPOINTS).glob("checkpoint-*")) or (out / INCOMPLETE).exists():
        raise RecipeError(f"{out} holds an interrupted run. Pass --resume to continue it or --overwrite to start over.")


def _take_lock(out: Path) -> None:
    """Hold ``out``'s lock for this process, saying who holds it (the file stays; the ``flock`` is the lock)."""
    fd, holder = _try_lock(out)
    if fd is None:
        raise _held_error(out, holder)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
    _HELD[out] = fd


def release_lock(out: Path) -> None:
    """Give ``out`` back, if this process holds it (every exit of a run: finished, failed or stopped)."""
    fd = _HELD.pop(out, None)
    if fd is not None:
        os.close(fd)  # releases the flock; the file stays, so nobody can lock a deleted copy of it


def prepare_output_dir(out: Path, resume_command: str, *, overwrite: bool) -> None:
    """Claim ``out`` (lock, then marker), empty it of a run's files with ``overwrite``, and mark it unfinished
    until ``mark_finished``. ``check_output_dir`` has refused a folder that is not a run folder."""
    out.mkdir(parents=True, exist_ok=True)
    _take_lock(out)
    if overwrite:  # the lock stays: a second run cannot slip in while the old run's files go
        kept = []
        for entry in sorted(out.iterdir()):
            if entry.name in (LOCK, RUN_MARKER):
                continue
            if entry.name not in RUN_ENTRIES:
                kept.append(entry)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        if kept:
            print(f"--overwrite: kept {_listing(kept, out)} in {out}: a run does not write them.")
    marker = {"tool": "dpo-recipe", "claimed": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not (out / RUN_MARKER).is_file():
        write_file_atomically(out / RUN_MARKER, lambda p: p.write_text(json.dumps(marker) + "\n", encoding="utf-8"))
    (out / "metrics.json").unlink(missing_ok=True)  # a resumed run is not finished until it says so again
    note = INCOMPLETE_TEXT.format(command=resume_command)
    write_file_atomically(out / INCOMPLETE, lambda p: p.write_text(note, encoding="utf-8"))


def mark_finished(out: Path) -> None:
    (out / INCOMPLETE).unlink(missing_ok=True)


class Terminated(BaseException):
    """SIGTERM, raised where the process is, as Python raises ``KeyboardInterrupt`` for SIGINT."""


@contextmanager
def stops_raise() -> Iterator[None]:
    """SIGINT and SIGTERM stop every phase the same way: as an exception where the process is, so the run
    leaves through its ``finally`` blocks (the lock released, ``INCOMPLETE`` kept) and says how to continue.
    Training's own handler (``callbacks.StopOnSignal``) replaces these while steps run, to save a checkpoint."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # handlers live on the main thread
        yield
        return

    def raise_stop(signum: int, frame: object) -> None:
        # the first signal stops the run; later ones (accelerate's launcher sends SIGTERM after a terminal's
        # Ctrl-C) must not interrupt the stop itself
        for ignored in (signal.SIGINT, signal.SIGTERM):
            signal.signal(ignored, signal.SIG_IGN)
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()

    previous = {signum: signal.signal(signum, raise_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interrupted(stop: BaseException, out: Path | None, resume_command: str, phase: str | None) -> RunInterrupted:
    """What a run stopped by ``stop`` (``KeyboardInterrupt`` or ``Terminated``) during ``phase`` says: the one
    command that continues it in ``out``, or, before it claimed a folder (``out`` None), that nothing was written."""
    import signal

    signum = signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT
    where = f" during {phase}" if phase else ""
    if out is None or not (out / INCOMPLETE).is_file():
        return RunInterrupted(f"Stopped on {signum.name}{where}, before anything was written. Run it again.", signum)
    checkpoint = newest_complete_checkpoint(out)
    kept = f"its newest checkpoint, {checkpoint}, is intact" if checkpoint else "no checkpoint was saved yet"
    return RunInterrupted(f"Stopped on {signum.name}{where}; {kept}. Continue with {resume_command}", signum)


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
