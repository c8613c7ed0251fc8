"""Forward-only scoring: one packed row a forward against stacked rows with the LM head on scored positions.

    python benchmarks/forward_passes.py --adapter outputs/quickstart/adapter   # 32 held-out pairs, 2 rounds
    python benchmarks/forward_passes.py --smoke                                # tiny model, a check only

Each variant scores the same held-out pairs (the first ``--pairs`` of ``--recipe``'s held-out split)
under a trained adapter and under its base: the two passes of held-out scoring (``packing.score_packed``
with policy and reference). Each runs in its own process, loaded as ``dpo-recipe eval`` loads an adapter,
alternated over the rounds so drift in the machine's speed hits them all.

- ``row``: ``token_budget=None``, one packed row a forward through the model's own forward, the LM head on
  all of a row's scored positions at once: what a training step computes, and how scoring ran before
  forward-only passes stacked rows.
- ``stacked``: the default, rows stacked up to ``packing.SCORING_TOKENS`` tokens a forward, the LM head
  run by ``packing.scored_token_logps`` in chunks of ``packing.HEAD_CHUNK_LOGITS`` logits.
- ``stacked_bf16``: ``stacked`` under bf16 autocast (the decoder in bf16; the LM head and log-softmax
  stay in fp32).

Reported: wall and CPU seconds of the scoring, the process's peak RSS, and against ``row``: the largest
difference of a summed log-prob, per-pair reward-margin differences (beta x the log-ratio difference),
held-out reward accuracy and how many pairs' decisions (margin > 0) agree.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from alternation import (  # the shared one-process-per-run harness
    alternated,
    answered_as_worker,
    chosen,
    positive,
    run_in_process,
    tiny_model_dir,
)

VARIANTS = ("row", "stacked", "stacked_bf16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", help="A trained adapter directory (its recipe.yaml names the base).")
    parser.add_argument("--recipe", default="gemma3-270m-ja", help="Recipe whose held-out split is scored.")
    parser.add_argument("--pairs", type=positive, default=32, help="Held-out pairs scored.")
    parser.add_argument("--rounds", type=positive, default=2)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="Comma-separated subset of " + ", ".join(VARIANTS)
    )
    parser.add_argument("--smoke", action="store_true", help="Tiny random model and adapter, 8 pairs, 1 round.")
    parser.add_argument("--out", type=Path, help="Also write the Markdown report here.")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--tiny-dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- one variant (its own process)


def _smoke_model(tiny_dir: str) -> tuple[Any, Any]:
    """The tiny model with a LoRA adapter whose B matrices are random, so adapter on and off differ."""
    import torch
    from peft import LoraConfig, get_peft_model

    from dpo_recipe.config.loader import load_recipe
    from dpo_recipe.models.loading import load_model, load_tokenizer

    section = load_recipe("tiny-ja", [f"model.name_or_path={tiny_dir}"]).model
    torch.manual_seed(0)  # LoRA's A matrices: the same adapter in every variant's process
    model = get_peft_model(load_model(section), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model, load_tokenizer(section)


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from dpo_recipe.config.loader import load_recipe
    from dpo_recipe.data.sources import load_preference_splits
    from dpo_recipe.data.tokens import encode_pair
    from dpo_recipe.models.adapters import adapter_base, load_adapter_model
    from dpo_recipe.training.packing import SCORING_TOKENS, score_packed

    recipe = load_recipe("tiny-ja" if args.tiny_dir else args.recipe)
    if args.tiny_dir:
        model, tokenizer = _smoke_model(args.tiny_dir)
    else:
        adapter_dir, _, section = adapter_base(args.adapter, None)
        model, tokenizer = load_adapter_model(adapter_dir, section)
    rows = load_preference_splits(recipe.data)[1][: args.pairs]
    pairs = [vars(encode_pair(tokenizer, row)) for row in rows]
    budget = None if args.worker == "row" else SCORING_TOKENS
    cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.worker.endswith("bf16")):
        scores = score_packed(
            model,
            pairs,
            recipe.training.max_length,
            recipe.eval.batch_size,
            policy=True,
            reference=True,
            token_budget=budget,
        )
    return {
        "variant": args.worker,
        "pairs": len(pairs),
        "scoring_s": time.perf_counter() - started,
        "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "beta": recipe.training.beta,
        "policy": [side.tolist() for side in scores.policy],
        "reference": [side.tolist() for side in scores.reference],
    }


# ---------------------------------------------------------------------------- the comparison


def _spawn(variant: str, args: argparse.Namespace, tiny_dir: str | None) -> dict[str, Any]:
    command = ["--worker", variant, "--recipe", args.recipe, "--pairs", str(args.pairs)]
    command += ["--adapter", args.adapter] if args.adapter else []
    command += ["--tiny-dir", tiny_dir] if tiny_dir else []
    return run_in_process(__file__, command, variant)


def margins(run: dict[str, Any]) -> list[float]:
    """beta x ((policy - reference) chosen - (policy - reference) rejected), one per pair."""
    (pc, pr), (rc, rr) = run["policy"], run["reference"]
    return [run["beta"] * ((a - c) - (b - d)) for a, b, c, d in zip(pc, pr, rc, rr, strict=True)]


def agreement(base: dict[str, Any], other: dict[str, Any]) -> str:
    """How ``other``'s numbers differ from ``base``'s: log-probs, margins, accuracy, decisions."""

    def flat(run: dict[str, Any]) -> list[float]:
        return [x for side in (*run["policy"], *run["reference"]) for x in side]

    pairs = list(zip(flat(base), flat(other), strict=True))
    absolute = max(abs(a - b) for a, b in pairs)
    relative = max(abs(a - b) / abs(a) for a, b in pairs)
    first, second = margins(base), margins(other)
    differences = [abs(a - b) for a, b in zip(first, second, strict=True)]
    agree = sum((a > 0) == (b > 0) for a, b in zip(first, second, strict=True))
    accuracy = [sum(m > 0 for m in ms) / len(ms) for ms in (first, second)]
    return (
        f"summed log-probs differ by {absolute:.3g} nats at most ({relative:.2g} relative); reward margins by "
        f"{max(differences):.4f} at most (mean {sum(differences) / len(differences):.4f}; the smallest |margin| "
        f"is {min(abs(m) for m in first):.4f}); held-out reward accuracy {accuracy[0]:.3f} → {accuracy[1]:.3f}; "
        f"decisions agree on {agree} of {len(first)} pairs"
    )


def report(runs: list[dict[str, Any]], command: str, variants: list[str]) -> str:
    import statistics

    by_variant = {v: [r for r in runs if r["variant"] == v] for v in variants}
    lines = [
        f"Command: `{command}`",
        "",
        f"{runs[0]['pairs']} held-out pairs, tuned adapter and base (policy + reference). Per round, in run order.",
        "",
        "| variant | scoring s | CPU s | s a pair-forward | peak RSS MB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for variant, results in by_variant.items():
        seconds, cpu, rss = ([r[key] for r in results] for key in ("scoring_s", "cpu_s", "peak_rss_mb"))
        per = statistics.median(seconds) / (2 * results[0]["pairs"])
        columns = (" / ".join(f"{v:.{digits}f}" for v in values) for values, digits in ((seconds, 1), (cpu, 1)))
        lines.append(f"| {variant} | {' | '.join(columns)} | {per:.3f} | {' / '.join(f'{v:.0f}' for v in rss)} |")
    if "row" in by_variant:
        lines.append("")
        for variant in (v for v in variants if v != "row"):
            lines.append(f"- {variant} against row: {agreement(by_variant['row'][0], by_variant[variant][0])}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if answered_as_worker(args.worker, lambda: run_worker(args)):
        return
    variants = chosen(args.variants, VARIANTS, "--variants")
    tiny_dir = None
    if args.smoke:
        args.pairs, args.rounds = 8, 1
        tiny_dir = tiny_model_dir()
    elif not args.adapter:
        raise SystemExit("--adapter: give a trained adapter directory (e.g. outputs/quickstart/adapter), or --smoke")
    else:
        from dpo_recipe.config.loader import load_recipe
        from dpo_recipe.errors import DpoRecipeError
        from dpo_recipe.models.adapters import adapter_base

        try:  # a bad --adapter or --recipe is said here, in one line, before any run
            adapter_base(args.adapter, None)
            load_recipe(args.recipe)
        except DpoRecipeError as exc:
            raise SystemExit(str(exc)) from None
    runs = alternated(
        variants,
        args.rounds,
        lambda variant: _spawn(variant, args, tiny_dir),
        lambda r: f"{r['scoring_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB",
    )
    text = report(runs, shlex.join(["python", "benchmarks/forward_passes.py", *(argv or sys.argv[1:])]), variants)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
