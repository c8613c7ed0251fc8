"""PNG charts of a run, one place for every chart training and evaluation draw.

``plot_training``: loss, reward accuracy and reward margin against step (train, and the held-out
point). ``plot_report``: a held-out report's accuracy by rejection type and its reward-margin
histogram. ``plot_sweep``: a sweep's configurations by held-out accuracy, with their 95% intervals.
``plot_rounds``: on-policy rounds (``dpo-recipe iterate``): held-out accuracy and the answer checks per round.
They go into the model card and the notebook, so they are drawn headless (Agg), at a fixed size,
and each function returns the files it wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpo_recipe.training.callbacks import EVAL_PREFIX, REWARD_ACCURACY, REWARD_MARGIN

TRAINING_CHARTS = {"loss": "loss", "reward_accuracy": REWARD_ACCURACY, "reward_margin": REWARD_MARGIN}


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend: no display needed, none opened."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def plot_training(log_history: list[dict[str, Any]], out_dir: Path, train_loss: str | None = None) -> list[Path]:
    """One chart per ``TRAINING_CHARTS`` entry from a Trainer's ``log_history``; ``eval_`` entries are held-out.

    ``train_loss``: what the training loss is when it is not the loss held-out evaluation reports (RPO's is
    DPO's plus the NLL of chosen, several nats above DPO's alone): the held-out loss then gets an axis of its
    own on the right, so neither curve is read against the other's scale."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, key in TRAINING_CHARTS.items():
        train = [(h["step"], h[key]) for h in log_history if key in h]
        evals = [(h["step"], h[EVAL_PREFIX + key]) for h in log_history if EVAL_PREFIX + key in h]
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        apart = name == "loss" and train_loss is not None
        lines = []
        if train:
            lines += ax.plot(*zip(*train, strict=True), marker=".", label=f"train ({train_loss})" if apart else "train")
        if evals:
            held = ax.twinx() if apart else ax
            lines += held.plot(
                *zip(*evals, strict=True),
                marker="o",
                linestyle="--",
                color="tab:orange",
                label="held-out (right axis)" if apart else "held-out",
            )
            if apart:
                held.set_ylabel(f"held-out {key}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(lines, [line.get_label() for line in lines])
        written.append(_save(fig, out_dir / f"{name}.png"))
    return written


def plot_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Charts of a held-out report (``evaluation.evaluate_adapter``); those its data allows, maybe none."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    groups = report.get("by_rejection_type")
    if groups:
        names = list(groups)
        fig, ax = plt.subplots(figsize=(7, 3.8), dpi=100)
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [groups[n]["reward_accuracy"] for n in names], width=0.4, label="reward acc.")
        ax.bar(
            [x + 0.2 for x in xs],
            [groups[n]["base_loglik_accuracy_normalized"] for n in names],
            width=0.4,
            label="base LL acc. (norm.)",
        )
        ax.set_xticks(list(xs), names, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title("Held-out accuracy by rejection type")
        ax.legend(loc="lower right")
        written.append(_save(fig, out_dir / "accuracy_by_rejection_type.png"))
    margins = [p["reward_margin"] for p in report.get("per_pair", [])]
    if margins:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.hist(margins, bins=30)
        ax.axvline(0, color="black", linewidth=1)
        ax.set_xlabel("reward margin (chosen - rejected)")
        ax.set_title("Held-out reward margins")
        written.append(_save(fig, out_dir / "reward_margin_histogram.png"))
    return written


def plot_sweep(ranked: list[dict[str, Any]], path: Path) -> Path:
    """One bar per configuration of ``sweep.run_sweep``'s ranking (best on top), whiskers at the 95% CI."""
    plt = _pyplot()
    scored = [r for r in ranked if r["reward_accuracy"] is not None]
    labels = [", ".join(f"{k}={v}" for k, v in r["settings"].items()) for r in scored]
    accuracy = [r["reward_accuracy"] for r in scored]
    low = [a - (r["reward_accuracy_ci95"] or [a, a])[0] for a, r in zip(accuracy, scored, strict=True)]
    high = [(r["reward_accuracy_ci95"] or [a, a])[1] - a for a, r in zip(accuracy, scored, strict=True)]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * max(len(scored), 1)), dpi=100)
    ys = list(range(len(scored)))[::-1]
    ax.barh(ys, accuracy, xerr=[low, high], capsize=3)
    ax.set_yticks(ys, labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel("held-out reward accuracy (95% CI)")
    ax.set_title("Sweep, best first")
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)


def plot_rounds(rows: list[dict[str, Any]], path: Path) -> Path:
    """Held-out reward accuracy (95% CI) and the answer checks (mostly a loop, topic named, ends a sentence) and
    the rules judge's win rate over round 0, against the round."""
    plt = _pyplot()
    rounds = [r["round"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    accuracy = [r["reward_accuracy"] for r in rows]
    if all(a is not None for a in accuracy):
        low = [a - (r["reward_accuracy_ci95"] or [a, a])[0] for a, r in zip(accuracy, rows, strict=True)]
        high = [(r["reward_accuracy_ci95"] or [a, a])[1] - a for a, r in zip(accuracy, rows, strict=True)]
        left.errorbar(rounds, accuracy, yerr=[low, high], marker="o", capsize=3)
    left.set(xlabel="round", ylabel="held-out reward accuracy (95% CI)", ylim=(0, 1), xticks=rounds)
    for key, label in (
        ("mostly_loop", "mostly a loop"),
        ("names_topic", "topic named"),
        ("ends_sentence", "ends a sentence"),
        ("win_rate_vs_round_0", "rules win rate vs round 0"),
    ):
        points = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            right.plot(*zip(*points, strict=True), marker="o", label=label)
    right.set(xlabel="round", ylabel="share of held-out answers", ylim=(0, 1), xticks=rounds)
    right.legend(fontsize=8)
    fig.suptitle("On-policy rounds")
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)
