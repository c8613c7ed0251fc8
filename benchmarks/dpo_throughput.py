"""DPO training throughput: plain TRL (guide layout, best layout) against dpo-recipe, on a recipe's settings.

    python benchmarks/dpo_throughput.py --pairs 64 --eval-pairs 32 --rounds 2      # the quickstart's Gemma settings
    python benchmarks/dpo_throughput.py --recipe smollm2-135m-ja --max-length 128  # the SmolLM2 workload
    python benchmarks/dpo_throughput.py --smoke         # tiny model, seconds (what CI runs)
    python benchmarks/dpo_throughput.py --precision bf16     # every configuration under bf16 autocast
    python benchmarks/dpo_throughput.py --workload long-prompt   # multi-turn prompts >= 3x the answers
    python benchmarks/dpo_throughput.py --configs dpo_recipe --compile   # dpo-recipe's decoder under torch.compile
    python benchmarks/dpo_throughput.py --configs dpo_recipe --profile   # where train()'s time goes, op by op

Every configuration trains the same pairs with the same settings, those of ``--recipe`` (default the
quickstart's, gemma3-270m-ja; ``--set KEY=VALUE`` changes one for all): model, LoRA, loss types and
weights (RPO for Gemma), learning rate, beta, max_length, chat template, effective batch, seed and
precision. The pairs are the recipe's own split (``data.max_train_pairs`` / ``data.max_eval_pairs``
set to ``--pairs`` / ``--eval-pairs``). One setting is left out for all: ``lora.trainable_tokens``,
which TRL's DPOTrainer cannot train on a model with tied embeddings (it reads ``lm_head.bias``,
which PEFT's wrapper lacks). Each configuration runs in its own process, alternated over the rounds
so drift in the machine's speed hits them all.

- "train()" is ``trainer.train()`` alone.
- "End to end" is from the trainer's construction (tokenization, and the reference pass where it is
  precomputed) to the end of ``train()``: what a user waits for the adapter.
- "Whole process" adds loading the model and each tool's own held-out evaluation (TRL's
  ``trainer.evaluate()``, dpo-recipe's ``evaluation.score_pairs``) on the recipe's held-out pairs;
  the held-out reward accuracy and its 95 % Wilson interval are that evaluation's.

1. ``trl_guide``: plain ``DPOTrainer``, the original guide's layout (batch 1 x accumulation N, the
   recipe's effective batch), TRL's defaults otherwise (activation checkpointing on).
2. ``trl_best``: plain ``DPOTrainer``, the fastest layout found for it here: batch N x 1, activation
   checkpointing off, pin_memory off, glibc's malloc thresholds raised.
3. ``dpo_recipe``: ``training.objectives.dpo.DPO.build_trainer`` as training uses it (packed pairs in
   the recipe's layout, reference log-probs precomputed once, forward-only; a fresh cache directory,
   so the reference pass is paid here unless ``--base-cache`` keeps one).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
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

CONFIGS = ("trl_guide", "trl_best", "dpo_recipe")
QUICKSTART_RECIPE = "gemma3-270m-ja"
PAIR_KEYS = ("prompt", "chosen", "rejected")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipe", default=QUICKSTART_RECIPE, help="Recipe whose settings every configuration trains with."
    )
    parser.add_argument("--model", help="Another model: a Hub id or local directory (overrides --recipe's model).")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="A recipe override, for all."
    )
    parser.add_argument("--pairs", type=positive, default=64, help="Training pairs per run.")
    parser.add_argument("--eval-pairs", type=positive, default=32, help="Held-out pairs scored after each run.")
    parser.add_argument("--max-length", type=positive, help="training.max_length (default: the recipe's).")
    parser.add_argument("--rounds", type=positive, default=2)
    parser.add_argument(
        "--dpo-recipe-batch", type=positive, help="dpo-recipe's pairs per packed row (default: the recipe's)."
    )
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="Every configuration's precision."
    )
    parser.add_argument(
        "--workload",
        choices=("qa", "long-prompt"),
        default="qa",
        help="qa: the recipe's pairs; long-prompt: the same answers after three earlier question-answer "
        "turns (conversational, through the chat template), prompts >= 3x the answers.",
    )
    parser.add_argument("--configs", default=",".join(CONFIGS), help="Comma-separated subset of " + ", ".join(CONFIGS))
    parser.add_argument(
        "--base-cache",
        metavar="DIR",
        help="dpo-recipe's base cache, kept between runs: a re-run, resume or sweep, whose reference log-probs "
        "(training and held-out) were computed before. Run once to fill it. Default: a fresh cache per run.",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="dpo_recipe only: its training steps run the decoder under torch.compile (dynamic shapes, inductor); "
        "train() then includes the compilation.",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="Run train() under torch.profiler and report the ops' shares of its CPU time, attention's first "
        "(the bound on what computing attention over each pair's own blocks could save). Profiling slows it.",
    )
    parser.add_argument("--smoke", action="store_true", help="Tiny random model, 16 pairs, 1 round: a check only.")
    parser.add_argument("--out", type=Path, help="Also write the Markdown report here.")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--tiny-dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- one run (its own process)


def _recipe(args: argparse.Namespace) -> Any:
    """The recipe every configuration trains with: ``--recipe`` and ``--set``, at the benchmark's size."""
    from dpo_recipe.config.loader import load_recipe

    overrides = [
        f"data.max_train_pairs={args.pairs}",
        f"data.max_eval_pairs={args.eval_pairs}",
        "lora.trainable_tokens=[]",  # TRL's DPOTrainer cannot train them on tied embeddings: left out for all
        "training.num_epochs=1",
        "training.logging_steps=1",
        "training.save_steps=1000000",
        f"training.precision={args.precision}",
    ]
    if args.max_length:
        overrides.append(f"training.max_length={args.max_length}")
    if args.workload == "long-prompt":  # plain pairs, which long_prompt_rows turns into conversations
        overrides.append("data.as_conversation=false")
    if args.tiny_dir:
        overrides.append(f"model.name_or_path={args.tiny_dir}")
    elif args.model:
        overrides += [f"model.name_or_path={args.model}", "model.gguf_file=null"]
    return load_recipe("tiny-ja" if args.tiny_dir else args.recipe, [*overrides, *args.overrides])


