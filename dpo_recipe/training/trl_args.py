"""The recipe keys that become a TRL config's fields and PEFT ``LoraConfig`` arguments, in one table each.

``trainer_config`` / ``lora_config`` build the trainer's arguments from these tables and the model card
lists the same tables, so the card shows exactly the hyper-parameters the trainer received, under
both names. Each objective (``training.objectives``) names its config class and table: ``DPOConfig``
with ``RECIPE_TO_DPO_CONFIG`` below, the others derived from it in their own modules.
Everything else the config gets is fixed by how dpo-recipe trains (checkpoint layout, logging, no
transformers evaluation loop: ``eval.steps`` is ``training.step_evaluation``'s) or derived from the
hardware (precision flags).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpo_recipe.config.schema import Recipe
from dpo_recipe.training.run_dir import CHECKPOINTS
from dpo_recipe.training.trackers import tracker_settings

# recipe key -> DPOConfig field
RECIPE_TO_DPO_CONFIG: dict[str, str] = {
    "training.num_epochs": "num_train_epochs",
    "training.per_device_batch_size": "per_device_train_batch_size",
    "eval.batch_size": "per_device_eval_batch_size",
    "training.gradient_accumulation_steps": "gradient_accumulation_steps",
    "training.learning_rate": "learning_rate",
    "training.lr_scheduler": "lr_scheduler_type",
    "training.warmup_steps": "warmup_steps",
    "training.max_grad_norm": "max_grad_norm",
    "training.beta": "beta",
    "training.loss_type": "loss_type",
    "training.loss_weights": "loss_weights",
    "training.label_smoothing": "label_smoothing",
    "training.max_length": "max_length",
    "training.activation_checkpointing": "activation_checkpointing",
    "training.disable_dropout": "disable_dropout",
    "training.seed": "seed",
    "training.logging_steps": "logging_steps",
    "training.save_steps": "save_steps",
    "training.save_total_limit": "save_total_limit",
}
LIST_FIELDS = {"training.loss_type"}  # TRL takes a list of losses to mix; a recipe may name just one


# recipe key -> peft.LoraConfig field. lora.trainable_tokens become trainable_token_indices once the
# tokenizer has turned them into ids (dpo_recipe.models.loading.trainable_token_ids).
RECIPE_TO_LORA_CONFIG: dict[str, str] = {
    "lora.r": "r",
    "lora.alpha": "lora_alpha",
    "lora.dropout": "lora_dropout",
    "lora.target_modules": "target_modules",
    "lora.trainable_tokens": "trainable_token_indices",
}


def recipe_value(recipe: Recipe, key: str) -> Any:
    """The value of ``section.name`` in ``recipe``."""
    section, name = key.split(".")
    return getattr(getattr(recipe, section), name)


def mapped(recipe: Recipe, table: dict[str, str]) -> list[tuple[str, str, Any]]:
    """``(recipe key, config field, value)`` for every key of ``table``, in table order."""
    return [(key, field, recipe_value(recipe, key)) for key, field in table.items()]


def mapped_lora(recipe: Recipe) -> list[tuple[str, str, Any]]:
    """``(recipe key, LoraConfig field, value)`` for every mapped LoRA key, in table order."""
    return [(key, field, recipe_value(recipe, key)) for key, field in RECIPE_TO_LORA_CONFIG.items()]


def lora_config(recipe: Recipe, trainable_token_ids: list[int]) -> Any:
    """The adapter the trainer wraps the base in: ``lora.*`` through ``RECIPE_TO_LORA_CONFIG``, with
    ``trainable_token_ids`` (the ids of ``lora.trainable_tokens``) in place of the token strings."""
    from peft import LoraConfig

    fields = {field: value for _, field, value in mapped_lora(recipe)}
    fields["trainable_token_indices"] = trainable_token_ids or None
    return LoraConfig(**fields, task_type="CAUSAL_LM")


def precision_flags(precision: str) -> dict[str, bool]:
    """DPOConfig's ``bf16`` / ``fp16`` / ``use_cpu`` for ``training.precision`` on this machine."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "use_cpu": not cuda}


def trainer_config(recipe: Recipe, out: Path, config_class: type, table: dict[str, str]) -> Any:
    """``config_class`` (a TRL config) from ``table`` and the fixed settings; checkpoints go to ``out/checkpoints``.
    Creating it starts accelerate's process state, so code after this call is rank-aware."""
    fields = {
        field: [value] if key in LIST_FIELDS and isinstance(value, str) else value
        for key, field, value in mapped(recipe, table)
    }
    return config_class(
        output_dir=str(out / CHECKPOINTS),
        **fields,
        logging_first_step=True,
        save_strategy="steps",
        eval_strategy="no",
        **tracker_settings(recipe.training, out),
        dataloader_pin_memory=False,
        ddp_find_unused_parameters=False,
        **precision_flags(recipe.training.precision),
    )
