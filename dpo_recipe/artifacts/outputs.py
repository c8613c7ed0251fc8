"""What a finished training run leaves behind: metrics, the adapter and its files, and a one-line summary.

Everything is written into a staging directory and moved into the output directory at the end,
``metrics.json`` last, so a run that dies while saving never looks finished. The card is rendered
from the same metrics that ``metrics.json`` holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
from pathlib import Path
from typing import Any

from dpo_recipe.config.schema import Recipe
from dpo_recipe.training.callbacks import EVAL_PREFIX, REWARD_ACCURACY, REWARD_KEYS, held_out_logs
from dpo_recipe.training.run_dir import mark_finished
from dpo_recipe.training.run_totals import run_totals, whole_run_loss


def gather_adapter_digests(trainer: Any) -> list[str]:
    """One digest of the LoRA weights per rank (every rank must call this): DDP must keep them identical."""
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
    report: dict[str, Any] | None,
    n_train: int,
    digests: list[str],
) -> dict[str, Any]:
    """What ``metrics.json`` holds: training curve ends, held-out report, memory, ranks, versions.

    The training figures are the whole run's, not the last ``train()`` call's (``run_totals``): after
    ``--resume`` the loss is the mean over every step, the time the sum of the parts (each part listed,
    with the steps it resumed at) and the throughput the pairs over that total."""
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    last_train = next((h for h in reversed(history) if REWARD_ACCURACY in h), {})
    totals = run_totals(trainer).totals()
    pairs_seen = n_train * recipe.training.num_epochs
    loss = whole_run_loss(history)
    return {
        "train": {
            "pairs": n_train,
            "steps": trainer.state.global_step,
            "loss": None if loss is None else round(loss, 6),
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            **{k: last_train[k] for k in REWARD_KEYS if k in last_train},
            **totals,
            "pairs_per_s": round(pairs_seen / totals["runtime_s"], 4) if totals["runtime_s"] else None,
        },
        "eval": {k: v for k, v in (report or {}).items() if k not in ("per_pair", "per_row")},
        "memory": _peak_memory_mb(),
        "distributed": {
            "world_size": trainer.args.world_size,
            "adapter_digest_by_rank": digests,
            "ranks_in_sync": len(set(digests)) == 1,
        },
        "versions": _versions(),
    }


def training_chain(
    recipe: Recipe, metrics: dict[str, Any], recipe_name: str, unit: str, held_out: str | None
) -> list[dict[str, Any]]:
    """The runs this adapter stands on, first to last, then this one: ``metrics.json``'s ``chain`` and the card's
    table (base → stage 1 → stage 2). A start that is a dpo-recipe run brings its own chain (its
    ``metrics.json``); any other adapter is one row naming it."""
    train = metrics["train"]
    here = {
        "adapter": recipe.training.output_dir,
        "recipe": recipe_name,
        "objective": train.get("objective"),
        "data": ", ".join(str(s["source"]) for s in metrics.get("data", {}).get("sources", [])) or None,
        "steps": train.get("steps"),
        "trained_on": f"{train.get(unit)} {unit}",
        "held_out": held_out,
        "continues_its_start": recipe.lora.train_init_adapter,
    }
    if not recipe.model.init_adapter:
        return [here]
    from dpo_recipe.models.adapters import init_adapter_dir

    start = init_adapter_dir(recipe.model.init_adapter) / "metrics.json"
    try:
        before = json.loads(start.read_text(encoding="utf-8"))["chain"]
    except (OSError, ValueError, KeyError, TypeError):  # not a dpo-recipe run, or one from before chains
        before = [{"adapter": recipe.model.init_adapter, "recipe": None, "objective": None, "data": None}]
    return [*before, here]


def save_artifacts(
    recipe: Recipe,
    trainer: Any,
    tokenizer: Any,
    metrics: dict[str, Any],
    report: dict[str, Any] | None,
    out: Path,
    *,
    recipe_name: str,
    command: str,
) -> None:
    """Write everything into a staging dir, then move it into ``out`` with metrics.json last.

    ``recipe_name`` and ``command`` (the command that repeats the run) go into the model card."""
    from dpo_recipe.artifacts.cards import render_model_card
    from dpo_recipe.evaluation.plots import plot_report, plot_training
    from dpo_recipe.training.objectives import objective_for

    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    trainer.model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    history = list(trainer.state.log_history)
    if report:
        step = metrics["train"].get("early_stopping", {}).get("adapter_step", trainer.state.global_step)
        if not any(EVAL_PREFIX + "loss" in h and h["step"] == step for h in history):  # eval.steps measured it
            history.append({"step": step, **held_out_logs(report["overall"])})  # the held-out point at the end
        (staging / "eval_report.json").write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    plots = plot_training(history, staging / "plots", objective_for(recipe).training_loss_apart(recipe))
    plots += plot_report(report or {}, staging / "plots")
    card = render_model_card(
        recipe, metrics, recipe_name=recipe_name, command=command, plots=[str(p.relative_to(staging)) for p in plots]
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
    mark_finished(out)


def summary_line(metrics: dict[str, Any], out: Path, unit: str = "pairs", held_out: str | None = None) -> str:
    """The one line printed when training is done; ``unit`` is what the objective counts and ``held_out`` its
    held-out numbers (``Objective.unit`` / ``summary_numbers``; by default reward accuracy)."""
    t, overall = metrics["train"], metrics["eval"].get("overall")
    if not overall:
        held_out = f"no held-out {unit}"
    elif held_out is None:
        held_out = f"held-out reward accuracy {overall['reward_accuracy']:.3f} on {overall[unit]} {unit}"
    return (
        f"Done: {t[unit]} {unit}, {t['steps']} steps, loss {t['first_loss']:.4f} -> {t['last_loss']:.4f}, "
        f"{held_out}, {t['runtime_s']:.0f} s training{_parts(t)}, peak RSS {metrics['memory']['peak_rss_mb']:.0f} MB. "
        f"Adapter: {out}"
    )


def _parts(train: dict[str, Any]) -> str:
    """`` in 2 parts (resumed at step 8)`` for a resumed run, else nothing."""
    if "runtime_parts_s" not in train:
        return ""
    steps = ", ".join(str(step) for step in train["resumed_at_steps"])
    return f" in {len(train['runtime_parts_s'])} parts (resumed at step {steps})"
