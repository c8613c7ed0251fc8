"""Pairs trained with DPO and every loss type TRL 1.16 has: ``training.objective: dpo`` (the default).

Training runs on the packed path (``training.trainer.PackedDPOTrainer``: one packed row a pair, reference
log-probs computed once and kept in the base cache) wherever it can; a model or launch the packed forward
cannot run on trains with TRL's plain ``DPOTrainer`` (padded pairs, the same loss), and says why. The
reference-free losses (SimPO, ORPO) have no such fallback: DPOTrainer does not compute them. The held-out
report is ``evaluation.scoring``'s: reward accuracy with its interval, margins, base → tuned.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpo_recipe.config.schema import DataSection, Recipe
from dpo_recipe.config.vocabulary import is_reference_free
from dpo_recipe.data.sources import converted_source, load_preference_splits, provenance
from dpo_recipe.data.tokens import trainer_rows
from dpo_recipe.errors import RecipeError
from dpo_recipe.evaluation.report import dpo_lines
from dpo_recipe.training.objectives.base import Inputs, Objective, Rows, recipe_lora, with_run_callbacks
from dpo_recipe.training.preflight import (
    checked_architecture,
    dry_run_report,
    measure_tokens,
    refuse_emptied_completions,
    refuse_tools_the_template_ignores,
)
from dpo_recipe.training.trl_args import RECIPE_TO_DPO_CONFIG, recipe_value
from dpo_recipe.utils.stopwatch import Stopwatch

if TYPE_CHECKING:
    from dpo_recipe.training.base_cache import BaseCache

# recipe key -> the TRL CPOConfig field of the same meaning, which DPOConfig lacks: read by the
# reference-free losses (dpo_recipe.training.losses.simpo), passed to PackedDPOTrainer as keyword arguments.
RECIPE_TO_OBJECTIVE: dict[str, str] = {
    "training.simpo_gamma": "simpo_gamma",
    "training.cpo_alpha": "cpo_alpha",
}


def objective_kwargs(recipe: Recipe) -> dict[str, Any]:
    """``PackedDPOTrainer``'s keyword arguments for the reference-free losses (``RECIPE_TO_OBJECTIVE``)."""
    return {field: recipe_value(recipe, key) for key, field in RECIPE_TO_OBJECTIVE.items()}


def _losses(recipe: Recipe) -> list[str]:
    losses = recipe.training.loss_type
    return [losses] if isinstance(losses, str) else list(losses)


