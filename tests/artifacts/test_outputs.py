"""dpo_recipe.artifacts.outputs: what metrics.json holds and the closing summary line, from a trainer's log."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from dpo_recipe.artifacts.outputs import collect_metrics, summary_line
from dpo_recipe.config.loader import load_recipe
from dpo_recipe.training.run_totals import RunTotals

HISTORY = [
    {"step": 1, "loss": 0.6931, "rewards/accuracies": 0.0, "rewards/margins": 0.0},
    {"step": 2, "loss": 0.61, "rewards/accuracies": 0.75, "rewards/margins": 0.2, "logps/chosen": -40.5},
    {"step": 2, "train_runtime": 8.0},
]


def finished_trainer(world_size: int = 1, totals: RunTotals | None = None) -> SimpleNamespace:
    """A trainer after 8 s of training (its ``RunTotals``, unless ``totals``)."""
    return SimpleNamespace(
        state=SimpleNamespace(log_history=HISTORY, global_step=2),
        args=SimpleNamespace(world_size=world_size),
        callback_handler=SimpleNamespace(callbacks=[totals or RunTotals(parts_s=[8.0])]),
    )


def test_metrics_take_the_curve_ends_and_the_held_out_report() -> None:
    recipe = load_recipe("tiny-ja", ["training.num_epochs=2"])
    report = {"overall": {"reward_accuracy": 0.625, "pairs": 8}, "per_pair": [{"pair": 1}]}
    metrics = collect_metrics(recipe, finished_trainer(2), report, 16, ["ab", "ab"])
    assert metrics["train"] == {
        "pairs": 16,
        "steps": 2,
        "loss": 0.65155,  # the logged losses, each over the steps since the one before: (0.6931 + 0.61) / 2
        "first_loss": 0.6931,
        "last_loss": 0.61,
        "rewards/accuracies": 0.75,
        "rewards/margins": 0.2,
        "logps/chosen": -40.5,
        "runtime_s": 8.0,
        "pairs_per_s": 4.0,  # 16 pairs x 2 epochs / 8 s
    }
    assert metrics["eval"] == {"overall": {"reward_accuracy": 0.625, "pairs": 8}}  # per-pair rows stay in the report
    assert metrics["distributed"] == {"world_size": 2, "adapter_digest_by_rank": ["ab", "ab"], "ranks_in_sync": True}
    assert metrics["memory"]["peak_rss_mb"] > 0 and "trl" in metrics["versions"]
    unsynced = collect_metrics(recipe, finished_trainer(2), None, 16, ["ab", "cd"])
    assert unsynced["distributed"]["ranks_in_sync"] is False and unsynced["eval"] == {}


def test_summary_line_reports_the_numbers() -> None:
    metrics = {
        "train": {"pairs": 16, "steps": 4, "first_loss": 0.69314, "last_loss": 0.5, "runtime_s": 12.4},
        "eval": {"overall": {"reward_accuracy": 0.625, "pairs": 8}},
        "memory": {"peak_rss_mb": 812.6},
    }
    assert summary_line(metrics, Path("outputs/x")) == (
        "Done: 16 pairs, 4 steps, loss 0.6931 -> 0.5000, held-out reward accuracy 0.625 on 8 pairs, "
        "12 s training, peak RSS 813 MB. Adapter: outputs/x"
    )
    metrics["eval"] = {}
    assert "no held-out pairs" in summary_line(metrics, Path("o"))


def test_a_resumed_run_reports_its_parts_summed() -> None:
    recipe = load_recipe("tiny-ja", ["training.num_epochs=2"])
    resumed = finished_trainer(totals=RunTotals(parts_s=[5.0, 3.0], resumed_at=[1]))
    metrics = collect_metrics(recipe, resumed, None, 16, ["ab"])
    train = metrics["train"]
    assert (train["runtime_s"], train["runtime_parts_s"], train["resumed_at_steps"]) == (8.0, [5.0, 3.0], [1])
    assert train["pairs_per_s"] == 4.0 and train["loss"] == 0.65155
    assert "8 s training in 2 parts (resumed at step 1)," in summary_line(metrics, Path("o"))
