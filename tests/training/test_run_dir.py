"""dpo_recipe.training.run_dir: refusing to clobber runs, the INCOMPLETE marker, resume points and write failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_recipe.errors import RecipeError, SaveError
from dpo_recipe.training.run_dir import (
    INCOMPLETE,
    INCOMPLETE_TEXT,
    LOCK,
    RUN_MARKER,
    check_output_dir,
    mark_finished,
    newest_complete_checkpoint,
    os_error_behind,
    prepare_output_dir,
    release_lock,
    write_failures_explained,
)

RESUME = "accelerate launch -m dpo_recipe.train --recipe tiny-ja --output-dir out --resume"


def checkpoint(out: Path, step: int, state: str = '{"global_step": 1}') -> Path:
    folder = out / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(state)
    return folder


def test_resume_skips_a_half_written_checkpoint(tmp_path: Path) -> None:
    for step, state in ((4, '{"global_step": 4}'), (8, '{"global_step": 8}'), (12, '{"global_st')):
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoints" / "checkpoint-16").mkdir()  # killed before trainer_state.json was written
    assert newest_complete_checkpoint(tmp_path) == tmp_path / "checkpoints" / "checkpoint-8"
    assert newest_complete_checkpoint(tmp_path / "elsewhere") is None


def run_folder(out: Path, *names: str) -> Path:
    """A folder a run claimed (its marker), holding ``names``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_MARKER).write_text("{}")
    for name in names:
        (out / name).write_text("{}")
    return out


def test_check_output_dir_refuses_what_the_flags_do_not_cover(tmp_path: Path) -> None:
    check_output_dir(tmp_path / "new", resume=False, overwrite=False)
    finished = run_folder(tmp_path / "finished", "metrics.json")
    with pytest.raises(RecipeError, match="holds a finished run. Pass --overwrite"):
        check_output_dir(finished, resume=False, overwrite=False)
    check_output_dir(finished, resume=False, overwrite=True)
    interrupted = run_folder(tmp_path / "interrupted", "INCOMPLETE")
    checkpoint(interrupted, 2)
    with pytest.raises(RecipeError, match="holds an interrupted run. Pass --resume"):
        check_output_dir(interrupted, resume=False, overwrite=False)
    check_output_dir(interrupted, resume=True, overwrite=False)
    check_output_dir(tmp_path / "new", resume=True, overwrite=False)  # nothing to resume: training starts at step 0
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RecipeError, match="a-file is a file, not a directory"):
        check_output_dir(tmp_path / "a-file" / "run", resume=False, overwrite=False)
    legacy = tmp_path / "legacy"  # a run folder written before markers: metrics, adapter and the training log
    legacy.mkdir()
    for name in ("metrics.json", "adapter_config.json", "train_log.jsonl"):
        (legacy / name).write_text("{}")
    check_output_dir(legacy, resume=False, overwrite=True)
    (legacy / "train_log.jsonl").unlink()  # a downloaded copy of a pushed run (no training log): not a run folder
    with pytest.raises(RecipeError, match="holds no dpo-recipe run"):
        check_output_dir(legacy, resume=False, overwrite=True)
    todo = tmp_path / "todo"  # a file that happens to be called INCOMPLETE is no run's
    todo.mkdir()
    (todo / "INCOMPLETE").write_text("todo list")
    (todo / "thesis.tex").write_text("mine")
    with pytest.raises(RecipeError, match="holds no dpo-recipe run"):
        check_output_dir(todo, resume=False, overwrite=True)
    (todo / "INCOMPLETE").write_text(INCOMPLETE_TEXT.format(command=RESUME))  # an older version's interrupted run
    check_output_dir(todo, resume=True, overwrite=False)


def user_folder(tmp_path: Path) -> tuple[Path, dict[Path, bytes]]:
    """A folder of the user's own files, with a link out of it and a dangling link, and what each holds."""
    folder, outside = tmp_path / "thesis", tmp_path / "outside.txt"
    (folder / "plots").mkdir(parents=True)
    outside.write_text("the user's file outside the folder")
    (folder / "README.md").write_text("# my notes")
    (folder / "thesis.tex").write_text("\\section{Results}")
    (folder / "plots" / "figure.png").write_bytes(b"\x89PNG")
    (folder / "train_log.jsonl").symlink_to(outside)
    (folder / "INCOMPLETE").symlink_to(tmp_path / "nowhere")  # dangling
    kept = {p: p.read_bytes() for p in [*folder.rglob("*"), outside] if p.is_file()}
    return folder, kept


@pytest.mark.parametrize(("resume", "overwrite"), [(False, False), (False, True), (True, False)])
def test_a_folder_of_the_users_files_is_never_a_run_folder(tmp_path: Path, resume: bool, overwrite: bool) -> None:
    folder, kept = user_folder(tmp_path)
    with pytest.raises(RecipeError) as refused:
        check_output_dir(folder, resume=resume, overwrite=overwrite)
    assert f"{folder} is not empty and holds no dpo-recipe run (INCOMPLETE, README.md, plots," in str(refused.value)
    assert "with or without --overwrite" in str(refused.value)
    assert {p: p.read_bytes() for p in kept} == kept
    assert not (tmp_path / "nowhere").exists() and (folder / "INCOMPLETE").is_symlink()


