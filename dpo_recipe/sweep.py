"""A grid over recipe keys, trained one configuration after another, ranked by held-out accuracy.

    dpo-recipe sweep --recipe smollm2-135m-ja --grid training.beta=0.05,0.1 --grid lora.r=8,16 --out sweeps/beta-r

This is how a tuned recipe is found (``smollm2-135m-ja-tuned`` was, by hand). Every configuration is
an ordinary ``train`` run in its own output directory (adapter, metrics, card), so the winner can be
pushed as it is. What does not change between configurations is computed once: the base's reference
log-probs on the training and held-out pairs and its answers to the held-out questions
(``base_cache``), and a GGUF base's conversion (``gguf``); a configuration that changes what they
depend on (max_length, the data, precision) pays for its own. Every configuration's recipe and
output directory is checked before the first one trains.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.errors import RecipeError
from dpo_recipe.evaluation.compare import compare_runs, markdown_table, write_csv
from dpo_recipe.training.run_context import RESUME_AND_OVERWRITE
from dpo_recipe.training.run_dir import check_output_dir, is_finished, is_run_folder
from dpo_recipe.utils.files import write_file_atomically


def parse_grid(items: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """``["training.beta=0.05,0.1", "lora.target_modules=[q_proj,v_proj],all-linear"]`` → key → values.

    Values are split on commas outside brackets, so a YAML list is one value.
    """
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        values, depth, current = [], 0, ""
        for char in text:
            depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
            if char == "," and depth == 0:
                values.append(current.strip())
                current = ""
            else:
                current += char
        values.append(current.strip())
        if not sep or not key.strip() or not all(values):
            raise RecipeError(
                f"--grid {item!r}: expected SECTION.KEY=VALUE1,VALUE2,... with no empty value "
                "(e.g. --grid training.beta=0.05,0.1)."
            )
        if key.strip() in grid:
            raise RecipeError(f"--grid {key.strip()} is given twice; put all its values in one --grid.")
        grid[key.strip()] = values
    return grid


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, the first key varying slowest."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def run_name(index: int, point: dict[str, str]) -> str:
    """A directory name that says what the configuration set: ``03-training.beta=0.1,lora.r=16``."""
    described = ",".join(f"{key}={value}" for key, value in point.items())
    safe = "".join(c if c.isalnum() or c in "._=,-" else "_" for c in described)
    return f"{index:02d}-{safe}"[:120]


def run_sweep(
    recipe: str,
    grid: dict[str, list[str]],
    overrides: list[str],
    out: Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Train every grid point of ``recipe`` (plus ``overrides``) under ``out``; write and return the ranking.

    ``resume`` continues a sweep that was stopped: finished runs are read back, not retrained; an
    interrupted one continues from its newest checkpoint; one never started trains."""
    from dpo_recipe.train import run

    if resume and overwrite:
        raise RecipeError(RESUME_AND_OVERWRITE)
    points = grid_points(grid)
    refuse_foreign_sweep_dir(out)
    runs = [
        (point, out / run_name(i, point), [*overrides, *(f"{k}={v}" for k, v in point.items())])
        for i, point in enumerate(points, 1)
    ]
    for _, run_dir, settings in runs:  # a typo in the last configuration fails before the first trains
        try:
            load_recipe(recipe, settings)
        except RecipeError as exc:
            raise RecipeError(f"sweep configuration {run_dir.name}: {exc}") from None
        check_output_dir(run_dir, resume=resume, overwrite=overwrite)
    results = []
    for number, (point, run_dir, settings) in enumerate(runs, 1):
        if resume and is_finished(run_dir):
            print(f"\n=== sweep {number}/{len(runs)}: {run_dir.name} finished earlier; its metrics.json is read back")
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        else:
            print(f"\n=== sweep {number}/{len(runs)}: {run_dir.name}", flush=True)
            metrics = run(recipe, settings, output_dir=str(run_dir), overwrite=overwrite, resume=resume)
        if metrics is not None:
            results.append(_result(point, run_dir, metrics))
    ranked = sorted(results, key=lambda r: (-_or_minus_inf(r["reward_accuracy"]), -_or_minus_inf(r["reward_margin"])))
    write_results(ranked, out)
    return ranked


