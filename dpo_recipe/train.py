"""Train a LoRA adapter with DPO from a recipe: setup → train → evaluate → save.

    accelerate launch [accelerate args] -m dpo_recipe.train --recipe NAME_OR_PATH [--set k=v ...]
    python -m dpo_recipe.train --recipe NAME_OR_PATH --dry-run

Everything that can be wrong with the recipe, the data or the hardware is checked before the
model's weights load. Checkpoints go to ``OUTPUT_DIR/checkpoints``; the final artifacts are
moved into ``OUTPUT_DIR`` only at the end, ``metrics.json`` last, so an interrupted run never
looks complete (it keeps an ``INCOMPLETE`` file that says how to resume).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import resource
import shlex
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dpo_recipe.config import Recipe, load_recipe
from dpo_recipe.data import load_preference_splits, pin_hub_revision
from dpo_recipe.errors import RecipeError, RunInterrupted, SaveError, exit_on_user_error
from dpo_recipe.hardware import check_hardware
from dpo_recipe.hub import recipe_from_hub
from dpo_recipe.model import check_lora_targets, load_model, load_tokenizer, skeleton_model
from dpo_recipe.preflight import dry_run_report, measure_tokens, refuse_emptied_completions

INCOMPLETE = "INCOMPLETE"
CHECKPOINTS = "checkpoints"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dpo_recipe.train",
        description="Train a LoRA adapter with DPO from a recipe (run under 'accelerate launch' for several "
        "processes). Writes the adapter, tokenizer, recipe.yaml, metrics.json, plots and a model card.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--recipe", help="Packaged recipe name (dpo-recipe recipes list) or YAML path.")
    source.add_argument(
        "--from-hub",
        metavar="USER/NAME[@REVISION]",
        help="Repeat the run behind an adapter pushed by dpo-recipe: its recipe.yaml, dataset commit included. "
        "hub.push is off unless you --set it; the output dir defaults to outputs/NAME.",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="Override a recipe key; repeatable. Validated like the file.",
    )
    parser.add_argument("--output-dir", help="Overrides training.output_dir.")
    parser.add_argument("--resume", action="store_true", help="Continue from the newest checkpoint in the output dir.")
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace a finished or interrupted run in the output dir."
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Check recipe, data, tokenization and LoRA targets; report and exit before training.",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    exit_on_user_error(
        run,
        args.recipe,
        args.overrides,
        from_hub=args.from_hub,
        output_dir=args.output_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        dry_run=args.dry_run,
    )


def run(
    recipe_name: str | None,
    overrides: list[str],
    *,
    from_hub: str | None = None,
    output_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
) -> dict[str, Any] | None:
    """Train from a recipe (or from a pushed run's recipe, ``from_hub``); returns metrics on the main process."""
    started = time.perf_counter()
    source_args = ["--from-hub", from_hub] if from_hub else ["--recipe", str(recipe_name)]
    implied = []
    if from_hub:
        recipe_name = str(recipe_from_hub(from_hub))
        implied = ["hub.push=false", f"training.output_dir=outputs/{from_hub.split('@')[0].split('/')[-1]}"]
    user_settings = overrides + ([f"training.output_dir={output_dir}"] if output_dir else [])
    given = {item.partition("=")[0].strip() for item in user_settings}
    settings = [item for item in implied if item.partition("=")[0] not in given] + user_settings
    recipe = load_recipe(str(recipe_name), settings)
    recipe.data = pin_hub_revision(recipe.data)
    out = Path(recipe.training.output_dir)
    check_hardware(recipe.model, recipe.training.precision)
    if recipe.training.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise RecipeError(
            "training.tensorboard is true but TensorBoard is not installed: "
            "pip install 'dpo-recipe[tensorboard]' (or set training.tensorboard: false)."
        )
    if resume and overwrite:
        raise RecipeError(
            "--resume and --overwrite contradict each other: resume continues a run, overwrite starts over."
        )
    if not dry_run:
        _check_output_dir(out, resume=resume, overwrite=overwrite)
    if recipe.hub.push and not dry_run:  # a missing or read-only token must not cost a training run
        from dpo_recipe.hub import writable_token

        writable_token(recipe.hub.repo_id)

    # ---- setup: data, tokenizer and architecture, all before any weights load
    train_rows, eval_rows, lint_report = load_preference_splits(recipe.data)
    tokenizer = load_tokenizer(recipe.model)
    skeleton = skeleton_model(recipe.model)
    check_lora_targets(recipe.lora.target_modules, skeleton)
    tokens = measure_tokens(train_rows, tokenizer, recipe.training.max_length)
    if dry_run:
        print(dry_run_report(recipe, tokens, skeleton, lint_warnings=len(lint_report.findings)))
        print(f"dry run finished in {time.perf_counter() - started:.1f} s")
    refuse_emptied_completions(tokens, recipe.training.max_length)
    if dry_run:
        return None

    args = dpo_config(recipe, out)  # creates accelerate's process state: rank-aware from here on
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        _prepare_output_dir(out, source_args, overrides, overwrite=overwrite)
    state.wait_for_everyone()

    # ---- train
    trainer = build_trainer(recipe, args, load_model(recipe.model), tokenizer, train_rows, out)
    checkpoint = newest_complete_checkpoint(out) if resume else None
    stop = _signal_stop(trainer)
    try:
        with _write_failures_explained(out, source_args, overrides):
            train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        stop.restore()
    if stop.received is not None:
        resume_with = launch_command(source_args, overrides, "--output-dir", str(out), "--resume")
        raise RunInterrupted(
            f"Training stopped on {signal.Signals(stop.received).name} after step {trainer.state.global_step}; "
            f"its checkpoint is in {newest_complete_checkpoint(out)}. Nothing is lost: continue with {resume_with}",
            stop.received,
        )

    # ---- evaluate on held-out pairs (every rank scores a shard; the main one gets the report)
    report = held_out_report(recipe, trainer, tokenizer, eval_rows)

    # ---- save (main process only; every rank reports its adapter digest first)
    digests = _gather_adapter_digests(trainer)
    if not state.is_main_process:
        return None
    metrics = collect_metrics(recipe, trainer, train_output, report, len(train_rows), digests)
    metrics["train"]["end_to_end_s"] = round(time.perf_counter() - started, 2)
    with _write_failures_explained(out, source_args, overrides):
        save_artifacts(recipe, source_args, trainer, tokenizer, metrics, report, out, overrides)
    print(summary_line(metrics, out))
    if recipe.hub.push:
        from dpo_recipe.hub import push_adapter

        pushed = push_adapter(out, recipe.hub.repo_id, private=recipe.hub.private, revision=recipe.hub.revision)
        print(f"Pushed and verified {pushed.files} files: {pushed.url} (commit {pushed.commit})")
    return metrics


def _signal_stop(trainer: Any) -> Any:
    from dpo_recipe.callbacks import StopOnSignal

    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StopOnSignal))