def _layout(recipe: Any, batch: int) -> Any:
    """``recipe`` with ``batch`` pairs a device step and the accumulation that keeps its effective batch."""
    t = recipe.training
    effective = t.per_device_batch_size * t.gradient_accumulation_steps
    if effective % batch:
        raise SystemExit(
            f"--dpo-recipe-batch {batch} does not divide the recipe's effective batch of {effective} "
            "(training.per_device_batch_size x training.gradient_accumulation_steps): give one of its divisors"
        )
    training = dataclasses.replace(t, per_device_batch_size=batch, gradient_accumulation_steps=effective // batch)
    return dataclasses.replace(recipe, training=training)


def long_prompt_rows(rows: list[dict[str, Any]], history_turns: int = 3) -> list[dict[str, Any]]:
    """Each pair after ``history_turns`` earlier exchanges (other pairs' questions and chosen answers) as messages.

    Where the prompt is several times the answer, computing it once per pair (packing) rather than
    once per answer matters most; this is that workload, built from the recipe's own pairs.
    """
    converted = []
    for i, row in enumerate(rows):
        history = []
        for j in range(1, history_turns + 1):
            earlier = rows[(i + j) % len(rows)]
            history += [
                {"role": "user", "content": earlier["prompt"]},
                {"role": "assistant", "content": earlier["chosen"]},
            ]
        converted.append(
            {
                "prompt": [*history, {"role": "user", "content": row["prompt"]}],
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}],
            }
        )
    return converted


