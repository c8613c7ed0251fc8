"""TRL's DPOTrainer with a leaner step: packed pairs and reference log-probs computed once.

What is optimised does not change (TRL's loss types, ported to per-pair log-prob sums in
``dpo_recipe.training.losses``, on TRL's own tokenization and truncation; tests/test_trainer.py checks
loss, LoRA gradients and logged rewards of each against ``DPOTrainer`` on the same batch). What
changes is how much work a step does:

- each pair is one packed row (``dpo_recipe.training.packing``): the prompt is computed once, nothing is
  padded, and only completion positions go through the LM head;
- the reference log-probs (the base model with the adapter off) are computed once, before
  training, forward-only (``packing.score_packed``, the pass the held-out evaluation runs too:
  packed rows stacked up to a token budget, the LM head on scored positions only), and kept in
  ``base_cache`` under a key made of the base weights, the tokenized pairs, max_length and
  precision, so a resume, a re-run or a sweep skips them.

The reference-free objectives (``losses.REFERENCE_FREE_LOSSES``: SimPO and ORPO, which TRL trains
with its experimental CPO / ORPO trainers, not DPOTrainer) train on this path only: no reference
pass runs and no reference cache is written; the loss reads the policy's packed sums and token
counts (and, for ORPO's NLL, its prompt tokens' log-probs).

An objective this path does not compute (another f-divergence, length desensitisation, WPO
weighting, a reference that syncs with the policy) is refused while packing is on
(``check_packable``; its error says to set ``training.packing: false`` and train it with plain
``DPOTrainer``). A model or launch the packed forward cannot run on (an attention kernel without
block masks, a forward without ``logits_to_keep``, DeepSpeed ZeRO-3) trains with plain
``DPOTrainer``, and ``packing_limitation`` says why. ``supports_packing`` is both checks at once.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from trl import DPOTrainer

from dpo_recipe.config.vocabulary import is_reference_free, mixing_problem
from dpo_recipe.errors import RecipeError
from dpo_recipe.training.base_cache import BaseCache
from dpo_recipe.training.callbacks import (
    LOGPS_CHOSEN,
    LOGPS_REJECTED,
    REWARD_ACCURACY,
    REWARD_CHOSEN,
    REWARD_MARGIN,
    REWARD_REJECTED,
)
from dpo_recipe.training.losses import LOSSES, PairLogps, chosen_nll, preference_loss
from dpo_recipe.training.packing import (
    BLOCK_MASK_ATTENTION,
    PAIR_COLUMNS,
    SCORING_TOKENS,
    PackedPairs,
    attention_implementation,
    longest_first,
    pack_pairs,
    score_packed,
    segment_logps,
    truncated,
)

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
# TRL loss types the packed step computes, each from the summed completion log-probs (and token
# counts) of a pair: every loss of TRL's DPOTrainer, the table in dpo_recipe.training.losses. TRL's RPO,
# for one, is ["sigmoid", "sft"] with loss_weights [1, alpha]: the NLL of the chosen answers keeps
# a base model writing whole answers while DPO ranks them. Also the reference-free simpo and orpo,
# which DPOTrainer does not compute: they train on this path only.
PACKED_LOSSES = tuple(LOSSES)


def unpackable_settings(args: Any) -> list[str]:
    """The objective settings in ``args`` (a DPOConfig) the packed step does not compute; empty if none."""
    found = [f"loss_type {name!r}" for name in args.loss_type if name not in PACKED_LOSSES]
    if args.f_divergence_type != "reverse_kl":
        found.append(f"f_divergence_type {args.f_divergence_type!r}")
    if args.ld_alpha is not None:
        found.append("ld_alpha (length desensitisation)")
    if args.use_weighting:
        found.append("use_weighting (WPO weights need per-token probabilities the packed step does not keep)")
    if args.sync_ref_model:  # the reference log-probs are computed once, before training
        found.append("sync_ref_model (a reference that moves during training)")
    return found


def check_packable(args: Any) -> None:
    """Refuse, saying the fix, an objective the packed step does not compute: the user chose it, so no fallback."""
    found = unpackable_settings(args)
    if found:
        raise RecipeError(
            f"training.packing is true, but the packed trainer does not compute {'; '.join(found)}. "
            "Set training.packing: false to train it with plain DPOTrainer."
        )


def packing_limitation(model: Any, max_length: int | None = None) -> str | None:
    """Why the packed forward cannot run on ``model`` (or this launch, or sequences of ``max_length``),
    or None when it can."""
    import inspect

    from transformers.integrations import is_deepspeed_zero3_enabled

    # the block mask replaces the model's own masks, sliding windows included: exact only within the window
    window = getattr(model.config.get_text_config(), "sliding_window", None)
    if window and (max_length is None or max_length > window):
        return (
            f"its sliding-window attention ({window} tokens) is not applied inside a packed row, so sequences "
            f"longer than the window (max_length {max_length}) would see past it; set training.max_length <= {window}"
        )
    if is_deepspeed_zero3_enabled():
        return "DeepSpeed ZeRO-3 shards the weights before the reference pass could run"
    # a PeftModel (lora.train_init_adapter hands one over) passes its keyword arguments on to the model it wraps
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "logits_to_keep" not in inspect.signature(type(inner).forward).parameters:
        return f"{type(inner).__name__}.forward takes no logits_to_keep"
    attention = attention_implementation(model)
    if attention not in BLOCK_MASK_ATTENTION:  # flash-attention kernels take no block masks
        return f"attention {attention!r} takes no block mask (load the model with attn_implementation='sdpa')"
    return None


def supports_packing(model: Any, args: Any) -> bool:
    """Whether the packed path computes exactly what DPOTrainer would for this model and config."""
    return not unpackable_settings(args) and packing_limitation(model, args.max_length) is None


def drop_reference_copy(model: Any) -> None:
    """Remove the frozen ``"ref"`` copy TRL makes of an adapter trained further, so that the reference is the bare
    base with adapters off (``lora.init_adapter_reference: base``: on-policy rounds' first model)."""
    if "ref" in model.peft_config:
        model.delete_adapter("ref")


class PackedCollator:
    """Batches of tokenized pairs → one packed row, with the cached reference log-probs (if any)."""

    def __init__(self, max_length: int | None, score_prompts: bool = False) -> None:
        self.max_length = max_length
        self.score_prompts = score_prompts  # ORPO's NLL reads the prompt tokens too

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = vars(pack_pairs(examples, self.max_length, self.score_prompts))
        if REF_COLUMNS[0] in examples[0]:
            for column in REF_COLUMNS:
                batch[column] = torch.tensor([example[column] for example in examples])
        return batch


class PackedDPOTrainer(DPOTrainer):
    """DPOTrainer for LoRA adapters with packed rows and reference log-probs precomputed and cached on disk.

    With a reference-free ``loss_type`` (simpo, orpo) there is no reference pass; ``simpo_gamma`` and
    ``cpo_alpha`` are TRL's ``CPOConfig`` fields of the same names (DPOConfig has none), read by simpo.
    """

    def __init__(
        self,
        *args: Any,
        base_cache: BaseCache | None = None,
        token_learning_rate: float | None = None,
        simpo_gamma: float = 0.5,
        cpo_alpha: float = 0.0,
        reference_is_base: bool = False,
        **kwargs: Any,
    ) -> None:
        dpo_args = kwargs["args"]
        loss_types = [dpo_args.loss_type] if isinstance(dpo_args.loss_type, str) else list(dpo_args.loss_type)
        problem = mixing_problem(loss_types)
        if problem:
            raise ValueError(problem + ".")
        self.reference_free = is_reference_free(loss_types)
        self.token_learning_rate = token_learning_rate
        kwargs.setdefault("data_collator", PackedCollator(dpo_args.max_length, score_prompts="orpo" in loss_types))
        super().__init__(*args, **kwargs)
        if not hasattr(self.model, "peft_config"):
            raise ValueError("PackedDPOTrainer trains LoRA adapters: pass peft_config or a PeftModel.")
        if reference_is_base:
            drop_reference_copy(self.model)
        self.base_cache = base_cache or BaseCache(None)
        self.reference_free_settings = SimpleNamespace(
            beta=self.args.beta, label_smoothing=self.args.label_smoothing, simpo_gamma=simpo_gamma, cpo_alpha=cpo_alpha
        )
        if not self.reference_free:  # SimPO and ORPO score the policy alone: no reference pass, no cache file
            self.train_dataset = self._with_reference_logps(self.train_dataset, "train")

    def create_optimizer(self, model: Any = None) -> Any:
        """Transformers' optimizer, with the trained token rows (``lora.trainable_tokens``) in a group of their
        own at ``token_learning_rate``; the schedule scales every group alike."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if not fresh or self.token_learning_rate is None:
            return optimizer
        model = self.model if model is None else model
        rows = [p for n, p in model.named_parameters() if "trainable_tokens_delta" in n and p.requires_grad]
        if rows:
            moved = {id(p) for p in rows}
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in moved]
            optimizer.add_param_group({"params": rows, "lr": self.token_learning_rate, "weight_decay": 0.0})
        return optimizer

    # ---- reference log-probs, once ---------------------------------------------------------------
    def _with_reference_logps(self, dataset: Any, name: str) -> Any:
        if REF_COLUMNS[0] in dataset.column_names:
            return dataset
        examples = [{k: row[k] for k in PAIR_COLUMNS} for row in dataset]
        model = self.accelerator.unwrap_model(self.model)
        with self.accelerator.autocast():  # the key is made in the precision the pass runs in
            key = self.base_cache.key(
                model,
                [truncated(example, self.args.max_length) for example in examples],
                rows=self._reference_rows(),
                tokens=self._reference_tokens(),  # the rows stacked into one forward
                processes=self.accelerator.num_processes,  # each scores every world-th pair: other rows
            )
            cached = self.base_cache.read_logps(key, len(examples))
            if cached is None:
                cached = self._compute_reference(examples, name)
                if self.accelerator.is_main_process:
                    self.base_cache.write_logps(key, cached)
        dataset = dataset.add_column(REF_COLUMNS[0], cached[0].tolist())
        return dataset.add_column(REF_COLUMNS[1], cached[1].tolist())

    def _compute_reference(self, examples: list[dict], name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank scores every world-th pair longest first (even shares), then all gather everything.

        Runs inside the caller's ``accelerator.autocast()``, the precision its cache key records."""
        from accelerate.utils import gather_object

        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = longest_first(examples)[rank::world]
        chosen, rejected = score_packed(
            self.accelerator.unwrap_model(self.model),
            [examples[i] for i in mine],
            self.args.max_length,
            self._reference_rows(),
            policy=False,
            reference=True,
            progress_desc=f"Reference log-probs ({name})" if self.accelerator.is_local_main_process else None,
            token_budget=self._reference_tokens(),
        ).reference
        scores = list(zip(mine, chosen.tolist(), rejected.tolist(), strict=True))
        gathered = sorted(gather_object(scores) if world > 1 else scores)
        return torch.tensor([s[1] for s in gathered]), torch.tensor([s[2] for s in gathered])

    def _reference_rows(self) -> int:
        """Pairs per packed row in the reference pass: ``precompute_ref_batch_size``, else a training step's.

        In bf16 / fp16 a row's length changes the kernels' rounding (a pair's summed log-prob moved by up to
        1.1 nats between one and two pairs a row, measured on SmolLM2-135M), so with one pair a row policy and
        reference agree exactly at step 0 only if the pass packs rows as the steps do."""
        return self.args.precompute_ref_batch_size or self.args.per_device_train_batch_size

    def _reference_tokens(self) -> int | None:
        """The reference pass's token budget (``packing.score_packed``): in bf16 / fp16 none, so that each row
        goes through the model's own forward alone, as a step computes it (the first loss is then ln 2 to the
        bit); in fp32 rows are stacked and the LM head runs on scored positions only (a pair's sums moved by
        5e-7 relative at most against the step's computation on 32 Gemma 3 pairs)."""
        return None if self.args.bf16 or self.args.fp16 else SCORING_TOKENS

    # ---- the step ------------------------------------------------------------------------------------
    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        mode = "train" if self.model.training else "eval"
        ref_chosen, ref_rejected = (inputs.pop(column, None) for column in REF_COLUMNS)
        packed = PackedPairs(**inputs)
        sums = segment_logps(model, packed)  # chosen0, rejected0, chosen1, ..., then prompts if scored
        tokens = torch.bincount(packed.segment, minlength=packed.num_segments)
        pairs = 2 * packed.num_pairs
        prompt = (sums[pairs:], tokens[pairs:]) if packed.scores_prompts else (None, None)
        chosen, rejected = (sums[side:pairs:2] for side in (0, 1))
        logps = PairLogps(chosen, rejected, ref_chosen, ref_rejected, tokens[0:pairs:2], tokens[1:pairs:2], *prompt)
        settings = self.reference_free_settings if self.reference_free else self.args
        loss = preference_loss(self.loss_types, self.loss_weights, logps, settings)
        self._log_rewards(mode, logps)
        return (loss, {}) if return_outputs else loss

    def _log_rewards(self, mode: str, logps: PairLogps) -> None:
        """The reward metrics TRL logs, under the same names, so logs and callbacks read the same.

        For SimPO and ORPO the reward is TRL's CPO / ORPO trainers' beta x mean log-prob per completion
        token (their ``rewards/*``), and ``nll_loss`` is logged where the loss has an NLL term; ``logps/*``
        stay summed log-probs, as for every other loss here (TRL's CPO / ORPO log the means there).
        """
        gather = self.accelerator.gather
        metrics = self._metrics[mode]
        if self.reference_free:
            chosen_rewards = gather(self.beta * logps.chosen_mean().detach())
            rejected_rewards = gather(self.beta * logps.rejected_mean().detach())
            if "orpo" in self.loss_types or self.reference_free_settings.cpo_alpha != 0:
                nll = chosen_nll(logps, with_prompt="orpo" in self.loss_types).detach()
                metrics["nll_loss"].append(gather(nll[None]).mean().item())
        else:
            chosen_rewards = gather(self.beta * logps.chosen_logratios.detach())
            rejected_rewards = gather(self.beta * logps.rejected_logratios.detach())
        metrics[REWARD_CHOSEN].append(chosen_rewards.mean().item())
        metrics[REWARD_REJECTED].append(rejected_rewards.mean().item())
        metrics[REWARD_ACCURACY].append((chosen_rewards > rejected_rewards).float().mean().item())
        metrics[REWARD_MARGIN].append((chosen_rewards - rejected_rewards).mean().item())
        metrics[LOGPS_CHOSEN].append(gather(logps.chosen.detach()).mean().item())
        metrics[LOGPS_REJECTED].append(gather(logps.rejected.detach()).mean().item())