def _write_failure(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write: Python raises one, but the Rust writers (tokenizers, safetensors)
    raise a plain Exception ending in "(os error N)" and torch.save a RuntimeError "file write failed"."""
    if isinstance(exc, OSError):
        return exc
    found = re.search(r"\(os error (\d+)\)", str(exc))
    if found:
        return OSError(int(found[1]), os.strerror(int(found[1])))
    if isinstance(exc, RuntimeError) and "file write failed" in str(exc):
        return OSError(str(exc).strip().splitlines()[-1])
    return None


@contextmanager
def _write_failures_explained(out: Path, source_args: list[str], overrides: list[str]) -> Iterator[None]:
    """A failed write (disk full, quota, permissions) becomes one paragraph: what failed, what is intact
    (a half-written checkpoint is skipped on resume), how to go on."""
    try:
        yield
    except Exception as exc:
        failure = _write_failure(exc)
        if failure is None:
            raise
        raise _save_failed(failure, out, source_args, overrides) from None


def _save_failed(exc: OSError, out: Path, source_args: list[str], overrides: list[str]) -> SaveError:
    checkpoint = newest_complete_checkpoint(out)
    what = f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
    if checkpoint is None:
        kept = "No checkpoint was complete yet; free space or fix permissions and start again with --overwrite."
    else:
        resume_with = launch_command(source_args, overrides, "--output-dir", str(out), "--resume")
        kept = (
            f"The last complete checkpoint, {checkpoint}, is intact; free space or fix permissions, then "
            f"continue with {resume_with}"
        )
    return SaveError(f"Writing to {out} failed: {what}. {kept}")


def newest_complete_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint whose trainer_state.json (written last by the Trainer) is whole.

    A kill during a save leaves a newer, half-written checkpoint directory; resuming from it
    would fail, so it is skipped.
    """
    candidates = [p for p in (out / CHECKPOINTS).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for path in sorted(candidates, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return path
    return None


def _check_output_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problem = "is a file, not a directory" if not existing.is_dir() else "is not writable"
        raise RecipeError(
            f"training.output_dir {out}: {existing} {problem}, so nothing could be saved. "
            "Choose another --output-dir (or fix its permissions)."
        )
    has_checkpoints = any((out / CHECKPOINTS).glob("checkpoint-*"))
    if resume and newest_complete_checkpoint(out) is None:
        raise RecipeError(f"--resume: no complete checkpoint in {out / CHECKPOINTS}; start without --resume.")
    if resume or overwrite or not out.exists():
        return
    if (out / "metrics.json").exists():
        raise RecipeError(f"{out} holds a finished run. Pass --overwrite to replace it or choose another --output-dir.")
    if has_checkpoints or (out / INCOMPLETE).exists():
        raise RecipeError(f"{out} holds an interrupted run. Pass --resume to continue it or --overwrite to start over.")


def _prepare_output_dir(out: Path, source_args: list[str], overrides: list[str], *, overwrite: bool) -> None:
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # a resumed run is not finished until it says so again
    command = launch_command(source_args, overrides, "--output-dir", str(out), "--resume")
    (out / INCOMPLETE).write_text(f"This run has not finished. Continue it with:\n  {command}\n", encoding="utf-8")


def launch_command(source_args: list[str], overrides: list[str], *extra: str) -> str:
    """The shell command that runs this training again (``source_args``: --recipe X or --from-hub Y)."""
    parts = ["accelerate", "launch", "-m", "dpo_recipe.train", *source_args]
    for item in overrides:
        parts += ["--set", item]
    return shlex.join([*parts, *extra])


def precision_flags(precision: str) -> dict[str, bool]:
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "use_cpu": not cuda}


def dpo_config(recipe: Recipe, out: Path) -> Any:
    from trl import DPOConfig

    t = recipe.training
    if t.tensorboard:  # transformers 5 reads the TensorBoard directory from the environment only
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "runs")
    return DPOConfig(
        output_dir=str(out / CHECKPOINTS),
        num_train_epochs=t.num_epochs,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=recipe.eval.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        max_grad_norm=t.max_grad_norm,
        beta=t.beta,
        loss_type=[t.loss_type],
        max_length=t.max_length,
        activation_checkpointing=t.activation_checkpointing,
        disable_dropout=t.disable_dropout,
        seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="no",
        report_to=["tensorboard"] if t.tensorboard else [],
        dataloader_pin_memory=False,
        ddp_find_unused_parameters=False,
        **precision_flags(t.precision),
    )


def build_trainer(recipe: Recipe, args: Any, model: Any, tokenizer: Any, train_rows: list[dict], out: Path) -> Any:
    import datasets
    from peft import LoraConfig
    from transformers.trainer_callback import ProgressCallback
    from trl import DPOTrainer

    from dpo_recipe.callbacks import JsonlLogger, LiveMetricsProgress, StopOnSignal
    from dpo_recipe.perf import keep_freed_memory_in_heap
    from dpo_recipe.resources import cache_root
    from dpo_recipe.trainer import PackedDPOTrainer, supports_packing

    def to_dataset(rows: list[dict]) -> Any:
        return datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])

    lora = LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=recipe.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    trainer_class, extra = DPOTrainer, {}
    if recipe.training.packing and supports_packing(model, args):
        trainer_class, extra = PackedDPOTrainer, {"ref_cache_dir": cache_root() / "reference_logps"}
    else:  # padded batches re-allocate big buffers every step (perf.py); packed rows ran faster without this
        keep_freed_memory_in_heap()
    trainer = trainer_class(
        model=model,
        ref_model=None,  # with a PEFT adapter the reference is the base with the adapter disabled
        args=args,
        train_dataset=to_dataset(train_rows),  # held-out pairs are scored by dpo_recipe.evaluation
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[JsonlLogger(out / "train_log.jsonl"), StopOnSignal()],
        **extra,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LiveMetricsProgress())
    return trainer