SWEEP_FILES = ("sweep.json", "sweep.md", "sweep.png", "compare.csv")


def refuse_foreign_sweep_dir(out: Path) -> None:
    """``--out`` holds nothing but a sweep's files and its run folders (or is new or empty): a sweep never
    replaces a user's ``sweep.md`` or writes through a link there."""
    if not out.is_dir():
        return
    foreign = [
        entry
        for entry in sorted(out.iterdir())
        if entry.is_symlink()
        or not (entry.name in SWEEP_FILES and entry.is_file() or entry.is_dir() and is_run_folder(entry))
    ]
    if foreign:
        raise RecipeError(
            f"sweep --out {out} holds what a sweep did not write ({', '.join(e.name for e in foreign[:5])}); a "
            "sweep writes only into a new or empty folder or an earlier sweep's. Choose another --out."
        )


def _or_minus_inf(value: float | None) -> float:
    return -math.inf if value is None else value


def _result(point: dict[str, str], run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    overall = metrics["eval"].get("overall", {})
    return {
        "settings": point,
        "output_dir": str(run_dir),
        "reward_accuracy": overall.get("reward_accuracy"),
        "reward_accuracy_ci95": overall.get("reward_accuracy_ci95"),
        "reward_margin": overall.get("reward_margin"),
        "held_out_pairs": overall.get("pairs"),
        "last_loss": metrics["train"]["last_loss"],
        "train_s": metrics["train"]["runtime_s"],
        "run_s": metrics["train"]["end_to_end_s"],
    }


def results_table(ranked: list[dict[str, Any]]) -> str:
    """Markdown, best first: the settings that vary, held-out accuracy (95% CI), margin, loss and time."""
    keys = list(ranked[0]["settings"]) if ranked else []

    def number(value: float | None, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    lines = [
        "| rank | " + " | ".join(keys) + " | held-out reward acc. (95% CI) | margin | last loss | train s | run s |",
        "| --- | " + " | ".join("---" for _ in keys) + " | --- | --- | --- | --- | --- |",
    ]
    for rank, r in enumerate(ranked, 1):
        ci = r["reward_accuracy_ci95"]
        accuracy = number(r["reward_accuracy"], 3) + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
        settings = " | ".join(r["settings"][k] for k in keys)
        lines.append(
            f"| {rank} | {settings} | {accuracy} | {number(r['reward_margin'], 3)} | {number(r['last_loss'], 4)} "
            f"| {r['train_s']:.0f} | {r['run_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_results(ranked: list[dict[str, Any]], out: Path) -> None:
    """``sweep.json``, ``sweep.md`` (the table), ``sweep.png`` (accuracy with its CI, per configuration) and
    ``compare.csv`` (``dpo-recipe compare`` of the runs, also printed)."""
    from dpo_recipe.evaluation.plots import plot_sweep

    table = results_table(ranked)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(ranked, indent=2, ensure_ascii=False)
    write_file_atomically(out / "sweep.json", lambda staging: staging.write_text(text, encoding="utf-8"))
    write_file_atomically(out / "sweep.md", lambda staging: staging.write_text(table, encoding="utf-8"))
    plot_sweep(ranked, out / "sweep.png")
    print("\n" + table + f"\nSweep results: {out / 'sweep.md'}, {out / 'sweep.json'}, {out / 'sweep.png'}")
    if ranked:  # the runs side by side, every recipe key that differs (dpo-recipe compare)
        comparison = compare_runs([Path(r["output_dir"]) for r in ranked])
        print("\n" + markdown_table(comparison) + f"\nCompared: {write_csv(comparison, out / 'compare.csv')}")
