"""Supervised fine-tuning with LoRA: ``training.objective: sft``, the usual step before DPO.

SFT trains on completions: the chosen answers of pair data, or the desirable (``label: true``) rows of
unpaired data, read and held out as ``kto`` reads them (whole pairs or prompts held out, rows shuffled
once with ``training.seed``) and then kept to those completions. The loss is the completion's NLL only.

**Why TRL's ``SFTTrainer`` (``completion_only_loss``) rather than the packed path with its NLL term
alone.** The packed path is built around pairs and a reference: given one answer a row it would still
tokenize and score a second (rejected) answer, and run a reference pass SFT does not read. SFTTrainer
tokenizes prompt / completion rows (text or messages, through the chat template) and masks the prompt
out of the loss as TRL defines it, with no reference model at all. Its rows are padded, which costs
more a token than packing on long prompts; an SFT run is short next to the DPO run that follows it.

The held-out report: the held-out completions' mean NLL per token and its perplexity, base → tuned
(the tuned adapter off and on: with ``model.init_adapter`` the "base" is the starting policy), scored
on the packed path's no-grad forward, and the answer checks of the DPO path. A run's adapter goes on
as the next run's ``model.init_adapter`` (docs/objectives.md).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpo_recipe.config.schema import DataSection, Recipe
from dpo_recipe.data.sources import converted_source
from dpo_recipe.data.tokens import encode_pair, trainer_rows
from dpo_recipe.errors import DataError
from dpo_recipe.training.objectives.base import Inputs, Objective, Rows, padded_trainer
from dpo_recipe.training.objectives.kto import completion_as_pair, completion_inputs, unpaired_splits
from dpo_recipe.training.trl_args import RECIPE_TO_DPO_CONFIG
from dpo_recipe.utils.stopwatch import Stopwatch

if TYPE_CHECKING:
    from dpo_recipe.training.base_cache import BaseCache

# recipe key -> SFTConfig field: DPOConfig's, less what only a preference loss (or DPOConfig) reads
PREFERENCE_ONLY_FIELDS = ("beta", "loss_type", "loss_weights", "label_smoothing", "disable_dropout")
RECIPE_TO_SFT_CONFIG: dict[str, str] = {
    key: field for key, field in RECIPE_TO_DPO_CONFIG.items() if field not in PREFERENCE_ONLY_FIELDS
}
SFT_COLUMNS = ("prompt", "completion")


def completions(data: DataSection, seed: int) -> tuple[Rows, Rows, list[str]]:
    """``(training rows, held-out rows, notes)``: prompt / completion rows of the chosen (desirable) answers."""
    train, test, notes = unpaired_splits(data, seed, objective="sft")
    train, test = ([_completion(r) for r in rows if r["label"] is True] for rows in (train, test))
    if not train:
        source = data.source if not data.sources else "data.sources"
        raise DataError(
            f"{source}: no completion to train on. training.objective sft trains on the chosen answers of pairs or "
            "the desirable (label: true) rows of unpaired data, and this data gives none: give pairs, or rows with "
            "a prompt, a completion and label true."
        )
    notes.append(f"objective sft: {len(train)} chosen / desirable completions train, {len(test)} held out")
    return train, test, notes


def _completion(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("label", "pair")}


class SFT(Objective):
    name = "sft"
    unit = "rows"
    title = "Supervised fine-tuning (SFT)"
    config_table = RECIPE_TO_SFT_CONFIG
    card_intro = "trained with\n**supervised fine-tuning** (loss on the answers only) on Japanese answers"
    card_intro_ja = "日本語の回答で教師ありファインチューニング（SFT）した LoRA アダプタです。"
    held_out_explained = (
        "Answers to prompts never seen in training: their mean negative log-likelihood per token and its\n"
        "perplexity under the base (the adapter off) and the tuned model; lower is better."
    )

    def card_note(self, recipe: Recipe, metrics: dict[str, Any]) -> str:
        return "The usual start of SFT → DPO, where a DPO run takes it as `model.init_adapter`."

    def config_class(self) -> type:
        from trl import SFTConfig

        return SFTConfig

    def trainer_args(self, recipe: Recipe, out: Path) -> Any:
        """``SFTConfig`` with the loss on completion tokens only, whatever the rows' form."""
        args = super().trainer_args(recipe, out)
        args.completion_only_loss = True
        return args

    def load_inputs(self, recipe: Recipe, *, report: bool) -> Inputs:
        """Completions; rows whose prompt alone fills ``training.max_length`` are refused (nothing would train)."""
        conversion = converted_source(recipe.data)
        train, test, notes = completions(recipe.data, recipe.training.seed)
        tail = ["objective sft: TRL's SFTTrainer, loss on the completion tokens only"]
        split = (train, test, notes)
        return completion_inputs(recipe, conversion, split, "SFTTrainer", notes, lambda _: tail, report=report)

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
        """TRL's ``SFTTrainer`` with the recipe's LoRA; no reference model, so ``cache`` is not read."""
        from trl import SFTTrainer

        rows = trainer_rows(train_rows, SFT_COLUMNS)
        return padded_trainer(SFTTrainer, recipe, args, model, tokenizer, rows, out)

    def held_out_rows(self, data: DataSection, recipe: Recipe) -> Rows:
        return completions(data, recipe.training.seed)[1]

    def training_metrics(self, train_rows: Rows, log_history: list[dict[str, Any]]) -> dict[str, Any]:
        """Completion rows, not pairs (``pairs`` is None: a row is one answer)."""
        return {"objective": self.name, "pairs": None, "rows": len(train_rows)}

    def held_out_report(
        self, trainer: Any, tokenizer: Any, rows: Rows, recipe: Recipe, cache: BaseCache, stopwatch: Stopwatch
    ) -> dict[str, Any] | None:
        accelerator = trainer.accelerator
        with accelerator.autocast():
            return self.eval_report(recipe, accelerator.unwrap_model(trainer.model), tokenizer, rows, cache, stopwatch)

    def eval_report(
        self, recipe: Recipe, model: Any, tokenizer: Any, rows: Rows, cache: BaseCache, stopwatch: Stopwatch
    ) -> dict[str, Any] | None:
        """Mean NLL per completion token and perplexity, base (adapter off) and tuned, on the main process."""
        from accelerate import PartialState

        from dpo_recipe.evaluation.scoring import checked_answers
        from dpo_recipe.training.packing import score_packed, truncated

        if not PartialState().is_main_process:
            return None
        pairs = [vars(encode_pair(tokenizer, completion_as_pair(r))) for r in rows]
        max_length = recipe.training.max_length
        with stopwatch.phase("held-out scoring"):
            scores = score_packed(model, pairs, max_length, recipe.eval.batch_size, policy=True, reference=True)
        tokens = [len(truncated(p, max_length)[1]) for p in pairs]
        per_row = [
            {"row": i, "tokens": n, "base_logp": float(base), "tuned_logp": float(tuned)}
            for i, (n, base, tuned) in enumerate(zip(tokens, scores.reference[0], scores.policy[0], strict=True))
        ]
        total = sum(tokens)
        base_nll = -sum(r["base_logp"] for r in per_row) / total
        tuned_nll = -sum(r["tuned_logp"] for r in per_row) / total
        overall = {
            "rows": len(rows),
            "completion_tokens": total,
            "base_nll": base_nll,
            "tuned_nll": tuned_nll,
            "base_perplexity": math.exp(base_nll),
            "tuned_perplexity": math.exp(tuned_nll),
            "loss": tuned_nll,
        }
        report: dict[str, Any] = {"objective": "sft", "overall": overall, "per_row": per_row}
        if recipe.eval.num_generations:
            with stopwatch.phase("answers"):
                report["generations"], report["answer_checks"] = checked_answers(
                    model, tokenizer, rows, recipe.eval, cache
                )
        return report

    def report_lines(self, report: dict[str, Any]) -> list[str]:
        o = report["overall"]
        return [
            f"Held-out completions ({o['rows']} rows, {o['completion_tokens']} tokens): mean NLL per token base "
            f"{o['base_nll']:.4f} → tuned **{o['tuned_nll']:.4f}**; perplexity {o['base_perplexity']:.2f} → "
            f"{o['tuned_perplexity']:.2f}.",
            "",
        ]

    def held_out_line(self, report: dict[str, Any]) -> str:
        o = report["overall"]
        return (
            f"held-out completions: perplexity {o['base_perplexity']:.2f} -> {o['tuned_perplexity']:.2f} on "
            f"{o['rows']} rows (mean NLL per token {o['base_nll']:.3f} -> {o['tuned_nll']:.3f})"
        )

    def summary_numbers(self, overall: dict[str, Any]) -> str:
        return f"held-out perplexity {overall['base_perplexity']:.2f} -> {overall['tuned_perplexity']:.2f}"

    def card_figures(self, overall: dict[str, Any]) -> list[tuple[str, str, float | None]]:
        return [
            ("perplexity", "Perplexity of held-out completions", overall["tuned_perplexity"]),
            ("nll", "Mean NLL per completion token (held-out)", overall["tuned_nll"]),
        ]
