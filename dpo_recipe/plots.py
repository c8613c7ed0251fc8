"""PNG charts of a run: loss, reward accuracy and reward margin against step (train and eval)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHARTS = {"loss": "loss", "reward_accuracy": "rewards/accuracies", "reward_margin": "rewards/margins"}


def plot_training(log_history: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, key in CHARTS.items():
        train = [(h["step"], h[key]) for h in log_history if key in h]
        evals = [(h["step"], h[f"eval_{key}"]) for h in log_history if f"eval_{key}" in h]
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        if train:
            ax.plot(*zip(*train, strict=True), marker=".", label="train")
        if evals:
            ax.plot(*zip(*evals, strict=True), marker="o", linestyle="--", label="held-out")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
