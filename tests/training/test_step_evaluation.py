"""eval.steps and training.early_stopping: points logged during training equal a separate `dpo-recipe eval` of
the same step's checkpoint, and early stopping keeps the best step's adapter and says so."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import tiny_overrides
from safetensors.torch import load_file
from transformers.trainer_callback import TrainerControl, TrainerState

from dpo_recipe.errors import RunInterrupted
from dpo_recipe.evaluation.command import run_eval
from dpo_recipe.train import run
from dpo_recipe.training.step_evaluation import HeldOutSteps, early_stopping_sentence, keep_best_adapter

QUICK = ["data.max_eval_pairs=8", "eval.num_generations=0", "training.save_total_limit=10"]


def watched(metric: str = "loss", patience: int = 2) -> HeldOutSteps:
    return HeldOutSteps(None, lambda: {}, every=1, pairs=4, stopping={"patience": patience, "metric": metric})


def feed(callback: HeldOutSteps, values: list[float], max_steps: int = 100) -> list[tuple[int, bool, bool]]:
    """``(step, should_save, should_training_stop)`` after each value, one evaluation a step."""
    state, seen = TrainerState(max_steps=max_steps), []
    for step, value in enumerate(values, 1):
        state.global_step, control = step, TrainerControl()
        callback._watch(value, state, control, last=step >= max_steps)
        seen.append((step, control.should_save, control.should_training_stop))
    return seen


def test_the_best_is_saved_and_patience_counts_evaluations_without_a_better_one() -> None:
    callback = watched("loss", patience=2)
    seen = feed(callback, [0.69, 0.68, 0.68, 0.681])  # a tie is no improvement
    assert seen == [(1, True, False), (2, True, False), (3, False, False), (4, False, True)]
    assert (callback.stopped_at, callback.waited) == (4, 2)
    higher = watched("reward_accuracy", patience=1)
    assert [s[1:] for s in feed(higher, [0.5, 0.75, 0.5])] == [(True, False), (True, False), (False, True)]


def test_nan_never_becomes_the_best_and_the_last_step_is_never_an_early_stop() -> None:
    callback = watched("loss", patience=1)
    assert feed(callback, [math.nan, 0.7]) == [(1, False, True), (2, True, False)]
    assert callback.stopped_at == 1  # (a NaN first evaluation stops a patience-1 run: nothing to keep)
    last = watched("loss", patience=1)
    assert feed(last, [0.6, 0.7], max_steps=2)[-1] == (2, False, False)  # the trainer stops there anyway
    assert last.stopped_at is None


def test_a_resumed_run_continues_the_count_of_its_checkpoint() -> None:
    callback = watched("loss", patience=3)
    feed(callback, [0.6, 0.7])
    callback.seconds = 1.5
    state = TrainerState(global_step=2, stateful_callbacks={"HeldOutSteps": callback.state()})
    resumed = watched("loss", patience=3)
    resumed.on_train_begin(None, state, TrainerControl())
    assert (resumed.waited, resumed.seconds) == (1, 1.5)


def test_the_sentence_names_the_step_the_adapter_comes_from() -> None:
    stopping = {"metric": "loss", "patience": 2, "last_step": 9, "stopped_at_step": 9, "adapter_step": 5}
    assert early_stopping_sentence({**stopping, "value": 0.61234}) == (
        "Early stopping on held-out loss: the adapter is step 5's (held-out loss 0.6123, the best); training "
        "stopped at step 9, 2 evaluations without a better one."
    )
    assert "ran to its last step (9)" in early_stopping_sentence({**stopping, "stopped_at_step": None, "value": 0.6})


@pytest.fixture(scope="module")
def watched_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("watched") / "out"
    settings = [
        *QUICK,
        "data.max_train_pairs=24",
        "eval.steps=4",
        "training.save_steps=2",
    ]  # 6 steps: points at 4 and at the last, 6
    return out, run("tiny-ja", tiny_overrides(tiny_model, *settings), output_dir=str(out))


def test_each_point_equals_dpo_recipe_eval_of_that_steps_checkpoint(watched_run, tiny_model: Path, tmp_path) -> None:
    out, metrics = watched_run
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    logged = [r for r in log if "eval_loss" in r]
    assert [r["step"] for r in logged] == [4, 6] and metrics["train"]["steps"] == 6
    assert [r["step"] for r in log if "loss" in r] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]  # a held-out line takes no training line's place
    points = metrics["eval_steps"]["points"]
    assert [p["step"] for p in points] == [4, 6] and metrics["eval_steps"]["every"] == 4
    assert metrics["eval_steps"]["pairs"] == 8 and metrics["eval_steps"]["seconds"] > 0
    for point, entry in zip(points, logged, strict=True):
        assert entry["eval_rewards/accuracies"] == point["reward_accuracy"] and entry["eval_loss"] == point["loss"]
        checkpoint = out / "checkpoints" / f"checkpoint-{point['step']}"
        assert (checkpoint / "recipe.yaml").read_text() == (out / "recipe.yaml").read_text()
        report = run_eval(str(checkpoint), base=str(tiny_model), max_pairs=8, out=tmp_path / f"{point['step']}.json")
        overall = report["overall"]
        assert overall["pairs"] == 8 and overall["reward_accuracy"] == point["reward_accuracy"]
        assert overall["loss"] == pytest.approx(point["loss"], rel=1e-6)
        assert overall["reward_margin"] == pytest.approx(point["reward_margin"], rel=1e-5, abs=1e-9)
    final = metrics["eval"]["overall"]  # the last point is the end's report: the same adapter and pairs
    assert (final["reward_accuracy"], final["loss"]) == (points[-1]["reward_accuracy"], points[-1]["loss"])
    assert "early_stopping" not in metrics["train"]
    card = (out / "README.md").read_text()
    assert "Held-out pairs (8) were scored every 4 steps during training (2 points" in card


STOPPING = [
    *QUICK,
    "data.max_train_pairs=48",  # 12 steps
    "eval.steps=1",
    "eval.subset=3",
    "training.early_stopping={patience: 2, metric: reward_accuracy}",
    "training.save_steps=50",
]


@pytest.fixture(scope="module")
def stopped_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("stopped") / "out"
    return out, run("tiny-ja", tiny_overrides(tiny_model, *STOPPING), output_dir=str(out))


def test_early_stopping_keeps_the_best_steps_adapter(stopped_run, capsys) -> None:
    out, metrics = stopped_run
    points = metrics["eval_steps"]["points"]
    assert metrics["eval_steps"]["pairs"] == 3 and metrics["eval"]["overall"]["pairs"] == 8  # the end scores all
    # what the rule gives on the logged points: the first best, and the evaluation `patience` after it
    best, waited, stopped = points[0], 0, None
    for point in points[1:]:
        if point["reward_accuracy"] > best["reward_accuracy"]:
            best, waited = point, 0
        else:
            waited += 1
            if waited == 2:
                stopped = point["step"]
                break
    assert stopped is not None and stopped < 12, points  # the tiny run's accuracies stall: it stops early
    recorded = metrics["train"]["early_stopping"]
    assert recorded == {
        "metric": "reward_accuracy",
        "patience": 2,
        "last_step": stopped,
        "stopped_at_step": stopped,
        "adapter_step": best["step"],
        "value": best["reward_accuracy"],
    }
    assert metrics["train"]["steps"] == stopped and points[-1]["step"] == stopped
    kept = load_file(out / "checkpoints" / f"checkpoint-{best['step']}" / "adapter_model.safetensors")
    saved = load_file(out / "adapter_model.safetensors")
    assert kept.keys() == saved.keys() and all((kept[k] == saved[k]).all() for k in kept)
    sentence = early_stopping_sentence(recorded)
    assert f"the adapter is step {best['step']}'s" in sentence and sentence in (out / "README.md").read_text()
    assert json.loads((out / "metrics.json").read_text())["train"]["early_stopping"] == recorded


def test_a_run_stopped_by_a_signal_and_resumed_keeps_the_same_best(
    stopped_run, tiny_model: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """SIGINT right after the best evaluation: the resumed run keeps its points, best step and count, and ends
    where the run that was never stopped ended, with the same adapter."""
    reference_out, reference = stopped_run
    best = reference["train"]["early_stopping"]["adapter_step"]
    measured = HeldOutSteps.on_step_end

    def interrupted_after_the_best(self, args, state, control, **kwargs) -> None:
        measured(self, args, state, control, **kwargs)
        if state.global_step == best:
            os.kill(os.getpid(), signal.SIGINT)  # StopOnSignal saves and stops at the next step

    out = tmp_path / "out"
    monkeypatch.setattr(HeldOutSteps, "on_step_end", interrupted_after_the_best)
    with pytest.raises(RunInterrupted, match=f"after step {best + 1}"):
        run("tiny-ja", tiny_overrides(tiny_model, *STOPPING), output_dir=str(out))
    monkeypatch.setattr(HeldOutSteps, "on_step_end", measured)
    metrics = run("tiny-ja", tiny_overrides(tiny_model, *STOPPING), output_dir=str(out), resume=True)
    assert metrics["train"]["resumed_at_steps"] == [best + 1]
    assert metrics["train"]["early_stopping"] == reference["train"]["early_stopping"]
    assert metrics["eval_steps"]["points"] == reference["eval_steps"]["points"]
    printed = capsys.readouterr().out
    assert early_stopping_sentence(metrics["train"]["early_stopping"]) in printed
    assert f"Held-out every step: {len(metrics['eval_steps']['points'])} points on 3 pairs, " in printed
    again, first = load_file(out / "adapter_model.safetensors"), load_file(reference_out / "adapter_model.safetensors")
    assert again.keys() == first.keys() and all((again[k] == first[k]).all() for k in first)


def test_a_best_checkpoint_removed_by_hand_leaves_the_last_adapter_and_says_so(tmp_path: Path, capsys) -> None:
    callback = watched("loss", patience=3)
    state = TrainerState(global_step=9, best_global_step=4, best_metric=0.5)
    trainer = SimpleNamespace(
        callback_handler=SimpleNamespace(callbacks=[callback]),
        state=state,
        args=SimpleNamespace(output_dir=str(tmp_path)),
    )
    kept = keep_best_adapter(trainer)
    assert (kept["adapter_step"], kept["value"], kept["last_step"]) == (9, None, 9)
    assert (
        f"Early stopping: {tmp_path / 'checkpoint-4' / 'adapter_model.safetensors'} is gone" in capsys.readouterr().out
    )
    assert "the adapter is the last step's (9), no best step's checkpoint to take" in early_stopping_sentence(kept)
