"""DPO training throughput: plain TRL (guide settings, best settings) against dpo-recipe's default path.

    python benchmarks/dpo_throughput.py                 # SmolLM2-135M, 256 pairs, max_length 128, 3 rounds
    python benchmarks/dpo_throughput.py --smoke         # tiny model, seconds (what CI runs)
    python benchmarks/dpo_throughput.py --out benchmarks/RESULTS.md
    python benchmarks/dpo_throughput.py --precision bf16     # every configuration under bf16 autocast
    python benchmarks/dpo_throughput.py --workload long-prompt   # multi-turn prompts >= 3x the answers

Every configuration trains the same pairs (the generated dataset's first N training pairs) with
the same model, max_length, LoRA (r 16, alpha 32, q_proj / v_proj), effective batch 4, learning
rate, seed and precision (``--precision``; on a GPU each runs there), each in its own process,
alternated over the rounds so drift in the machine's speed hits them all. "End to end" is from the
trainer's construction (tokenization, and the reference pass where it is precomputed) to the end
of ``train()``. "Whole process" adds loading the model and each tool's own held-out evaluation
(TRL's ``trainer.evaluate()``, dpo-recipe's ``evaluation.score_pairs``) on pairs from topics none
of them trained on; the held-out reward accuracy is that evaluation's.

1. ``trl_guide``: plain ``DPOTrainer``, the original guide's settings (batch 1 x accumulation 4,
   fp32), TRL defaults otherwise (activation checkpointing on).
2. ``trl_best``: plain ``DPOTrainer``, the fastest settings found for it here: batch 4 x 1,
   activation checkpointing off, pin_memory off, glibc's malloc thresholds raised.
3. ``dpo_recipe``: ``training.objectives.dpo.DPO.build_trainer`` as training uses it (packed pairs, one pair a
   row x accumulation 4, reference log-probs precomputed once; a fresh cache directory, so the
   reference pass is paid here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIGS = ("trl_guide", "trl_best", "dpo_recipe")
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="smollm2-135m-ja", help="Recipe whose model to train (its model only).")
    parser.add_argument("--model", help="Another model: a Hub id or local directory (overrides --recipe's model).")
    parser.add_argument("--pairs", type=int, default=256, help="Training pairs per run.")
    parser.add_argument("--eval-pairs", type=int, default=32, help="Held-out pairs scored after each run.")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dpo-recipe-batch", type=int, default=1, help="dpo-recipe's pairs per packed row.")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="Every configuration's precision."
    )
    parser.add_argument(
        "--workload",
        choices=("qa", "long-prompt"),
        default="qa",
        help="qa: the generated one-question pairs; long-prompt: the same answers after three earlier "
        "question-answer turns (conversational, through the chat template), prompts >= 3x the answers.",
    )
    parser.add_argument("--configs", default=",".join(CONFIGS), help="Comma-separated subset of " + ", ".join(CONFIGS))
    parser.add_argument(
        "--base-cache",
        metavar="DIR",
        help="dpo-recipe's base cache, kept between runs: a re-run, resume or sweep, whose reference log-probs "
        "(training and held-out) were computed before. Run once to fill it. Default: a fresh cache per run.",
    )
    parser.add_argument("--smoke", action="store_true", help="Tiny random model, 16 pairs, 1 round: a check only.")
    parser.add_argument("--out", type=Path, help="Also write the Markdown report here.")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--tiny-dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- one run (its own process)


def _recipe(args: argparse.Namespace, extra: list[str]) -> Any:
    from dpo_recipe.config.loader import load_recipe

    overrides = [f"training.max_length={args.max_length}", *extra]
    if args.tiny_dir:
        overrides.append(f"model.name_or_path={args.tiny_dir}")
    elif args.model:
        overrides += [f"model.name_or_path={args.model}", "model.gguf_file=null"]
    return load_recipe("tiny-ja" if args.tiny_dir else args.recipe, overrides)


def long_prompt_rows(rows: list[dict[str, Any]], history_turns: int = 3) -> list[dict[str, Any]]:
    """Each pair after ``history_turns`` earlier exchanges (other pairs' questions and chosen answers) as messages.

    Where the prompt is several times the answer, computing it once per pair (packing) rather than
    once per answer matters most; this is that workload, built from the generator's own pairs.
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


def _plain_trl_trainer(
    config: str, model: Any, tokenizer: Any, rows: list[dict], out: Path, max_length: int, precision: str
) -> Any:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from dpo_recipe.training.trl_args import precision_flags

    best = config == "trl_best"
    dpo_args = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=4 if best else 1,
        gradient_accumulation_steps=1 if best else 4,
        learning_rate=5e-6,
        max_length=max_length,
        num_train_epochs=1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        **precision_flags(precision),
        seed=42,
        disable_tqdm=True,
        **({"activation_checkpointing": False, "dataloader_pin_memory": False} if best else {}),
    )
    return DPOTrainer(
        model=model,
        args=dpo_args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
    )


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from dpo_recipe.data.generator import generate_pairs
    from dpo_recipe.data.tokens import encode_pair
    from dpo_recipe.evaluation.scoring import score_pairs, summarise
    from dpo_recipe.models.hardware import keep_freed_memory_in_heap
    from dpo_recipe.models.loading import load_model, load_tokenizer
    from dpo_recipe.training.base_cache import default_cache
    from dpo_recipe.training.objectives.dpo import DPO

    config = args.worker
    if config == "trl_best":  # dpo_recipe's DPO.build_trainer decides this for itself
        keep_freed_memory_in_heap()
    batch = args.dpo_recipe_batch
    recipe = _recipe(
        args,
        [
            f"training.per_device_batch_size={batch}",
            f"training.gradient_accumulation_steps={4 // batch}",
            "training.learning_rate=5e-6",
            "training.num_epochs=1",
            "training.logging_steps=1",
            "training.save_steps=1000000",
            "training.seed=42",
            f"lora.r={LORA['r']}",
            f"lora.alpha={LORA['lora_alpha']}",
            f"lora.dropout={LORA['lora_dropout']}",
            f"training.precision={args.precision}",
        ],
    )
    splits = generate_pairs(num_pairs=1000, seed=0)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in splits["train"][: args.pairs]]
    held_out = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in splits["test"][: args.eval_pairs]]
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
        trainer = DPO().build_trainer(recipe, DPO().trainer_args(recipe, out), model, tokenizer, rows, out)
    else:
        trainer = _plain_trl_trainer(config, model, tokenizer, rows, out, args.max_length, args.precision)
    training = time.perf_counter()
    trainer.train()
    finished = time.perf_counter()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_cuda_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    if config == "dpo_recipe":
        model = trainer.accelerator.unwrap_model(trainer.model)
        with trainer.accelerator.autocast():
            scored = score_pairs(
                model,
                tokenizer,
                held_out,
                args.max_length,
                recipe.eval.batch_size,
                progress=False,
                cache=default_cache(),
            )
        accuracy = summarise(scored, beta=0.1)["overall"]["reward_accuracy"]
    else:
        from datasets import Dataset

        accuracy = trainer.evaluate(Dataset.from_list(held_out))["eval_rewards/accuracies"]
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
        "held_out_pairs": len(held_out),
        "prompt_tokens": prompt_tokens,
        "answer_tokens": answer_tokens,
    }


