"""training.report_to: offline W&B, trackio's local project and TensorBoard hold the logged curves, the recipe as
the run's config and the final held-out report as its summary; a missing package is refused before weights load."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import tiny_overrides

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.errors import RecipeError
from dpo_recipe.train import run
from dpo_recipe.training.trackers import reported_to, run_name, summary_figures

QUICK = ["data.max_train_pairs=16", "data.max_eval_pairs=4", "eval.num_generations=0", "eval.steps=2"]


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of an offline W&B run file: a 7-byte header, then LevelDB-style 32 KiB blocks of
    chunks (crc32, length, type: 1 whole, 2 first, 3 middle, 4 last)."""
    from wandb.proto.wandb_internal_pb2 import Record

    (path,) = run_dir.glob("run-*.wandb")
    data, records, position, pending = path.read_bytes(), [], 7, b""
    assert data.startswith(b":W&B")
    while position + 7 <= len(data):
        room = 32768 - position % 32768
        if room < 7:  # a block's tail too short for a header is padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:  # zero padding at the end of a block
            position += room
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_report_to_names_with_tensorboard_kept_for_older_recipes() -> None:
    assert reported_to(load_recipe("tiny-ja").training) == []
    assert reported_to(load_recipe("tiny-ja", ["training.report_to=wandb"]).training) == ["wandb"]
    assert reported_to(load_recipe("tiny-ja", ["training.report_to=[none]"]).training) == []
    both = load_recipe("tiny-ja", ["training.report_to=[trackio]", "training.tensorboard=true"])
    assert reported_to(both.training) == ["trackio", "tensorboard"]
    twice = load_recipe("tiny-ja", ["training.report_to=[tensorboard, wandb, wandb]", "training.tensorboard=true"])
    assert reported_to(twice.training) == ["tensorboard", "wandb"]  # one callback a tracker, one line a value
    assert run_name(Path("outputs/tiny-ja")) == "tiny-ja" and run_name(Path("runs/chain/stage-2")) == "chain/stage-2"


def test_tracker_names_are_checked_with_the_recipe() -> None:
    with pytest.raises(RecipeError, match=r"training.report_to: unknown tracker 'wandbb'; .*did you mean wandb"):
        load_recipe("tiny-ja", ["training.report_to=[wandbb]"])
    with pytest.raises(RecipeError, match="training.report_to: none contradicts wandb; keep one"):
        load_recipe("tiny-ja", ["training.report_to=[none, wandb]"])
    with pytest.raises(RecipeError, match="training.report_to: none contradicts training.tensorboard: true"):
        load_recipe("tiny-ja", ["training.report_to=none", "training.tensorboard=true"])


@pytest.mark.parametrize("missing", ["wandb", "trackio", "tensorboard"])
def test_a_missing_tracker_package_is_refused_before_weights_load(
    missing: str, tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    import importlib
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else found(name, *a))
    monkeypatch.setattr(importlib.import_module("dpo_recipe.train"), "load_policy", lambda *a: pytest.fail("loaded"))
    settings = tiny_overrides(tiny_model, f"training.report_to=[{missing}]")
    with pytest.raises(RecipeError) as refused:
        run("tiny-ja", settings, output_dir=str(tmp_path / "out"))
    assert f"training.report_to: {missing} is not installed: pip install 'dpo-recipe[{missing}]'" in str(refused.value)
    assert not (tmp_path / "out").exists()
    if missing == "tensorboard":  # the older key says it counts too
        with pytest.raises(RecipeError, match="training.tensorboard: true counts as tensorboard"):
            run("tiny-ja", tiny_overrides(tiny_model, "training.tensorboard=true"), output_dir=str(tmp_path / "o"))


