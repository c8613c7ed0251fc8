"""What every training objective provides, and the trainer set-up they share.

An objective (``training.objective``) is one unit: how its rows are read from the recipe's data, which TRL
config and trainer train them, what the held-out report holds, and the words (metric names, the unit a
row is counted in) the card, the plots, the report and the quickstart print. ``objective_for`` in this
package picks the unit once; the front ends (``dpo_recipe.train``, ``dpo-recipe eval``), the card and the
CLI ask it instead of asking which objective it is, so a new objective is one new module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from dpo_recipe.config.schema import DataSection, Recipe
from dpo_recipe.errors import RecipeError
from dpo_recipe.training.trl_args import lora_config, mapped, trainer_config
from dpo_recipe.utils.stopwatch import Stopwatch

if TYPE_CHECKING:
    from dpo_recipe.training.base_cache import BaseCache

Rows = list[dict[str, Any]]
# (training rows, held-out rows, tokenizer, data notes, each source's row counts): what setup hands on
Inputs = tuple[Rows, Rows, Any, list[str], list[dict[str, Any]]]


class Objective(ABC):
    """The interface; ``dpo.DPO``, ``kto.KTO`` and ``sft.SFT`` implement it (a subclass sets the class attributes)."""

    name: ClassVar[str]  # training.objective
    unit: ClassVar[str]  # what one training example is called in metrics, card and summary: "pairs" / "rows"
    title: ClassVar[str]  # the card's task name: "Preference alignment (DPO)"
    config_table: ClassVar[dict[str, str]]  # recipe key -> field of the TRL config class
    # the model card's words: "A LoRA adapter for BASE, <card_intro> by dpo-recipe", its Japanese line, and how
    # the held-out numbers were computed
    card_intro: ClassVar[str]
    card_intro_ja: ClassVar[str]
    held_out_explained: ClassVar[str]

    @abstractmethod
    def config_class(self) -> type:
        """TRL's config class for this objective (imported on demand: TRL imports torch)."""

    def trainer_args(self, recipe: Recipe, out: Path) -> Any:
        """The trainer's arguments (``config_table`` through ``trl_args.trainer_config``); checkpoints go to
        ``out/checkpoints``. Creating them starts accelerate's process state."""
        return trainer_config(recipe, out, self.config_class(), self.config_table)

    def hyperparameters(self, recipe: Recipe) -> list[tuple[str, str, Any]]:
        """``(recipe key, what the trainer received it as, value)`` for the card's table, in table order."""
        return mapped(recipe, self.config_table)

    @abstractmethod
    def load_inputs(self, recipe: Recipe, *, report: bool) -> Inputs:
        """Rows, tokenizer and the architecture checks (no weights); ``report`` (a dry run) prints what training
        would see before any refusal, so the numbers behind it are shown."""

    @abstractmethod
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
        """The trainer for ``train_rows``, with the run's callbacks (``with_run_callbacks``)."""

    @abstractmethod
    def held_out_rows(self, data: DataSection, recipe: Recipe) -> Rows:
        """``dpo-recipe eval``'s rows: the held-out split of ``data`` exactly as training held it out."""

    @abstractmethod
    def held_out_report(
        self, trainer: Any, tokenizer: Any, rows: Rows, recipe: Recipe, cache: BaseCache, stopwatch: Stopwatch
    ) -> dict[str, Any] | None:
        """Training's held-out report of the adapter ``trainer`` trained (None off the main process)."""

    @abstractmethod
    def eval_report(
        self, recipe: Recipe, model: Any, tokenizer: Any, rows: Rows, cache: BaseCache, stopwatch: Stopwatch
    ) -> dict[str, Any] | None:
        """``dpo-recipe eval``'s report of an adapter already trained (``model``), the numbers training gave."""

    def step_evaluator(
        self, trainer: Any, tokenizer: Any, rows: Rows, recipe: Recipe, cache: BaseCache
    ) -> Callable[[], dict[str, Any]]:
        """``eval.steps``: a function that scores ``rows`` under the adapter ``trainer`` is training, as it is when
        called, and returns the held-out report's ``overall`` (on every process). An objective without one
        scores its held-out rows at the end only; recipe validation refuses ``eval.steps`` for it first."""
        raise RecipeError(
            f"eval.steps: objective {self.name} scores its held-out {self.unit} at the end of training only; "
            "remove eval.steps."
        )

    def training_metrics(self, train_rows: Rows, log_history: list[dict[str, Any]]) -> dict[str, Any]:
        """``metrics.json``'s ``train`` additions: the objective's name and its own counts and numbers."""
        return {"objective": self.name}

    def training_loss_apart(self, recipe: Recipe) -> str | None:
        """The training loss's name where it is not the quantity the held-out report calls its loss (the loss
        chart then draws the held-out curve on an axis of its own); None where both are the same."""
        return self.name

    @abstractmethod
    def report_lines(self, report: dict[str, Any]) -> list[str]:
        """The held-out report's headline and tables as Markdown (``evaluation.report.markdown_summary``)."""

    @abstractmethod
    def held_out_line(self, report: dict[str, Any]) -> str:
        """One line of held-out numbers: the quickstart's last."""

    def summary_numbers(self, overall: dict[str, Any]) -> str:
        """The held-out numbers of the line printed when training is done."""
        return f"held-out reward accuracy {overall['reward_accuracy']:.3f} on {overall[self.unit]} {self.unit}"

    def card_figures(self, overall: dict[str, Any]) -> list[tuple[str, str, float | None]]:
        """``(metric, name, value)``: the held-out figures the card's ``model-index`` carries."""
        return [
            ("reward_accuracy", "Reward accuracy (held-out)", overall["reward_accuracy"]),
            ("reward_margin", "Mean reward margin (held-out)", overall["reward_margin"]),
        ]

    def card_note(self, recipe: Recipe, metrics: dict[str, Any]) -> str:
        """Sentences the model card adds on how this objective read and weighed its data ("" when none)."""
        return ""


