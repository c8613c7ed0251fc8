"""The recipe keys that become TRL ``DPOConfig`` (``KTOConfig`` under ``training.objective: kto``) and PEFT
``LoraConfig`` arguments, in one table each.

``dpo_config`` / ``lora_config`` build the trainer's arguments from these tables and the model card
lists the same tables, so the card shows exactly the hyper-parameters the trainer received, under
both names.
Everything else ``DPOConfig`` gets is fixed by how dpo-recipe trains (checkpoint layout, logging,
no in-loop evaluation) or derived from the hardware (precision flags).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dpo_recipe.config.schema import Recipe
from dpo_recipe.training.run_dir import CHECKPOINTS

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
# recipe key -> KTOConfig field (training.objective kto): DPOConfig's, less its pair losses, plus KTO's weights
DPO_ONLY_FIELDS = ("loss_type", "loss_weights", "label_smoothing")
RECIPE_TO_KTO_CONFIG: dict[str, str] = {
    **{key: field for key, field in RECIPE_TO_DPO_CONFIG.items() if field not in DPO_ONLY_FIELDS},
    "training.objective": "loss_type",
    "training.desirable_weight": "desirable_weight",
    "training.undesirable_weight": "undesirable_weight",
}
LIST_FIELDS = {"loss_type"}  # TRL takes a list of losses to mix; a recipe may name just one
# recipe key -> the TRL CPOConfig field of the same meaning, which DPOConfig lacks: read by the
# reference-free losses (dpo_recipe.training.losses.simpo), passed to PackedDPOTrainer as keyword arguments.
RECIPE_TO_OBJECTIVE: dict[str, str] = {
    "training.simpo_gamma": "simpo_gamma",
    "training.cpo_alpha": "cpo_alpha",
}


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


def mapped_hyperparameters(recipe: Recipe) -> list[tuple[str, str, Any]]:
    """``(recipe key, DPOConfig field, value)`` for every mapped key, in table order (``KTOConfig``'s fields
    under ``training.objective: kto``)."""
    table = RECIPE_TO_KTO_CONFIG if recipe.training.objective == "kto" else RECIPE_TO_DPO_CONFIG
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


def objective_kwargs(recipe: Recipe) -> dict[str, Any]:
    """``PackedDPOTrainer``'s keyword arguments for the reference-free losses (``RECIPE_TO_OBJECTIVE``)."""
    return {field: recipe_value(recipe, key) for key, field in RECIPE_TO_OBJECTIVE.items()}


def precision_flags(precision: str) -> dict[str, bool]:
    """DPOConfig's ``bf16`` / ``fp16`` / ``use_cpu`` for ``training.precision`` on this machine."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "use_cpu": not cuda}


def dpo_config(recipe: Recipe, out: Path) -> Any:
    """The trainer's arguments; checkpoints go to ``out/checkpoints``. Creating it starts accelerate's
    process state, so code after this call is rank-aware.

    ``training.objective: kto`` gets a ``KTOConfig`` from ``RECIPE_TO_KTO_CONFIG`` and the same fixed
    settings; TRL's ``train_sampling_strategy="sequential"`` stays, as the rows are shuffled once
    (``dpo_recipe.training.kto``)."""
    from trl import DPOConfig, KTOConfig

    t = recipe.training
    config_class = KTOConfig if t.objective == "kto" else DPOConfig
    if t.tensorboard:  # transformers 5 reads the TensorBoard directory from the environment only
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "runs")
    mapped = {  # KTOConfig's loss_type is the one name "kto", not a list
        field: [value] if field in LIST_FIELDS and isinstance(value, str) and t.objective == "dpo" else value
        for _, field, value in mapped_hyperparameters(recipe)
    }
    return config_class(
        output_dir=str(out / CHECKPOINTS),
        **mapped,
        logging_first_step=True,
        save_strategy="steps",
        eval_strategy="no",
        report_to=["tensorboard"] if t.tensorboard else [],
        dataloader_pin_memory=False,
        ddp_find_unused_parameters=False,
        **precision_flags(t.precision),
    )
