"""dpo_recipe.training.trl_args: each mapped recipe key reaches DPOConfig / LoraConfig under its mapped name."""

from __future__ import annotations

from pathlib import Path

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.config.schema import TrainingSection
from dpo_recipe.training.objectives import objective_for
from dpo_recipe.training.objectives.dpo import RECIPE_TO_OBJECTIVE, objective_kwargs
from dpo_recipe.training.objectives.kto import RECIPE_TO_KTO_CONFIG
from dpo_recipe.training.trl_args import RECIPE_TO_DPO_CONFIG, RECIPE_TO_LORA_CONFIG, lora_config, precision_flags


def dpo_config(recipe, out: Path):
    return objective_for(recipe).trainer_args(recipe, out)


def mapped_hyperparameters(recipe):
    return objective_for(recipe).hyperparameters(recipe)


def test_every_mapped_key_arrives_in_dpo_config(tmp_path: Path) -> None:
    settings = [
        "training.beta=0.3",
        "training.learning_rate=0.002",
        "training.gradient_accumulation_steps=3",
        "training.lr_scheduler=cosine",
        "training.loss_type=ipo",
        "training.label_smoothing=0.2",
        "training.save_steps=7",
        "eval.batch_size=5",
    ]
    recipe = load_recipe("tiny-ja", settings)
    args = dpo_config(recipe, tmp_path)
    for key, field, value in mapped_hyperparameters(recipe):
        received = getattr(args, field)
        received = getattr(received, "value", received)  # lr_scheduler_type becomes a SchedulerType enum
        assert received == ([value] if field == "loss_type" else value), key
    assert (args.beta, args.learning_rate, args.gradient_accumulation_steps) == (0.3, 0.002, 3)
    assert args.loss_type == ["ipo"] and args.save_steps == 7 and args.per_device_eval_batch_size == 5
    assert args.label_smoothing == 0.2
    assert args.lr_scheduler_type.value == "cosine"
    assert args.output_dir == str(tmp_path / "checkpoints") and args.use_cpu and not args.bf16


def test_the_table_covers_every_training_key_but_those_handled_elsewhere() -> None:
    tables = (RECIPE_TO_DPO_CONFIG, RECIPE_TO_KTO_CONFIG)  # training.objective kto: KTOConfig's
    mapped = {key.split(".")[1] for table in tables for key in table if key.startswith("training.")}
    # run_dir, precision_flags; CPOConfig's SimPO fields go to PackedDPOTrainer (objective_kwargs);
    # early stopping is training.step_evaluation's, report_to training.trackers'
    handled_elsewhere = {"output_dir", "precision", "tensorboard", "report_to", "packing", "early_stopping"}
    handled_elsewhere |= {key.split(".")[1] for key in RECIPE_TO_OBJECTIVE}
    assert mapped | handled_elsewhere == set(TrainingSection.__dataclass_fields__)
    assert not mapped & handled_elsewhere


def test_objective_kwargs_are_the_cpo_config_names() -> None:
    recipe = load_recipe("tiny-ja", ["training.loss_type=simpo", "training.simpo_gamma=1.0", "training.cpo_alpha=0.5"])
    assert objective_kwargs(recipe) == {"simpo_gamma": 1.0, "cpo_alpha": 0.5}
    from trl.experimental.cpo import CPOConfig

    assert set(RECIPE_TO_OBJECTIVE.values()) <= set(CPOConfig.__dataclass_fields__)


def test_precision_flags_on_a_cpu() -> None:
    assert precision_flags("auto") == {"bf16": False, "fp16": False, "use_cpu": True}
    assert precision_flags("bf16") == {"bf16": True, "fp16": False, "use_cpu": True}


def test_every_lora_key_arrives_in_lora_config() -> None:
    recipe = load_recipe("tiny-ja", ["lora.r=4", "lora.alpha=12", "lora.dropout=0.1", "lora.target_modules=[q_proj]"])
    config = lora_config(recipe, [5, 7])
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 12, 0.1)
    assert config.target_modules == {"q_proj"} and config.trainable_token_indices == [5, 7]
    assert config.task_type == "CAUSAL_LM"
    assert lora_config(recipe, []).trainable_token_indices is None  # no token rows: PEFT adds no wrapper
    from dpo_recipe.config.schema import LoraSection

    # an optimizer group's lr; the adapter's own; which reference it trains against
    handled_elsewhere = {"token_learning_rate", "train_init_adapter", "init_adapter_reference"}
    mapped = {key.split(".")[1] for key in RECIPE_TO_LORA_CONFIG}
    assert mapped | handled_elsewhere == set(LoraSection.__dataclass_fields__)


def test_kto_objective_gets_a_ktoconfig_without_the_pair_losses(tmp_path: Path) -> None:
    from trl import KTOConfig

    settings = ["training.objective=kto", "training.undesirable_weight=1.4"]
    recipe = load_recipe("tiny-ja", [*settings, "training.beta=0.2"])
    args = dpo_config(recipe, tmp_path)
    assert isinstance(args, KTOConfig) and args.loss_type == "kto" and args.train_sampling_strategy == "sequential"
    assert (args.desirable_weight, args.undesirable_weight, args.beta) == (1.0, 1.4, 0.2)
    fields = [field for _, field, _ in mapped_hyperparameters(recipe)]
    assert "desirable_weight" in fields and "label_smoothing" not in fields and "loss_weights" not in fields
    assert args.output_dir == str(tmp_path / "checkpoints") and args.use_cpu and not args.bf16
