"""``dpo-recipe eval`` and ``python -m dpo_recipe.evaluation``: one parser, one run.

dpo-recipe eval --adapter DIR [--base MODEL] [--data SOURCE] [--split test] [--out report.json]
accelerate launch --multi_gpu --num_processes 2 -m dpo_recipe.evaluation --adapter DIR ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from dpo_recipe.config.schema import DataSection
from dpo_recipe.errors import DpoRecipeError, exit_on_user_error
from dpo_recipe.evaluation.report import markdown_summary
from dpo_recipe.training.base_cache import default_cache
from dpo_recipe.training.launch import positive_int
from dpo_recipe.utils.files import write_file_atomically
from dpo_recipe.utils.stopwatch import Stopwatch


def build_parser() -> argparse.ArgumentParser:
    """The evaluation's flags, defined once: ``python -m dpo_recipe.evaluation`` and ``dpo-recipe eval`` use them."""
    parser = argparse.ArgumentParser(
        prog="python -m dpo_recipe.evaluation",
        description="Score a LoRA adapter on held-out preference pairs: reward accuracy with a 95% interval, "
        "margins, base versus tuned log-likelihood accuracy, by rejection type and domain. Prints Markdown "
        "tables and writes a JSON report with PNG charts; inputs are checked before any weights load. Run "
        "under 'accelerate launch' to split the pairs across processes.",
    )
    parser.add_argument(
        "--adapter",
        required=True,
        metavar="DIR_OR_HUB_ID",
        help="Adapter directory written by training, or a Hub id; its recipe.yaml supplies the defaults below.",
    )
    parser.add_argument(
        "--base",
        metavar="MODEL",
        help="Base model (Hub id or directory); default: the one the adapter's recipe recorded.",
    )
    parser.add_argument(
        "--data",
        metavar="SOURCE",
        help="Pairs to score (JSONL / JSON / CSV / Parquet file, saved dataset directory, or Hub id); "
        "default: the adapter's recipe data source, at its recorded revision.",
    )
    parser.add_argument("--split", default="test", help="Split of the data to score (default: %(default)s).")
    parser.add_argument(
        "--beta", type=float, help="DPO beta that scales log-prob differences into rewards; default: the recipe's."
    )
    parser.add_argument(
        "--max-pairs", type=positive_int, metavar="N", help="Score only the first N pairs of the split (default: all)."
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="Allow the base model repo's own Python code; an adapter's recipe.yaml cannot turn this on by itself.",
    )
    parser.add_argument(
        "--out",
        default="eval_report.json",
        metavar="PATH",
        help="JSON report path (default: %(default)s); PNG charts go beside it, in <stem>_plots/.",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """``python -m dpo_recipe.evaluation``: exit status 2 and a one-line message on user errors."""
    args = build_parser().parse_args(argv)
    exit_on_user_error(
        run_eval,
        args.adapter,
        base=args.base,
        data=args.data,
        split=args.split,
        beta=args.beta,
        max_pairs=args.max_pairs,
        out=Path(args.out),
        trust_remote_code=args.trust_remote_code,
    )


def held_out_data(recorded: DataSection, data: str | None, split: str, max_pairs: int | None) -> DataSection:
    """The data section to score: the adapter's recorded data (its dataset commit included), or ``data``, which
    replaces the recorded source or mixture whole."""
    return dataclasses.replace(
        recorded,
        source=data or recorded.source,
        sources=[] if data else recorded.sources,
        revision=None if data else recorded.revision,  # the recorded commit belongs to the recorded source
        test_split=split,
        max_train_pairs=None,
        max_eval_pairs=max_pairs,
    )


def run_eval(
    adapter: str,
    *,
    base: str | None = None,
    data: str | None = None,
    split: str = "test",
    beta: float | None = None,
    max_pairs: int | None = None,
    out: Path = Path("eval_report.json"),
    trust_remote_code: bool = False,
) -> dict[str, Any] | None:
    """Everything that can be wrong is checked before the base model's weights load. The adapter is scored by
    the objective its recipe trained with (``training.objectives``: a KTO adapter on unpaired rows), as
    training scored it."""
    from dpo_recipe.evaluation.plots import plot_report
    from dpo_recipe.models.adapters import adapter_base, load_adapter_model
    from dpo_recipe.training.objectives import objective_for

    stopwatch, cache = Stopwatch(), default_cache()
    with stopwatch.phase("checks and data"):
        adapter_dir, recipe, model_section = adapter_base(adapter, base, trust_remote_code=trust_remote_code, data=data)
        data_section = held_out_data(recipe.data, data, split, max_pairs)
        objective = objective_for(recipe)
        rows = objective.held_out_rows(data_section, recipe)
        if not rows:
            raise DpoRecipeError(f"{data_section.source}: split '{split}' has no {objective.unit} to score.")
    with stopwatch.phase("model"):
        model, tokenizer = load_adapter_model(adapter_dir, model_section)
    training = dataclasses.replace(recipe.training, beta=beta or recipe.training.beta)
    recipe = dataclasses.replace(recipe, training=training)
    report = objective.eval_report(recipe, model, tokenizer, rows, cache, stopwatch)
    if report is None:
        return None
    report["adapter"] = adapter
    report["base_model"] = model_section.name_or_path
    out.parent.mkdir(parents=True, exist_ok=True)
    charts = plot_report(report, out.parent / f"{out.stem}_plots")
    report["charts"] = [str(c) for c in charts]
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    write_file_atomically(out, lambda staging: staging.write_text(text, encoding="utf-8"))
    print(markdown_summary(report, objective.report_lines(report)))
    print(f"\nReport: {out}; charts: {', '.join(report['charts'])}")
    print(stopwatch.line(), cache.summary())
    return report
