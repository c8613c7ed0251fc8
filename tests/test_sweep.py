"""dpo-recipe sweep: the grid, its checks before training, runs that share the base's work, the ranking."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import invoke, subprocess_env, tiny_overrides

from dpo_recipe.errors import RecipeError
from dpo_recipe.sweep import grid_points, parse_grid, results_table, run_name, run_sweep
from dpo_recipe.training.run_dir import is_finished

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_grid_values_split_on_commas_outside_brackets() -> None:
    grid = parse_grid(["training.beta=0.05, 0.1", "lora.target_modules=[q_proj,v_proj],all-linear"])
    assert grid == {"training.beta": ["0.05", "0.1"], "lora.target_modules": ["[q_proj,v_proj]", "all-linear"]}
    points = grid_points(grid)
    assert len(points) == 4 and points[0] == {"training.beta": "0.05", "lora.target_modules": "[q_proj,v_proj]"}
    assert points[1]["lora.target_modules"] == "all-linear"  # the last key varies fastest
    assert run_name(3, points[0]) == "03-training.beta=0.05,lora.target_modules=_q_proj,v_proj_"


@pytest.mark.parametrize(
    ("items", "words"),
    [
        (["training.beta"], "expected SECTION.KEY=VALUE1,VALUE2"),
        (["training.beta=0.1,"], "no empty value"),
        (["lora.r=8", "lora.r=16"], "lora.r is given twice"),
    ],
)
def test_bad_grids_are_refused(items: list[str], words: str) -> None:
    with pytest.raises(RecipeError, match=words):
        parse_grid(items)


def test_a_bad_configuration_fails_before_any_trains(tiny_model: Path, tmp_path: Path) -> None:
    grid = {"training.beta": ["0.1", "-1"]}
    with pytest.raises(RecipeError, match=r"sweep configuration 02-training.beta=-1: .*training.beta"):
        run_sweep("tiny-ja", grid, tiny_overrides(tiny_model), tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


def test_a_sweep_trains_each_point_shares_the_reference_and_ranks(
    tiny_model: Path, tmp_path: Path, runner, monkeypatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DPO_RECIPE_CACHE", str(cache))
    out = tmp_path / "sweep"
    settings = ["data.max_train_pairs=8", "data.max_eval_pairs=8", "eval.num_generations=2"]
    args = ["sweep", "--recipe", "tiny-ja", "--grid", "training.learning_rate=1e-5,5e-3", "--out", out]
    for item in tiny_overrides(tiny_model, *settings):
        args += ["--set", item]
    result = invoke(runner, *args)
    assert result.exit_code == 0, result.output
    ranked = json.loads((out / "sweep.json").read_text())
    assert sorted(Path(r["output_dir"]).name for r in ranked) == [
        "01-training.learning_rate=1e-5",
        "02-training.learning_rate=5e-3",
    ]
    for r in ranked:  # each point is an ordinary run
        run_dir = Path(r["output_dir"])
        assert (run_dir / "adapter_model.safetensors").is_file() and (run_dir / "metrics.json").is_file()
        assert r["held_out_pairs"] == 8 and r["train_s"] > 0
    accuracies = [(r["reward_accuracy"], r["reward_margin"]) for r in ranked]
    assert accuracies == sorted(accuracies, reverse=True)
    # the base's work is done once: one reference entry for the training pairs, one for the held-out
    # pairs, one set of base answers, though two configurations trained
    assert len(list(cache.glob("reference_logps/*.safetensors"))) == 2
    assert len(list(cache.glob("base_answers/*.json"))) == 1
    table = (out / "sweep.md").read_text()
    assert table == results_table(ranked) and table.count("\n| ") == 3  # the separator and two rows
    assert "| 1 | " in table and "training.learning_rate" in table.splitlines()[0]
    assert (out / "sweep.png").read_bytes().startswith(PNG_MAGIC)
    # it ends with dpo-recipe compare of its runs, best first: the one key that differs, in the output and as CSV
    compared = list(csv.DictReader((out / "compare.csv").open(encoding="utf-8")))
    assert [row["path"] for row in compared] == [r["output_dir"] for r in ranked]
    assert list(compared[0])[2:4] == ["training.learning_rate", "objective"]
    assert "| run | training.learning_rate | held-out reward acc. (95% CI) |" in result.output
    again = invoke(runner, *args)  # a second sweep into the same directory is refused before it trains
    assert again.exit_code == 1 and "01-training.learning_rate=1e-5 holds a finished run" in again.output


def test_a_killed_sweep_continues_with_resume_without_retraining_finished_runs(
    tiny_model: Path, tmp_path: Path, runner
) -> None:
    out = tmp_path / "sweep"
    settings = ["data.max_train_pairs=32", "data.max_eval_pairs=4", "eval.num_generations=0", "training.save_steps=1"]
    args = ["sweep", "--recipe", "tiny-ja", "--grid", "training.learning_rate=1e-5,5e-3", "--out", str(out)]
    for item in tiny_overrides(tiny_model, *settings):
        args += ["--set", item]
    first, second = out / "01-training.learning_rate=1e-5", out / "02-training.learning_rate=5e-3"
    process = subprocess.Popen(
        [sys.executable, "-m", "dpo_recipe", *args], env=subprocess_env(), stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not any((second / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        assert process.poll() is None and time.monotonic() < deadline, "the second run never saved a checkpoint"
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert is_finished(first) and not is_finished(second) and not (out / "sweep.json").exists()
    kept = (first / "adapter_model.safetensors").stat().st_mtime_ns

    refused = invoke(runner, *args)
    assert refused.exit_code == 1 and "01-training.learning_rate=1e-5 holds a finished run" in refused.output
    result = invoke(runner, *args, "--resume")
    assert result.exit_code == 0, result.output
    assert "01-training.learning_rate=1e-5 finished earlier; its metrics.json is read back" in result.output
    assert (first / "adapter_model.safetensors").stat().st_mtime_ns == kept  # not retrained
    ranked = json.loads((out / "sweep.json").read_text())
    assert sorted(Path(r["output_dir"]).name for r in ranked) == [first.name, second.name] and is_finished(second)


def test_a_sweep_never_writes_into_a_folder_of_other_files(tiny_model: Path, tmp_path: Path) -> None:
    out, outside = tmp_path / "notes", tmp_path / "target.png"
    out.mkdir()
    outside.write_bytes(b"the user's picture")
    (out / "sweep.md").write_text("my own notes")
    (out / "sweep.png").symlink_to(outside)
    with pytest.raises(RecipeError, match=r"sweep --out .* holds what a sweep did not write \(sweep.png\)"):
        run_sweep("tiny-ja", {"training.beta": ["0.1"]}, tiny_overrides(tiny_model), out)
    (out / "sweep.png").unlink()
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(RecipeError, match=r"holds what a sweep did not write \(thesis.tex\)"):
        run_sweep("tiny-ja", {"training.beta": ["0.1"]}, tiny_overrides(tiny_model), out)
    assert (out / "sweep.md").read_text() == "my own notes" and outside.read_bytes() == b"the user's picture"
