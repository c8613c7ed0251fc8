"""dpo_recipe.training.run_dir: refusing to clobber runs, the INCOMPLETE marker, resume points and write failures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dpo_recipe.errors import RecipeError, SaveError
from dpo_recipe.training.run_dir import (
    check_output_dir,
    mark_finished,
    newest_complete_checkpoint,
    os_error_behind,
    prepare_output_dir,
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


def test_check_output_dir_refuses_what_the_flags_do_not_cover(tmp_path: Path) -> None:
    check_output_dir(tmp_path / "new", resume=False, overwrite=False)
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "metrics.json").write_text("{}")
    with pytest.raises(RecipeError, match="holds a finished run. Pass --overwrite"):
        check_output_dir(finished, resume=False, overwrite=False)
    check_output_dir(finished, resume=False, overwrite=True)
    interrupted = tmp_path / "interrupted"
    checkpoint(interrupted, 2)
    with pytest.raises(RecipeError, match="holds an interrupted run. Pass --resume"):
        check_output_dir(interrupted, resume=False, overwrite=False)
    check_output_dir(interrupted, resume=True, overwrite=False)
    with pytest.raises(RecipeError, match="--resume: no complete checkpoint in .*new/checkpoints"):
        check_output_dir(tmp_path / "new", resume=True, overwrite=False)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RecipeError, match="a-file is a file, not a directory"):
        check_output_dir(tmp_path / "a-file" / "run", resume=False, overwrite=False)


def test_prepare_marks_the_run_unfinished_until_mark_finished(tmp_path: Path) -> None:
    out = tmp_path / "out"
    checkpoint(out, 2)
    (out / "metrics.json").write_text("{}")
    prepare_output_dir(out, RESUME, overwrite=False)
    assert (out / "INCOMPLETE").read_text() == f"This run has not finished. Continue it with:\n  {RESUME}\n"
    assert not (out / "metrics.json").exists() and newest_complete_checkpoint(out) is not None  # resume keeps these
    prepare_output_dir(out, RESUME, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["INCOMPLETE"]
    mark_finished(out)
    assert not any(out.iterdir())


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