def with_run_callbacks(trainer: Any, out: Path) -> Any:
    """``trainer`` with what every run's trainer has: the JSONL log (``out/train_log.jsonl``), the clean stop on
    SIGINT / SIGTERM, the whole run's totals across resumes (``run_totals``), the progress bar with live
    numbers, and ``lora.trainable_tokens`` rows updated in place (without copying the vocabulary each step).
    Added after construction: none of them acts before training."""
    from transformers.trainer_callback import ProgressCallback

    from dpo_recipe.models.token_rows import use_sparse_token_rows
    from dpo_recipe.training.callbacks import JsonlLogger, LiveMetricsProgress, StopOnSignal
    from dpo_recipe.training.run_totals import RunTotals

    use_sparse_token_rows(trainer.model)
    trainer.remove_callback(ProgressCallback)
    run_callbacks = (JsonlLogger(out / "train_log.jsonl"), StopOnSignal(), RunTotals(), LiveMetricsProgress())
    for callback in run_callbacks:
        trainer.add_callback(callback)
    return trainer


def padded_trainer(
    trainer_class: type, recipe: Recipe, args: Any, model: Any, tokenizer: Any, rows: Rows, out: Path, **extra: Any
) -> Any:
    """A TRL trainer of padded rows (``trainer_class``: KTOTrainer, SFTTrainer) on ``rows`` with the recipe's LoRA
    and the run's callbacks; ``extra`` goes to its constructor."""
    import datasets

    from dpo_recipe.models.hardware import keep_freed_memory_in_heap

    keep_freed_memory_in_heap()  # padded batches re-allocate big buffers every step (models.hardware)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=recipe_lora(recipe, tokenizer),
        **extra,
    )
    return with_run_callbacks(trainer, out)


def refuse_tied_token_rows(recipe: Recipe, skeleton: Any, trainer: str) -> None:
    """``lora.trainable_tokens`` on a model with tied embeddings train on the packed path only: TRL's padded
    trainers (``trainer``) read ``lm_head.bias``, which PEFT's wrapper of a tied LM head lacks (an
    AttributeError in the first step). Refused before any weights load."""
    if recipe.lora.trainable_tokens and skeleton.config.get_text_config().tie_word_embeddings:
        raise RecipeError(
            f"lora.trainable_tokens: on a model with tied embeddings TRL's {trainer} cannot train these rows (its "
            "fused LM head reads lm_head.bias, which PEFT's wrapper of a tied LM head lacks, and would skip their "
            f"LM-head rows). Remove lora.trainable_tokens under training.objective {recipe.training.objective}."
        )


def recipe_lora(recipe: Recipe, tokenizer: Any) -> Any:
    """The recipe's ``LoraConfig``, ``lora.trainable_tokens`` turned into the tokenizer's ids; None with
    ``lora.train_init_adapter``, where the model already is the adapter to train (``models.adapters.load_policy``)
    and TRL keeps its starting state as the reference."""
    from dpo_recipe.models.loading import trainable_token_ids

    if recipe.lora.train_init_adapter:
        return None
    return lora_config(recipe, trainable_token_ids(recipe.lora.trainable_tokens, tokenizer))
