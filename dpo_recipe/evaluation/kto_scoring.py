"""The held-out report of a ``training.objective: kto`` run: KTO's own numbers on unpaired rows.

A KTO adapter is judged on the rows it did not train on as KTO's loss reads them: each row's reward
beta x (log pi(y|x) - log pi_ref(y|x)), less beta x the batch's KL estimate. A desirable row is right
when that is > 0, an undesirable one when it is < 0 (a tie, as before any training, counts as
wrong). The loss, KL and mean rewards are computed as ``KTOTrainer`` computes its own eval metrics
(its dataset preparation, collator, forwards and reference; batches of
``training.per_device_batch_size``, the size the KL rotation is built for), so they equal
``KTOTrainer.evaluate``'s; the answer checks are the DPO path's (``scoring.checked_answers``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from dpo_recipe.config.schema import EvalSection
from dpo_recipe.data.forms import UNPAIRED_COLUMNS
from dpo_recipe.data.tokens import trainer_rows
from dpo_recipe.evaluation.scoring import checked_answers
from dpo_recipe.training.base_cache import BaseCache
from dpo_recipe.utils.stopwatch import Stopwatch

Rows = list[dict[str, Any]]
REWARD = "kto: beta x (policy - reference) log-prob, less beta x the batch KL estimate"


def score_rows(trainer: Any, model: Any, rows: Rows) -> list[dict[str, Any]]:
    """Per held-out row: label, policy and reference log-probs, the batch's KL estimate, reward and loss, as
    ``KTOTrainer._compute_loss`` computes them (its dataset preparation, collator, forwards and reference).

    Rows are batched in order by ``per_device_train_batch_size``: the KL estimate of a batch is built from its
    own rows' completions, so the batches must be the ones training would form."""
    import datasets
    import torch
    from torch.utils.data import DataLoader

    args = trainer.args
    indexed = [{**r, "row": i} for i, r in enumerate(trainer_rows(rows, UNPAIRED_COLUMNS))]
    prepared = trainer._prepare_dataset(datasets.Dataset.from_list(indexed), trainer.processing_class, args, "eval")
    loader = DataLoader(prepared, batch_size=args.per_device_train_batch_size, collate_fn=trainer.data_collator)
    beta, device = args.beta, trainer.accelerator.device
    order = prepared["row"]
    scored, start = [], 0
    was_training = model.training
    model.eval()
    try:
        for number, batch in enumerate(loader):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
            seq_len = batch["input_ids"].size(1) - 1
            with torch.no_grad(), trainer.accelerator.autocast():
                outputs = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    labels=labels,
                    fused_lm_head=True,
                    use_cache=False,
                )
                policy = outputs.log_probs[:, -seq_len:].sum(-1)
                policy_kl = trainer._compute_kl_logps(model, batch)
            reference, reference_kl = trainer.compute_ref_log_probs(model, batch)
            kl = (policy_kl - reference_kl).mean().clamp(min=0).item()
            for j, label in enumerate(batch["label"].tolist()):
                ratio = (policy[j] - reference[j]).item()
                adjusted = beta * (ratio - kl)
                desirable = bool(label)
                loss = 1 - _sigmoid(adjusted if desirable else -adjusted)
                weight = args.desirable_weight if desirable else args.undesirable_weight
                row = rows[order[start + j]]
                scored.append(
                    {
                        "row": order[start + j],
                        "batch": number,
                        "label": desirable,
                        "policy_logps": policy[j].item(),
                        "reference_logps": reference[j].item(),
                        "kl": kl,
                        "reward": beta * ratio,
                        "kl_adjusted_reward": adjusted,
                        "correct": adjusted > 0 if desirable else adjusted < 0,
                        "loss": weight * loss,
                        **{k: row[k] for k in ("topic", "rejection_type", "domain") if k in row},
                    }
                )
            start += len(batch["label"])
    finally:
        model.train(was_training)
    return scored


def _sigmoid(x: float) -> float:
    """The logistic function without overflow for large negative ``x``."""
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(scored: list[dict[str, Any]], beta: float) -> dict[str, Any]:
    """The held-out numbers: KL-adjusted reward accuracy (overall, desirable, undesirable), KTO's loss and KL as
    ``KTOTrainer.evaluate`` reports them (means of batch means), mean rewards and their margin."""
    batches: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in scored:
        batches[s["batch"]].append(s)
    good = [s for s in scored if s["label"]]
    bad = [s for s in scored if not s["label"]]
    chosen, rejected = _mean([s["reward"] for s in good]), _mean([s["reward"] for s in bad])
    overall = {
        "rows": len(scored),
        "desirable_rows": len(good),
        "undesirable_rows": len(bad),
        "reward_accuracy": _mean([float(s["correct"]) for s in scored]),
        "desirable_accuracy": _mean([float(s["correct"]) for s in good]),
        "undesirable_accuracy": _mean([float(s["correct"]) for s in bad]),
        "loss": _mean([_mean([s["loss"] for s in batch]) for batch in batches.values()]),
        "kl": _mean([batch[0]["kl"] for batch in batches.values()]),
        "chosen_reward": chosen,
        "rejected_reward": rejected,
        "reward_margin": chosen - rejected if chosen is not None and rejected is not None else None,
    }
    report: dict[str, Any] = {"objective": "kto", "beta": beta, "reward": REWARD, "overall": overall}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in bad:
        if "rejection_type" in s:
            groups[str(s["rejection_type"])].append(s)
    if groups:  # rows split from the builtin pairs: which kinds of wrong answer the adapter now rejects
        report["undesirable_by_rejection_type"] = {
            name: {"rows": len(group), "accuracy": _mean([float(s["correct"]) for s in group])}
            for name, group in sorted(groups.items())
        }
    return report


def evaluate_kto_adapter(
    trainer: Any,
    tokenizer: Any,
    rows: Rows,
    *,
    settings: EvalSection,
    cache: BaseCache | None = None,
    stopwatch: Stopwatch | None = None,
) -> dict[str, Any] | None:
    """The held-out report of the adapter ``trainer`` (a ``KTOTrainer``) trained, on the main process (the others
    return None): ``summarise``'s numbers, each row's (``per_row``) and the answer checks of the DPO path.

    Scored through the trainer, not the model alone: TRL's dataset preparation, collator and reference pass are
    what make the numbers KTOTrainer's own."""
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return None
    stopwatch = stopwatch or Stopwatch()
    model = trainer.accelerator.unwrap_model(trainer.model)
    with stopwatch.phase("held-out scoring"):
        scored = score_rows(trainer, model, rows)
    report = summarise(scored, trainer.args.beta)
    report["per_row"] = scored
    if settings.num_generations:
        with stopwatch.phase("answers"), trainer.accelerator.autocast():
            report["generations"], report["answer_checks"] = checked_answers(model, tokenizer, rows, settings, cache)
    return report