def test_wandb_online_without_a_login_is_refused_before_weights_load(
    tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    import importlib

    import wandb

    wandb.teardown()  # W&B keeps its settings a process: an earlier test's offline mode would skip the check
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc entry
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setattr(importlib.import_module("dpo_recipe.train"), "load_policy", lambda *a: pytest.fail("loaded"))
    with pytest.raises(RecipeError) as refused:
        run("tiny-ja", tiny_overrides(tiny_model, "training.report_to=wandb"), output_dir=str(tmp_path / "out"))
    assert "training.report_to: wandb cannot log in here (" in str(refused.value)  # wandb's own reason follows
    assert "set WANDB_MODE=offline to keep the run in a local folder" in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_summary_figures_flatten_the_report_intervals_and_answer_checks() -> None:
    metrics = {
        "eval": {
            "overall": {"reward_accuracy": 0.75, "reward_accuracy_ci95": [0.5, 0.9], "pairs": 4, "reward": "dpo"},
            "answer_checks": {"decoding": {"greedy": True}, "tuned": {"japanese_share": 0.9, "ok": True}},
        },
        "train": {"loss": 0.6, "objective": "dpo", "early_stopping": {"adapter_step": 3, "metric": "loss"}},
        "memory": {"peak_rss_mb": 500.0},
    }
    assert summary_figures(metrics) == {
        "held_out/reward_accuracy": 0.75,
        "held_out/reward_accuracy_ci95_low": 0.5,
        "held_out/reward_accuracy_ci95_high": 0.9,
        "held_out/pairs": 4,
        "answers/tuned/japanese_share": 0.9,
        "train/loss": 0.6,
        "memory/peak_rss_mb": 500.0,
        "early_stopping/adapter_step": 3,
    }


@pytest.fixture
def wandb_dir(tmp_path: Path, monkeypatch) -> Iterator[Path]:
    """This test's own W&B folder (conftest keeps W&B offline and trackio in the session's folder)."""
    import wandb

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-runs"))
    (tmp_path / "wandb-runs").mkdir()
    wandb.teardown()  # wandb keeps the settings (WANDB_DIR) of its first run in a process
    yield tmp_path / "wandb-runs" / "wandb"
    wandb.teardown()


def test_offline_wandb_trackio_and_tensorboard_hold_the_run(wandb_dir: Path, tiny_model: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from trackio.sqlite_storage import SQLiteStorage

    out = tmp_path / "runs" / "watched-run"
    settings = tiny_overrides(tiny_model, *QUICK, "training.report_to=[wandb, trackio, tensorboard]")
    metrics = run("tiny-ja", settings, output_dir=str(out))
    points = metrics["eval_steps"]["points"]
    assert [p["step"] for p in points] == [2, 4]
    accuracy = metrics["eval"]["overall"]["reward_accuracy"]

    # W&B, offline: one run folder, named after the output directory, with the curves, config and summary
    (run_dir,) = wandb_dir.glob("offline-run-*")
    records = wandb_records(run_dir)
    (run_record,) = [r.run for r in records if r.HasField("run")]
    assert (run_record.display_name, run_record.project) == ("watched-run", "dpo-recipe")
    history = [
        {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.HasField("history")
    ]
    held_out = [(h["train/global_step"], h["eval/loss"]) for h in history if "eval/loss" in h]
    assert held_out == [(p["step"], pytest.approx(p["loss"])) for p in points]
    assert [h["train/global_step"] for h in history if "train/loss" in h] == [1, 2, 3, 4]
    config = {i.key: json.loads(i.value_json) for r in records if r.HasField("config") for i in r.config.update}
    assert config["recipe"]["training"]["report_to"] == ["wandb", "trackio", "tensorboard"]
    summary = {i.key: json.loads(i.value_json) for r in records if r.HasField("summary") for i in r.summary.update}
    assert summary["held_out/reward_accuracy"] == accuracy and summary["held_out/pairs"] == 4
    import wandb

    assert wandb.run is None  # finished: the next run in this process starts its own

    # trackio: the local project holds the same curves, the recipe as config and the report as summary
    logs = SQLiteStorage.get_logs("dpo-recipe", "watched-run")
    assert [(r["train/global_step"], r["eval/loss"]) for r in logs if "eval/loss" in r] == [
        (p["step"], pytest.approx(p["loss"])) for p in points
    ]
    assert logs[-1]["held_out/reward_accuracy"] == accuracy
    stored = SQLiteStorage.get_run_config("dpo-recipe", "watched-run")
    assert stored["recipe"]["training"]["output_dir"] == str(out) and stored["learning_rate"] == 1e-3
    assert stored["summary"]["held_out/reward_accuracy"] == accuracy

    # TensorBoard: the curves, the recipe as text, the final report as final/... scalars
    events = EventAccumulator(str(out / "runs"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("eval/loss")] == [2, 4]
    assert events.Scalars("final/held_out/reward_accuracy")[0].value == pytest.approx(accuracy)
    assert "recipe/text_summary" in tags["tensors"]


def test_every_run_of_a_process_gets_its_own_wandb_run(wandb_dir: Path, tiny_model: Path, tmp_path: Path) -> None:
    """A sweep trains its configurations in one process: each is its own W&B run, named after its folder."""
    settings = tiny_overrides(tiny_model, "data.max_train_pairs=8", "data.max_eval_pairs=2", "eval.num_generations=0")
    for name in ("first", "second"):
        run("tiny-ja", [*settings, "training.report_to=wandb"], output_dir=str(tmp_path / name))
    runs = sorted(wandb_dir.glob("offline-run-*"))
    names = sorted(next(r.run for r in wandb_records(d) if r.HasField("run")).display_name for d in runs)
    assert names == ["first", "second"]
