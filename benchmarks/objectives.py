"""Preference objectives on the packed path, same budget: which one to reach for, and what it costs.

    python benchmarks/objectives.py                      # 64 training pairs each, the whole held-out split
    python benchmarks/objectives.py --train-pairs 32 --out /tmp/objectives.md

Each objective trains the ``gemma3-270m-ja`` recipe with only ``training.loss_type`` (and the numbers
that objective reads) changed, on the same generated pairs, in its own ``python -m dpo_recipe.train``
process with an empty reference cache, one after the other. The table gives the time per pair
inside ``train()``, the whole process (the reference pass is the difference a reference-free
objective saves), and held-out reward accuracy under each objective's own implicit reward (DPO's
β·log-ratio, or β × mean log-prob for SimPO / ORPO: see each report's ``reward``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from base_models import parse_args, publish, run  # the same one-process-per-run harness

OBJECTIVES = {  # name: recipe overrides (TRL's defaults for each objective's numbers)
    "sigmoid (DPO)": ("training.loss_type=sigmoid",),
    "ipo": ("training.loss_type=ipo",),
    "robust": ("training.loss_type=robust", "training.label_smoothing=0.1"),
    "simpo": ("training.loss_type=simpo", "training.beta=2.0", "training.simpo_gamma=0.5"),
    "orpo": ("training.loss_type=orpo",),
}
COMMON = ("training.loss_weights=null", "eval.num_generations=0")  # one loss each; scoring only


def table(results: dict[str, dict[str, Any]], train_pairs: int) -> str:
    lines = [
        f"gemma3-270m-ja, {train_pairs} training pairs, the 109 held-out pairs, 2 CPU cores, one run each.",
        "",
        "| objective | s / pair in train() | whole process | reference pass | held-out reward accuracy (95 % CI) "
        "| concept_swap | factual_error | reward |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in results.items():
        overall, by_type = m["eval"]["overall"], m["eval"]["by_rejection_type"]
        low, high = overall["reward_accuracy_ci95"]
        lines.append(
            f"| {name} | {m['train']['runtime_s'] / m['train']['pairs']:.2f} | {m['wall_s']:.0f} s "
            f"| {'none' if m['reference_free'] else 'yes'} "
            f"| **{overall['reward_accuracy']:.3f}** ({low:.3f}–{high:.3f}) "
            f"| {by_type['concept_swap']['reward_accuracy']:.2f} | {by_type['factual_error']['reward_accuracy']:.2f} "
            f"| {m['eval'].get('reward', 'dpo: beta x log-ratio')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args(__doc__, train_pairs=64)
    from dpo_recipe.config.vocabulary import is_reference_free
    from dpo_recipe.utils.files import cache_root

    converted = cache_root() / "gguf"
    results = {}
    for name, extra in OBJECTIVES.items():
        with tempfile.TemporaryDirectory(prefix="objectives-") as work:
            # a cache of its own per run: the GGUF conversions shared, the reference log-probs not, so
            # every reference-based run pays its reference pass
            (Path(work) / "cache").mkdir()
            (Path(work) / "cache" / "gguf").symlink_to(converted, target_is_directory=True)
            os.environ["DPO_RECIPE_CACHE"] = str(Path(work) / "cache")
            results[name] = run(name, (*COMMON, *extra), args.train_pairs, Path(work))
        results[name]["reference_free"] = is_reference_free([extra[0].split("=", 1)[1]])
    publish(table(results, args.train_pairs), args.out)


if __name__ == "__main__":
    main()
