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

from dpo_recipe.config.schema import DataSection, EvalSection, JudgeSection
from dpo_recipe.errors import DpoRecipeError, JudgeError, exit_on_user_error
from dpo_recipe.evaluation.report import markdown_summary
from dpo_recipe.judges import checked_settings
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
        "--judge",
        metavar="KIND",
        help="Also judge the held-out answers, tuned against base: rules | implicit | reward-model:PATH_OR_ID | "
        "openai:URL (openai asked both orders). Win rate with a 95%% interval in the report. The adapter's recorded "
        "eval.judge is never run by itself.",
    )
    parser.add_argument(
        "--judge-recipe",
        metavar="RECIPE",
        help="Read the judge.* keys (rules weights, endpoint options) from this recipe, e.g. RUN/recipe.yaml "
        "(default: their defaults, and --set).",
    )
    parser.add_argument(
        "--set",
        dest="judge_overrides",
        action="append",
        default=[],
        metavar="judge.KEY=VALUE",
        help="A judge key for --judge (repeatable), checked as a recipe's are.",
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
        judge=args.judge,
        judge_recipe=args.judge_recipe,
        judge_overrides=tuple(args.judge_overrides),
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


def checked_judge(
    spec: str | None, recipe: str | None, overrides: tuple[str, ...], recorded: EvalSection
) -> JudgeSection:
    """The judge keys ``--judge`` judges with (``judges.checked_settings``), checked before any weights load; an
    adapter whose recipe writes no held-out answers (``eval.num_generations: 0``) has nothing to judge."""
    if spec is not None and recorded.num_generations == 0:
        raise JudgeError(
            "--judge judges the held-out answers of base and tuned model, and this adapter's recipe recorded "
            "eval.num_generations 0: its evaluation answers no question. Judge a run trained with "
            "eval.num_generations 1 or more."
        )
    return checked_settings(spec, recipe, overrides)


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
    judge: str | None = None,
    judge_recipe: str | None = None,
    judge_overrides: tuple[str, ...] = (),
) -> dict[str, Any] | None:
    """Everything that can be wrong is checked before the base model's weights load. The adapter is scored by
    the objective its recipe trained with (``training.objectives``: a KTO adapter on unpaired rows), as
    training scored it. ``judge`` also judges its held-out answers (``evaluation.judged``) with the judge keys of
    ``judge_recipe`` and ``judge_overrides`` (``--set judge.KEY=VALUE``), never the adapter's recorded ones: an
    endpoint, and the variable its key is read from, are the user's to name."""
    from dpo_recipe.evaluation.plots import plot_report
    from dpo_recipe.models.adapters import adapter_base, load_adapter_model
    from dpo_recipe.training.objectives import objective_for

    stopwatch, cache = Stopwatch(), default_cache()
    with stopwatch.phase("checks and data"):
        adapter_dir, recipe, model_section = adapter_base(adapter, base, trust_remote_code=trust_remote_code, data=data)
        judge_settings = checked_judge(judge, judge_recipe, judge_overrides, recipe.eval)
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
    if judge:
        from dpo_recipe.evaluation.judged import answer_judge, journal_path, judge_report

        with stopwatch.phase("judging"):
            judging = answer_judge(
                judge,
                judge_settings,
                model=model,
                tokenizer=tokenizer,
                beta=training.beta,
                max_length=training.max_length,
                cache=cache,
                journal=journal_path(out),
                adapter=adapter,
            )
            judge_report(report, rows, judging)
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