def _plain_trl_trainer(config: str, recipe: Any, model: Any, tokenizer: Any, rows: list[dict], out: Path) -> Any:
    """Plain ``DPOTrainer`` with the recipe's DPOConfig fields and LoRA, in the guide's or the best layout."""
    from datasets import Dataset
    from trl import DPOTrainer

    from dpo_recipe.training.objectives.base import recipe_lora
    from dpo_recipe.training.objectives.dpo import DPO

    best = config == "trl_best"
    effective = recipe.training.per_device_batch_size * recipe.training.gradient_accumulation_steps
    args = dataclasses.replace(
        DPO().trainer_args(_layout(recipe, effective if best else 1), out),
        activation_checkpointing=not best,  # TRL's default is on: the guide keeps it
        dataloader_pin_memory=not best,
        disable_tqdm=True,
    )
    return DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=recipe_lora(recipe, tokenizer),
    )


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from dpo_recipe.data.sources import load_preference_splits
    from dpo_recipe.data.tokens import encode_pair, trainer_rows
    from dpo_recipe.evaluation.metrics.dpo_preference.dpo_preference import wilson_interval
    from dpo_recipe.evaluation.scoring import score_pairs, summarise
    from dpo_recipe.models.hardware import keep_freed_memory_in_heap
    from dpo_recipe.models.loading import load_model, load_tokenizer
    from dpo_recipe.training.base_cache import default_cache
    from dpo_recipe.training.objectives.dpo import DPO

    config = args.worker
    if config == "trl_best":  # dpo_recipe's DPO.build_trainer decides this for itself
        keep_freed_memory_in_heap()
    recipe = _recipe(args)
    if args.dpo_recipe_batch:
        recipe = _layout(recipe, args.dpo_recipe_batch)
    train_rows, held_out, _ = load_preference_splits(recipe.data)
    rows, held_out = trainer_rows(train_rows, PAIR_KEYS), trainer_rows(held_out, PAIR_KEYS)
    if args.workload == "long-prompt":
        rows, held_out = long_prompt_rows(rows), long_prompt_rows(held_out)
    loading = time.perf_counter()
    tokenizer = load_tokenizer(recipe.model)
    model = load_model(recipe.model)
    out = Path(tempfile.mkdtemp(prefix=f"bench-{config}-"))
    # a fresh cache: the reference pass is paid here; --base-cache keeps the base's work between runs instead
    os.environ["DPO_RECIPE_CACHE"] = args.base_cache or str(out / "cache")
    encoded = [encode_pair(tokenizer, row) for row in rows]
    prompt_tokens = statistics.mean(len(e.prompt_ids) for e in encoded)
    answer_tokens = statistics.mean((len(e.chosen_ids) + len(e.rejected_ids)) / 2 for e in encoded)
    started = time.perf_counter()
    if config == "dpo_recipe":
        dpo = DPO()
        trainer = dpo.build_trainer(recipe, dpo.trainer_args(recipe, out), model, tokenizer, rows, out, default_cache())
        if args.compile:  # after the reference pass: only the training steps' forward and backward are compiled
            decoder = trainer.model.get_base_model().get_decoder()
            decoder.forward = torch.compile(decoder.forward, dynamic=True)
    else:
        trainer = _plain_trl_trainer(config, recipe, model, tokenizer, rows, out)
    training = time.perf_counter()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            trainer.train()
    else:
        trainer.train()
    finished = time.perf_counter()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_cuda_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    if config == "dpo_recipe":
        model = trainer.accelerator.unwrap_model(trainer.model)
        max_length, batch_size = recipe.training.max_length, recipe.eval.batch_size
        with trainer.accelerator.autocast():
            scored = score_pairs(
                model, tokenizer, held_out, max_length, batch_size, progress=False, cache=default_cache()
            )
        overall = summarise(scored, beta=recipe.training.beta, loss_type=recipe.training.loss_type)["overall"]
        accuracy, interval = overall["reward_accuracy"], overall["reward_accuracy_ci95"]
    else:
        from datasets import Dataset

        # TRL's accuracy is a mean of batch means: exact where the eval batch divides the pairs (1 in the recipes)
        accuracy = trainer.evaluate(Dataset.from_list(held_out))["eval_rewards/accuracies"]
        interval = wilson_interval(round(accuracy * len(held_out)), len(held_out))
    return {
        "config": config,
        "pairs": len(rows),
        "end_to_end_s": finished - started,
        "whole_s": time.perf_counter() - loading,
        "train_s": finished - training,
        "peak_rss_mb": peak_rss_mb,
        "peak_cuda_mb": peak_cuda_mb,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "steps": trainer.state.global_step,
        "held_out_reward_accuracy": accuracy,
        "held_out_ci95": list(interval),
        "held_out_pairs": len(held_out),
        "prompt_tokens": prompt_tokens,
        "answer_tokens": answer_tokens,
        **({"op_shares": op_shares(profiler)} if args.profile else {}),
    }


ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "efficient_attention")  # forward and backward kernels


def op_shares(profiler: Any, top: int = 8) -> dict[str, float]:
    """Shares of the profiled CPU time (self time, summed over threads): attention's kernels together, then the
    ``top`` costliest ops."""
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events) or 1.0
    shares = {
        "attention (all kernels)": sum(
            event.self_cpu_time_total for event in events if any(op in event.key for op in ATTENTION_OPS)
        )
        / total
    }
    for event in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
        shares[event.key] = event.self_cpu_time_total / total
    return shares


# ---------------------------------------------------------------------------- the comparison