def test_links_are_never_written_through(tmp_path: Path) -> None:
    target = run_folder(tmp_path / "real", "metrics.json")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(RecipeError, match="is a symbolic link; a run writes only into a real folder"):
        check_output_dir(link, resume=False, overwrite=True)
    (target / "train_log.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(RecipeError, match=r"holds symbolic links \(train_log.jsonl\); a run never writes through"):
        check_output_dir(target, resume=True, overwrite=False)


def test_one_run_writes_a_folder_at_a_time(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_output_dir(out, RESUME, overwrite=False)
    assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    with pytest.raises(RecipeError, match=rf"is being written by another run \(pid {os.getpid()} on "):
        check_output_dir(out, resume=True, overwrite=False)
    with pytest.raises(RecipeError, match="is being written by another run"):
        prepare_output_dir(out, RESUME, overwrite=True)
    assert (out / INCOMPLETE).exists() and (out / RUN_MARKER).exists()  # the second claim deleted nothing
    check_output_dir(out, resume=True, overwrite=False, first=False)  # the same launch's other processes
    release_lock(out)
    check_output_dir(out, resume=True, overwrite=False)


def test_a_killed_run_holds_nothing_and_a_lock_file_says_only_who(tmp_path: Path) -> None:
    """The lock is an flock: the kernel drops it with the process, whatever the file says."""
    out = run_folder(tmp_path / "out", "INCOMPLETE")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from dpo_recipe.training.run_dir import prepare_output_dir; "
            f"prepare_output_dir(Path({str(out)!r}), 'x', overwrite=False); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RecipeError, match=rf"being written by another run \(pid {holder.pid} on "):
            check_output_dir(out, resume=True, overwrite=False)
    finally:
        holder.kill()
        holder.wait()
    check_output_dir(out, resume=True, overwrite=False)  # killed with -9: it holds nobody back
    for garbage in ("[1, 2]", "null", '{"pid": 1e300}', "", '{"pid": "x"}'):
        (out / LOCK).write_text(garbage)
        check_output_dir(out, resume=True, overwrite=False)
        prepare_output_dir(out, RESUME, overwrite=False)
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
        release_lock(out)


def test_prepare_marks_the_run_unfinished_until_mark_finished(tmp_path: Path) -> None:
    out = run_folder(tmp_path / "out", "metrics.json")
    checkpoint(out, 2)
    prepare_output_dir(out, RESUME, overwrite=False)
    assert (out / "INCOMPLETE").read_text() == f"This run has not finished. Continue it with:\n  {RESUME}\n"
    assert not (out / "metrics.json").exists() and newest_complete_checkpoint(out) is not None  # resume keeps these
    release_lock(out)
    (out / "notes.txt").write_text("the user's")  # put into a run folder later: not a run's, so it stays
    prepare_output_dir(out, RESUME, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [LOCK, RUN_MARKER, "INCOMPLETE", "notes.txt"]
    mark_finished(out)
    release_lock(out)
    assert sorted(p.name for p in out.iterdir()) == [LOCK, RUN_MARKER, "notes.txt"]


def test_os_error_behind_the_three_ways_a_write_fails() -> None:
    disk_full = OSError(28, "No space left on device")
    assert os_error_behind(disk_full) is disk_full
    rust = os_error_behind(Exception("failed to write tokenizer.json (os error 27)"))
    assert (rust.errno, rust.strerror) == (27, os.strerror(27))
    torch_save = os_error_behind(RuntimeError("[enforce fail at inline_container.cc]\nfile write failed"))
    assert str(torch_save) == "file write failed"
    assert os_error_behind(ValueError("not a write")) is None


def test_a_failed_write_says_what_is_intact_and_how_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(SaveError) as nothing_kept, write_failures_explained(out, RESUME):
        raise OSError(28, "No space left on device", str(out / "x"))
    assert str(nothing_kept.value) == (
        f"Writing to {out} failed: No space left on device ({out / 'x'}). No checkpoint was complete yet; "
        "free space or fix permissions and start again with --overwrite."
    )
    kept = checkpoint(out, 4)
    with pytest.raises(SaveError) as resumable, write_failures_explained(out, RESUME):
        raise Exception("tokenizer.json: (os error 27)")
    assert str(resumable.value) == (
        f"Writing to {out} failed: {os.strerror(27)}. The last complete checkpoint, {kept}, is intact; "
        f"free space or fix permissions, then continue with {RESUME}"
    )
    with pytest.raises(KeyError), write_failures_explained(out, RESUME):  # not a write failure: unchanged
        raise KeyError("x")


def test_the_first_stop_signal_wins_and_the_handlers_come_back() -> None:
    """A terminal's Ctrl-C reaches the run, then accelerate's launcher sends SIGTERM: the run stops on SIGINT, and
    the second signal does not interrupt the stop."""
    import signal

    from dpo_recipe.training.run_dir import stops_raise

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), stops_raise():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            raise AssertionError("SIGINT did not stop the block")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # ignored while the first stop is handled
    assert signal.getsignal(signal.SIGTERM) == before