def held_out_report(recipe: Recipe, trainer: Any, tokenizer: Any, eval_rows: list[dict]) -> dict[str, Any] | None:
    from dpo_recipe.evaluation import evaluate_adapter

    if not eval_rows:
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    return evaluate_adapter(
        model,
        tokenizer,
        eval_rows,
        beta=recipe.training.beta,
        max_length=recipe.training.max_length,
        settings=recipe.eval,
    )


def _gather_adapter_digests(trainer: Any) -> list[str]:
    """One digest of the LoRA weights per rank: DDP must keep them identical."""
    from accelerate.utils import gather_object
    from peft import get_peft_model_state_dict

    model = trainer.accelerator.unwrap_model(trainer.model)
    digest = hashlib.sha256()
    for name, tensor in sorted(get_peft_model_state_dict(model).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return gather_object([digest.hexdigest()[:16]])


def _peak_memory_mb() -> dict[str, float]:
    import torch

    peak = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        peak["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("dpo-recipe", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "huggingface_hub")
    return {name: version(name) for name in names}


def collect_metrics(
    recipe: Recipe,
    trainer: Any,
    train_output: Any,
    report: dict[str, Any] | None,
    n_train: int,
    digests: list[str],
) -> dict[str, Any]:
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    last_train = next((h for h in reversed(history) if "rewards/accuracies" in h), {})
    runtime = train_output.metrics["train_runtime"]
    pairs_seen = n_train * recipe.training.num_epochs
    keys = (
        "rewards/accuracies",
        "rewards/margins",
        "rewards/chosen",
        "rewards/rejected",
        "logps/chosen",
        "logps/rejected",
    )
    return {
        "train": {
            "pairs": n_train,
            "steps": trainer.state.global_step,
            "loss": round(train_output.training_loss, 6),
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            **{k: last_train[k] for k in keys if k in last_train},
            "runtime_s": round(runtime, 2),
            "pairs_per_s": round(pairs_seen / runtime, 4) if runtime else None,
        },
        "eval": {k: v for k, v in (report or {}).items() if k != "per_pair"},
        "memory": _peak_memory_mb(),
        "distributed": {
            "world_size": trainer.args.world_size,
            "adapter_digest_by_rank": digests,
            "ranks_in_sync": len(set(digests)) == 1,
        },
        "versions": _versions(),
    }


def save_artifacts(
    recipe: Recipe,
    source_args: list[str],
    trainer: Any,
    tokenizer: Any,
    metrics: dict[str, Any],
    report: dict[str, Any] | None,
    out: Path,
    overrides: list[str],
) -> None:
    """Write everything into a staging dir, then move it into ``out`` with metrics.json last."""
    from dpo_recipe.cards import render_model_card
    from dpo_recipe.plots import plot_report, plot_training

    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    trainer.model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    history = list(trainer.state.log_history)
    if report:  # the held-out point at the last step, beside the training curves
        overall = report["overall"]
        history.append(
            {
                "step": trainer.state.global_step,
                "eval_loss": overall["loss"],
                "eval_rewards/accuracies": overall["reward_accuracy"],
                "eval_rewards/margins": overall["reward_margin"],
            }
        )
        (staging / "eval_report.json").write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    plots = plot_training(history, staging / "plots")
    plots += plot_report(report or {}, staging / "plots")
    card = render_model_card(
        recipe,
        metrics,
        recipe_name=source_args[1],
        command=launch_command(source_args, overrides),
        plots=[str(p.relative_to(staging)) for p in plots],
    )
    card.save(staging / "README.md")
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    entries = sorted(staging.iterdir(), key=lambda p: p.name == "metrics.json")
    for entry in entries:
        target = out / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()
    (out / INCOMPLETE).unlink(missing_ok=True)


def summary_line(metrics: dict[str, Any], out: Path) -> str:
    t, overall = metrics["train"], metrics["eval"].get("overall")
    held_out = (
        f"held-out reward accuracy {overall['reward_accuracy']:.3f} on {overall['pairs']} pairs"
        if overall
        else "no held-out pairs"
    )
    return (
        f"Done: {t['pairs']} pairs, {t['steps']} steps, loss {t['first_loss']:.4f} -> {t['last_loss']:.4f}, "
        f"{held_out}, {t['runtime_s']:.0f} s training, peak RSS {metrics['memory']['peak_rss_mb']:.0f} MB. "
        f"Adapter: {out}"
    )


if __name__ == "__main__":
    main()