# ---------------------------------------------------------------------------- the comparison


def _spawn(config: str, args: argparse.Namespace, tiny_dir: str | None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", config, "--pairs", str(args.pairs)]
    command += ["--eval-pairs", str(args.eval_pairs), "--max-length", str(args.max_length)]
    command += ["--recipe", args.recipe, "--dpo-recipe-batch", str(args.dpo_recipe_batch)]
    command += ["--precision", args.precision, "--workload", args.workload]
    command += ["--base-cache", args.base_cache] if args.base_cache else []
    command += ["--model", args.model] if args.model else []
    command += ["--tiny-dir", tiny_dir] if tiny_dir else []
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{config} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def report(runs: list[dict[str, Any]], command: str, configs: list[str]) -> str:
    import torch

    by_config = {c: [r for r in runs if r["config"] == c] for c in configs}
    cuda = any(r["peak_cuda_mb"] for r in runs)
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}.",
        f"Pairs before truncation: mean prompt {runs[0]['prompt_tokens']:.0f} tokens, mean answer "
        f"{runs[0]['answer_tokens']:.0f} tokens.",
        "",
        "| configuration | pairs/s end to end | pairs/s in train() | whole process s | peak RSS MB "
        + ("| peak GPU MB " if cuda else "")
        + "| first → last loss | held-out reward acc. |",
        "| --- | --- | --- | --- | --- " + ("| --- " if cuda else "") + "| --- | --- |",
    ]
    for config, results in by_config.items():
        e2e = [r["pairs"] / r["end_to_end_s"] for r in results]
        train = [r["pairs"] / r["train_s"] for r in results]
        whole = [r["whole_s"] for r in results]
        rss = [r["peak_rss_mb"] for r in results]
        gpu = f"| {max(r['peak_cuda_mb'] for r in results):.0f} " if cuda else ""
        losses = " / ".join(f"{r['first_loss']:.4f} → {r['last_loss']:.4f}" for r in results)
        accuracy = " / ".join(f"{r['held_out_reward_accuracy']:.3f}" for r in results)
        lines.append(
            f"| {config} | {_spread(e2e)} | {_spread(train)} | {_spread(whole)} | {max(rss):.0f} {gpu}| {losses} "
            f"| {accuracy} (of {results[0]['held_out_pairs']}) |"
        )
    if "dpo_recipe" in by_config:
        lines.append("")
        lines.append("Ratios of dpo-recipe's speed, per round (median, min–max):")
        for other in (c for c in configs if c != "dpo_recipe"):
            for label, key in (("end to end", "end_to_end_s"), ("in train()", "train_s"), ("whole process", "whole_s")):
                ratios = [o[key] / d[key] for d, o in zip(by_config["dpo_recipe"], by_config[other], strict=True)]
                lines.append(f"- dpo_recipe / {other}, {label}: {_spread(ratios)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    configs = [c.strip() for c in args.configs.split(",")]
    tiny_dir = None
    if args.smoke:
        from dpo_recipe.models.tiny import build_tiny_model

        args.pairs, args.eval_pairs, args.rounds = 16, 8, 1
        args.max_length = 512 if args.workload == "long-prompt" else 64  # a long prompt must fit whole
        tiny_dir = str(build_tiny_model(Path(tempfile.mkdtemp(prefix="bench-tiny-"))))
    runs = []
    for round_index in range(args.rounds):
        order = configs[round_index % len(configs) :] + configs[: round_index % len(configs)]  # rotate the order
        for config in order:
            result = _spawn(config, args, tiny_dir)
            runs.append(result)
            print(
                f"round {round_index + 1}/{args.rounds} {config}: {result['pairs'] / result['end_to_end_s']:.3f} "
                f"pairs/s end to end, peak RSS {result['peak_rss_mb']:.0f} MB",
                file=sys.stderr,
                flush=True,
            )
    text = report(runs, shlex.join(["python", "benchmarks/dpo_throughput.py", *(argv or sys.argv[1:])]), configs)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