class DPO(Objective):
    name = "dpo"
    unit = "pairs"
    title = "Preference alignment (DPO)"
    config_table = RECIPE_TO_DPO_CONFIG
    card_intro = (
        "aligned with\n**DPO** (Direct Preference Optimization, [arXiv:2305.18290](https://arxiv.org/abs/2305.18290))"
        "\non Japanese preference pairs"
    )
    card_intro_ja = "日本語の選好データで DPO 学習した LoRA アダプタです。"
    held_out_explained = (
        "Pairs from topics never seen in training. Reward accuracy: share of pairs whose implicit DPO\n"
        'reward β·(log π(y|x) − log π_ref(y|x)) is higher for `chosen` (ties count as wrong). "LL acc."\n'
        "is the model's own log-likelihood preference, defined for the base model too."
    )

    def config_class(self) -> type:
        from trl import DPOConfig

        return DPOConfig

    def hyperparameters(self, recipe: Recipe) -> list[tuple[str, str, Any]]:
        """DPOConfig's table, and CPOConfig's fields where a reference-free loss (SimPO / ORPO) reads them."""
        rows = super().hyperparameters(recipe)
        if is_reference_free(_losses(recipe)):
            rows += [
                (key, f"CPOConfig {field} (PackedDPOTrainer)", recipe_value(recipe, key))
                for key, field in RECIPE_TO_OBJECTIVE.items()
            ]
        return rows

    def load_inputs(self, recipe: Recipe, *, report: bool) -> Inputs:
        """Pairs, refused before training where ``training.max_length`` would cut an answer away entirely."""
        conversion = converted_source(recipe.data)
        train_rows, eval_rows, lint_report = load_preference_splits(recipe.data, conversion=conversion)
        tokenizer, skeleton = checked_architecture(recipe)
        refuse_tools_the_template_ignores(train_rows + eval_rows, tokenizer, recipe)
        tokens = measure_tokens(train_rows, tokenizer, recipe.training.max_length)
        if report:
            print(dry_run_report(recipe, tokens, skeleton, len(lint_report.findings), lint_report.notes))
        refuse_emptied_completions(tokens, recipe.training.max_length)
        sources = provenance(recipe.data, conversion, train_rows, eval_rows)
        return train_rows, eval_rows, tokenizer, lint_report.notes, sources

    def build_trainer(
        self,
        recipe: Recipe,
        args: Any,
        model: Any,
        tokenizer: Any,
        train_rows: Rows,
        out: Path,
        cache: BaseCache | None = None,
    ) -> Any:
        """The packed trainer (plain TRL where packing cannot run), its reference log-probs from ``cache``."""
        import datasets
        from trl import DPOTrainer

        from dpo_recipe.models.hardware import keep_freed_memory_in_heap
        from dpo_recipe.training.trainer import (
            PackedDPOTrainer,
            check_packable,
            drop_reference_copy,
            packing_limitation,
        )

        trainer_class, extra = DPOTrainer, {}
        base_reference = recipe.lora.train_init_adapter and recipe.lora.init_adapter_reference == "base"
        reference_free = is_reference_free(args.loss_type)
        if reference_free and not recipe.training.packing:  # recipe validation says so first; a changed args may not
            raise RecipeError(
                f"training.loss_type {args.loss_type}: trains on the packed path only; set training.packing: true."
            )
        if recipe.training.packing:
            check_packable(args)  # an objective the user chose never silently trains some other way
            limitation = packing_limitation(model, args.max_length)
            if limitation is None:
                trainer_class = PackedDPOTrainer
                extra = {
                    "base_cache": cache,
                    "token_learning_rate": recipe.lora.token_learning_rate,
                    "reference_is_base": base_reference,
                    **objective_kwargs(recipe),
                }
            elif reference_free:  # DPOTrainer does not compute SimPO or ORPO: no fallback
                raise RecipeError(
                    f"training.loss_type {args.loss_type}: trains on the packed path only, and {limitation}."
                )
            elif args.process_index == 0:
                print(f"training.packing: {limitation}; training with plain DPOTrainer (padded pairs, the same loss).")
        tied = model.config.get_text_config().tie_word_embeddings
        if trainer_class is DPOTrainer and recipe.lora.trainable_tokens and tied:
            raise RecipeError(
                "lora.trainable_tokens: on a model with tied embeddings these rows train only on the packed path "
                "(TRL's DPOTrainer reads lm_head.bias, which PEFT's wrapper of a tied LM head lacks). Set "
                "training.packing: true, or remove lora.trainable_tokens."
            )
        if trainer_class is DPOTrainer:  # padded batches re-allocate big buffers every step (models.hardware)
            keep_freed_memory_in_heap()
        trainer = trainer_class(
            model=model,
            ref_model=None,  # with a PEFT adapter the reference is the base with the adapter disabled
            args=args,
            train_dataset=datasets.Dataset.from_list(trainer_rows(train_rows, ("prompt", "chosen", "rejected"))),
            processing_class=tokenizer,
            peft_config=recipe_lora(recipe, tokenizer),
            **extra,
        )
        if base_reference and trainer_class is DPOTrainer:  # TRL reads its reference lazily: the copy can go now
            drop_reference_copy(trainer.model)
        return with_run_callbacks(trainer, out)

    def training_loss_apart(self, recipe: Recipe) -> str | None:
        """The held-out loss is DPO's sigmoid loss of the reward margin (``dpo_preference``): the training loss is
        that quantity for ``sigmoid`` alone, and another for any other loss type or mix (RPO's adds the NLL of
        chosen, several nats)."""
        names = _losses(recipe)
        if names == ["sigmoid"] and recipe.training.loss_weights in (None, [1.0]):
            return None
        return " + ".join(names)

    def held_out_rows(self, data: DataSection, recipe: Recipe) -> Rows:
        return load_preference_splits(data)[1]

    def held_out_report(
        self, trainer: Any, tokenizer: Any, rows: Rows, recipe: Recipe, cache: BaseCache, stopwatch: Stopwatch
    ) -> dict[str, Any] | None:
        """Every rank scores a shard, inside the trainer's autocast: the unwrapped model keeps accelerate's
        mixed-precision forward, and the cache keys must record the precision the numbers come from."""
        accelerator = trainer.accelerator
        with accelerator.autocast():
            return self.eval_report(recipe, accelerator.unwrap_model(trainer.model), tokenizer, rows, cache, stopwatch)

    def eval_report(
        self, recipe: Recipe, model: Any, tokenizer: Any, rows: Rows, cache: BaseCache, stopwatch: Stopwatch
    ) -> dict[str, Any] | None:
        from dpo_recipe.evaluation.scoring import evaluate_adapter

        return evaluate_adapter(
            model,
            tokenizer,
            rows,
            beta=recipe.training.beta,
            max_length=recipe.training.max_length,
            settings=recipe.eval,
            loss_type=recipe.training.loss_type,
            cache=cache,
            stopwatch=stopwatch,
        )

    def step_evaluator(
        self, trainer: Any, tokenizer: Any, rows: Rows, recipe: Recipe, cache: BaseCache
    ) -> Callable[[], dict[str, Any]]:
        """``evaluation.scoring.StepScorer`` on the adapter in training, inside the trainer's autocast (as
        ``held_out_report``): the numbers ``dpo-recipe eval`` gives that step's adapter."""
        from dpo_recipe.evaluation.scoring import StepScorer

        scorer = StepScorer(
            tokenizer,
            rows,
            beta=recipe.training.beta,
            max_length=recipe.training.max_length,
            batch_size=recipe.eval.batch_size,
            loss_type=recipe.training.loss_type,
            cache=cache,
        )

        def evaluate() -> dict[str, Any]:
            with trainer.accelerator.autocast():
                return scorer(trainer.accelerator.unwrap_model(trainer.model))

        return evaluate

    def report_lines(self, report: dict[str, Any]) -> list[str]:
        return dpo_lines(report)

    def held_out_line(self, report: dict[str, Any]) -> str:
        overall = report["overall"]
        low, high = overall["reward_accuracy_ci95"]
        return (
            f"held-out reward accuracy: {overall['reward_accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}) on "
            f"{overall['pairs']} pairs (base log-likelihood accuracy {overall['base_loglik_accuracy_normalized']:.3f} "
            f"-> tuned {overall['policy_loglik_accuracy_normalized']:.3f}, length-normalised)"
        )