def _spawn(config: str, args: argparse.Namespace, tiny_dir: str | None) -> dict[str, Any]:
    command = ["--worker", config, "--pairs", str(args.pairs), "--recipe", args.recipe]
    command += ["--eval-pairs", str(args.eval_pairs), "--precision", args.precision, "--workload", args.workload]
    command += ["--max-length", str(args.max_length)] if args.max_length else []
    command += ["--dpo-recipe-batch", str(args.dpo_recipe_batch)] if args.dpo_recipe_batch else []
    command += [item for override in args.overrides for item in ("--set", override)]
    command += ["--base-cache", args.base_cache] if args.base_cache else []
    command += ["--model", args.model] if args.model else []
    command += ["--tiny-dir", tiny_dir] if tiny_dir else []
    command += ["--compile"] if args.compile and config == "dpo_recipe" else []
    command += ["--profile"] if args.profile else []
    return run_in_process(__file__, command, config)


def _spread(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def report(runs: list[dict[str, Any]], command: str, configs: list[str], recipe: str) -> str:
    import torch

    by_config = {c: [r for r in runs if r["config"] == c] for c in configs}
    cuda = any(r["peak_cuda_mb"] for r in runs)
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}.",
        f"Recipe {recipe} (its settings, lora.trainable_tokens left out for all); {runs[0]['pairs']} pairs, "
        f"{runs[0]['held_out_pairs']} held out; mean prompt {runs[0]['prompt_tokens']:.0f} tokens, mean answer "
        f"{runs[0]['answer_tokens']:.0f} tokens before truncation. Seconds: median (min–max) over the rounds.",
        "",
        "| configuration | train() s | end to end s | whole process s | peak RSS MB "
        + ("| peak GPU MB " if cuda else "")
        + "| first → last loss | held-out reward acc. (95% CI) |",
        "| --- | --- | --- | --- | --- " + ("| --- " if cuda else "") + "| --- | --- |",
    ]
    for config, results in by_config.items():
        gpu = f"| {max(r['peak_cuda_mb'] for r in results):.0f} " if cuda else ""
        losses = " / ".join(f"{r['first_loss']:.4f} → {r['last_loss']:.4f}" for r in results)
        accuracy = " / ".join(
            f"{r['held_out_reward_accuracy']:.3f} ({r['held_out_ci95'][0]:.3f}–{r['held_out_ci95'][1]:.3f})"
            for r in results
        )
        times = " | ".join(_spread([r[key] for r in results], 1) for key in ("train_s", "end_to_end_s", "whole_s"))
        lines.append(
            f"| {config} | {times} | {max(r['peak_rss_mb'] for r in results):.0f} {gpu}| {losses} | {accuracy} |"
        )
    if "dpo_recipe" in by_config:
        lines.append("")
        lines.append("dpo-recipe's speed against each, per round (other's seconds / dpo-recipe's; median, min–max):")
        for other in (c for c in configs if c != "dpo_recipe"):
            for label, key in (("in train()", "train_s"), ("end to end", "end_to_end_s"), ("whole process", "whole_s")):
                ratios = [o[key] / d[key] for d, o in zip(by_config["dpo_recipe"], by_config[other], strict=True)]
                lines.append(f"- dpo_recipe / {other}, {label}: {_spread(ratios)}×")
    for run in runs:
        if "op_shares" in run:
            shares = ", ".join(f"{op} {share:.1%}" for op, share in run["op_shares"].items())
            lines += ["", f"Profiled train() of {run['config']}, shares of its CPU time: {shares}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if answered_as_worker(args.worker, lambda: run_worker(args)):
        return
    configs = chosen(args.configs, CONFIGS, "--configs")
    tiny_dir = None
    if args.smoke:
        args.pairs, args.eval_pairs, args.rounds = 16, 8, 1
        args.max_length = 512 if args.workload == "long-prompt" else 64  # a long prompt must fit whole
        tiny_dir = tiny_model_dir()
    else:
        from dpo_recipe.errors import DpoRecipeError
        from dpo_recipe.models.loading import resolve_model_source

        try:  # a bad --recipe, --set or layout is said here, in one line, before any run
            recipe = _recipe(args)
            if args.dpo_recipe_batch:
                _layout(recipe, args.dpo_recipe_batch)
            resolve_model_source(recipe.model)  # a GGUF base is converted once here, not inside a timed run
        except DpoRecipeError as exc:
            raise SystemExit(str(exc)) from None
    runs = alternated(
        configs,
        args.rounds,
        lambda config: _spawn(config, args, tiny_dir),
        lambda r: (
            f"train() {r['train_s']:.1f} s, end to end {r['end_to_end_s']:.1f} s, whole {r['whole_s']:.1f} s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB"
        ),
    )
    command = shlex.join(["python", "benchmarks/dpo_throughput.py", *(argv or sys.argv[1:])])
    text = report(runs, command, configs, "tiny-ja (builtin:tiny)" if args.smoke else args.recipe)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
