"""plot_training and plot_report write the PNG charts their input holds data for, at a fixed size."""

from __future__ import annotations

import struct
from pathlib import Path

from dpo_recipe.evaluation.plots import plot_report, plot_training


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (after checking the signature)."""
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


HISTORY = [
    {"step": 1, "loss": 0.69, "rewards/accuracies": 0.5, "rewards/margins": 0.0},
    {"step": 2, "loss": 0.61, "rewards/accuracies": 0.75, "rewards/margins": 0.2},
    {"step": 3, "loss": 0.52, "rewards/accuracies": 1.0, "rewards/margins": 0.4},
    {"step": 3, "eval_loss": 0.58, "eval_rewards/accuracies": 0.8, "eval_rewards/margins": 0.3},
]


def test_plot_training_writes_one_chart_per_metric(tmp_path: Path) -> None:
    written = plot_training(HISTORY, tmp_path / "plots")
    assert written == [tmp_path / "plots" / f"{name}.png" for name in ("loss", "reward_accuracy", "reward_margin")]
    assert all(png_size(path) == (600, 350) for path in written)


def test_plot_training_with_and_without_the_held_out_point_differ(tmp_path: Path) -> None:
    with_eval = plot_training(HISTORY, tmp_path / "with")
    train_only = plot_training(HISTORY[:-1], tmp_path / "without")
    assert all(a.read_bytes() != b.read_bytes() for a, b in zip(with_eval, train_only, strict=True))


def test_a_training_loss_that_is_not_the_held_out_loss_gets_its_own_axis(tmp_path: Path, monkeypatch) -> None:
    """RPO trains on DPO's loss plus the NLL of chosen (about 3.5 on Gemma) while held-out reports DPO's alone
    (about 0.2): on one axis the held-out curve would read as far below training. It gets the right axis; the
    reward charts, the same quantity in both, keep one."""
    from dpo_recipe.evaluation import plots

    drawn = {}
    keep = plots._save
    monkeypatch.setattr(
        plots,
        "_save",
        lambda fig, path: drawn.setdefault(path.stem, [a.get_ylabel() for a in fig.axes]) and keep(fig, path),
    )
    plot_training(HISTORY, tmp_path / "rpo", "sigmoid + sft")
    assert drawn == {
        "loss": ["loss", "held-out loss"],
        "reward_accuracy": ["rewards/accuracies"],
        "reward_margin": ["rewards/margins"],
    }
    drawn.clear()
    plot_training(HISTORY, tmp_path / "dpo")
    assert drawn["loss"] == ["loss"]


def test_which_runs_draw_the_held_out_loss_apart() -> None:
    from dpo_recipe.config.loader import load_recipe
    from dpo_recipe.training.objectives import objective_for

    def apart(recipe: str, *overrides: str) -> str | None:
        loaded = load_recipe(recipe, list(overrides))
        return objective_for(loaded).training_loss_apart(loaded)

    assert apart("gemma3-270m-ja") == "sigmoid + sft"  # RPO
    assert apart("tiny-ja", "training.loss_type=sigmoid") is None
    assert apart("tiny-ja", "training.loss_type=ipo") == "ipo"
    assert apart("tiny-ja-kto") == "kto"


def test_plot_report_writes_accuracy_by_type_and_margin_histogram(tmp_path: Path) -> None:
    group = {"reward_accuracy": 0.75, "base_loglik_accuracy_normalized": 0.5}
    report = {
        "by_rejection_type": {"factual_error": group, "too_terse": {**group, "reward_accuracy": 1.0}},
        "per_pair": [{"reward_margin": m} for m in (-0.2, 0.1, 0.4, 0.9)],
    }
    written = plot_report(report, tmp_path / "plots")
    assert [p.name for p in written] == ["accuracy_by_rejection_type.png", "reward_margin_histogram.png"]
    assert [png_size(p) for p in written] == [(700, 380), (600, 350)]


def test_plot_report_draws_only_what_the_report_holds(tmp_path: Path) -> None:
    assert plot_report({}, tmp_path / "empty") == []
    assert list((tmp_path / "empty").iterdir()) == []
    margins_only = plot_report({"per_pair": [{"reward_margin": 0.3}]}, tmp_path / "margins")
    assert [p.name for p in margins_only] == ["reward_margin_histogram.png"]


def test_plot_rounds_draws_what_the_rounds_hold(tmp_path: Path) -> None:
    from dpo_recipe.evaluation.plots import plot_rounds

    rows = [
        {
            "round": 0,
            "reward_accuracy": 0.8,
            "reward_accuracy_ci95": [0.7, 0.9],
            "mostly_loop": 0.1,
            "names_topic": 0.5,
        },
        {"round": 1, "reward_accuracy": 0.85, "reward_accuracy_ci95": None, "mostly_loop": 0.0, "names_topic": 0.6},
        {"round": 2, "reward_accuracy": 0.9, "reward_accuracy_ci95": [0.8, 0.95], "win_rate_vs_round_0": 0.6},
    ]
    path = plot_rounds(rows, tmp_path / "deep" / "rounds.png")
    assert path == tmp_path / "deep" / "rounds.png" and png_size(path) == (1000, 360)
    no_accuracy = [{**row, "reward_accuracy": None} for row in rows]  # a round without held-out pairs still draws
    assert png_size(plot_rounds(no_accuracy, tmp_path / "none.png")) == (1000, 360)
