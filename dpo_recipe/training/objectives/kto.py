"""Unpaired preference data trained with TRL's KTOTrainer: ``training.objective: kto``.

KTO (Kahneman-Tversky Optimization, arXiv:2402.01306) learns from one judged answer a row
(``prompt`` / ``completion`` / ``label``: the ``unpaired`` form of ``dpo_recipe.data.forms``) instead
of two answers to one prompt. The recipe, LoRA, run directory, artifacts, card and Hub push are the
DPO path's; ``KTO`` (this package's ``Objective``) holds what differs: its rows, ``KTOConfig``
(``RECIPE_TO_KTO_CONFIG``), its trainer, its held-out report (computed by ``evaluation.kto_scoring``) and
its numbers in metrics, card and quickstart. The refusals of DPO-only keys are the recipe's checks
(``config.checks.kto_problems``), made before any data is read.

- **Data.** Unpaired rows are read, held out (whole prompts, or whole topics where the rows have
  a topic column) and linted as unpaired. Pairs are held out and linted as pairs, then split
  into rows by TRL's ``unpair_preference_dataset`` (each chosen answer desirable, each rejected
  one undesirable). KTOTrainer reads its rows in order, because it estimates the KL term of a
  batch from its rows' completions rotated by one within the batch; so the rows are shuffled once
  with ``training.seed``: a batch then mixes labels and prompts, as the random sampler of the DPO
  path would.
- **Training.** ``KTOConfig`` gets DPOConfig's mapped keys less the pair losses, plus
  ``desirable_weight`` / ``undesirable_weight``. The reference is the base with the adapter
  disabled, computed by TRL in every step (no base cache). ``training.packing`` is a DPO setting: its
  default does not apply here, and ``packing: true`` is refused.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpo_recipe.config.schema import DataSection, Recipe
from dpo_recipe.data.forms import SFT_FORMS, UNPAIRED_COLUMNS, Conversion, unpaired_rows
from dpo_recipe.data.lint import LintReport, lint_unpaired
from dpo_recipe.data.sources import (
    as_conversation,
    converted_source,
    hold_out_prompts,
    kept_note,
    lint_error_message,
    load_preference_splits,
    provenance,
    sample_rows,
    train_and_held_out,
    warning_notes,
)
from dpo_recipe.data.tokens import trainer_rows
from dpo_recipe.errors import DataError
from dpo_recipe.evaluation.report import kto_lines
from dpo_recipe.training.objectives.base import Inputs, Objective, Rows, padded_trainer, refuse_tied_token_rows
from dpo_recipe.training.preflight import (
    checked_architecture,
    lora_summary,
    measure_tokens,
    percentiles,
    refuse_emptied_completions,
    refuse_tools_the_template_ignores,
)
from dpo_recipe.training.trl_args import RECIPE_TO_DPO_CONFIG
from dpo_recipe.utils.stopwatch import Stopwatch

if TYPE_CHECKING:
    from dpo_recipe.training.base_cache import BaseCache

# recipe key -> KTOConfig field: DPOConfig's, less its pair losses, plus KTO's weights
DPO_ONLY_FIELDS = ("loss_type", "loss_weights", "label_smoothing")
RECIPE_TO_KTO_CONFIG: dict[str, str] = {
    **{key: field for key, field in RECIPE_TO_DPO_CONFIG.items() if field not in DPO_ONLY_FIELDS},
    "training.objective": "loss_type",
    "training.desirable_weight": "desirable_weight",
    "training.undesirable_weight": "undesirable_weight",
}
PAIR_COLUMN = "pair"  # rows split from pairs: the index of the pair they came from (its chosen and rejected rows)


def unpaired_splits(
    data: DataSection, seed: int, conversion: Conversion | None = None, objective: str = "kto"
) -> tuple[Rows, Rows, list[str]]:
    """``(training rows, held-out rows, notes)`` in the unpaired form, from unpaired data or from pairs; the notes
    name ``objective`` (SFT reads its completions from these rows too).

    ``data.max_train_pairs`` / ``max_eval_pairs`` count rows of unpaired data, and pairs (before they are
    split) of pairs. Both sides are shuffled with ``seed`` (see the module's docstring)."""
    name = data.source if not data.sources else "data.sources"
    conversion = conversion or converted_source(data)
    if conversion.form in SFT_FORMS and objective == "kto":
        raise DataError(
            f"{name} holds one answer a row with no label ({conversion.form} form): answers to learn from, not "
            "judged desirable or undesirable, so KTO has nothing to weigh. Train it with training.objective: sft, or "
            "add a label column (true / false) for KTO."
        )
    if not conversion.one_answer:  # pairs: held out and linted as pairs, then split
        train_pairs, test_pairs, report = load_preference_splits(data, conversion=conversion)
        train, test = (
            unpaired_rows([{**row, PAIR_COLUMN: index} for index, row in enumerate(pairs)])
            for pairs in (train_pairs, test_pairs)
        )
        notes = [
            *report.notes,
            f"objective {objective}: {len(train_pairs)} training pairs split into {len(train)} unpaired rows and "
            f"{len(test_pairs)} held-out pairs into {len(test)} (each chosen answer desirable, each rejected one "
            "undesirable: TRL's unpair_preference_dataset)",
        ]
    else:
        train, test, notes = _unpaired_rows(conversion, data, name)
    labels = {row["label"] for row in train}
    if objective == "kto" and len(labels) == 1:  # SFT reads the desirable rows alone
        (label,) = labels
        raise DataError(
            f"{name}: all {len(train)} training rows are labelled {str(label).lower()} ("
            f"{'desirable' if label else 'undesirable'}); KTO learns from both desirable and undesirable answers. "
            "Add rows of the other label (or give pairs: each pair gives one of each)."
        )
    for rows in (train, test):
        random.Random(seed).shuffle(rows)
    notes.append(f"objective {objective}: rows shuffled once with training.seed {seed}")
    return train, test, notes


def _unpaired_rows(conversion: Conversion, data: DataSection, name: str) -> tuple[Rows, Rows, list[str]]:
    """Training and held-out rows of unpaired data, linted; whole prompts (or topics) are held out, so that no
    prompt is judged on both sides."""
    if conversion.findings:
        raise DataError(lint_error_message(name, LintReport(conversion.findings, {})))
    train, test = train_and_held_out(conversion, data, name, hold=hold_out_prompts)
    report = lint_unpaired({data.train_split: train, **({data.test_split: test} if test else {})})
    if report.errors:
        raise DataError(lint_error_message(name, report))
    before = len(train)
    train, test = sample_rows(train, data.max_train_pairs, data.seed), sample_rows(test, data.max_eval_pairs, data.seed)
    if data.as_conversation:
        train, test = [as_conversation(r) for r in train], [as_conversation(r) for r in test]
    return train, test, [*conversion.notes, *kept_note(data, train, before), *warning_notes(report)]


def completion_as_pair(row: dict[str, Any]) -> dict[str, Any]:
    """A completion row in the pair form the token measures and the packed scorer read (both answers alike)."""
    return {**row, "chosen": row["completion"], "rejected": row["completion"]}


def completion_inputs(
    recipe: Recipe,
    conversion: Conversion,
    split: tuple[Rows, Rows, list[str]],
    trainer: str,
    head: list[str],
    tail: Any,
    *,
    report: bool = False,
) -> Inputs:
    """The inputs of an objective that trains one completion a row (KTO, SFT): the architecture checks (token
    rows on tied embeddings refused for ``trainer``), the rows tokenized as TRL will see them, and, for a dry run
    (``report``), ``head``, the token counts and ``tail(skeleton)`` printed. Rows whose prompt alone fills
    ``training.max_length`` are refused (nothing of them would train)."""
    train, test, notes = split
    tokenizer, skeleton = checked_architecture(recipe)
    refuse_tied_token_rows(recipe, skeleton, trainer)
    refuse_tools_the_template_ignores(train + test, tokenizer, recipe)
    max_length = recipe.training.max_length
    tokens = measure_tokens([completion_as_pair(row) for row in train], tokenizer, max_length)
    if report:
        counts = [
            f"prompt tokens: {percentiles(tokens.prompt_lengths)}",
            f"completion tokens (EOS included): {percentiles(tokens.completion_lengths[::2])}",
            f"rows truncated at max_length {max_length}: {tokens.truncated_pairs} of {len(train)}",
        ]
        print("\n".join([*head, *counts, *tail(skeleton)]))
    refuse_emptied_completions(tokens, max_length, unit="rows", order=" after shuffling")
    return train, test, tokenizer, notes, provenance(recipe.data, conversion, train, test)


class KTO(Objective):
    name = "kto"
    unit = "rows"
    title = "Preference alignment (KTO)"
    config_table = RECIPE_TO_KTO_CONFIG
    card_intro = (
        "aligned with\n**KTO** (Kahneman-Tversky Optimization, [arXiv:2402.01306](https://arxiv.org/abs/2402.01306))"
        "\non Japanese unpaired preference data (one answer a row, judged desirable or undesirable)"
    )
    card_intro_ja = "日本語の選好データ（望ましい／望ましくない回答のラベル付き）で KTO 学習した LoRA アダプタです。"
    held_out_explained = (
        "Rows never seen in training. KL-adjusted reward: β·(log π(y|x) − log π_ref(y|x)) less β times the\n"
        "batch's KL estimate, as KTO's loss reads it; a desirable row counts as right when it is above 0,\n"
        "an undesirable one when it is below 0 (ties, as for the base model, count as wrong)."
    )

    def config_class(self) -> type:
        """``KTOConfig``; TRL's ``train_sampling_strategy="sequential"`` stays, as the rows are shuffled once."""
        from trl import KTOConfig

        return KTOConfig

    def load_inputs(self, recipe: Recipe, *, report: bool) -> Inputs:
        """Unpaired rows (pairs split into them); rows whose prompt alone fills ``training.max_length`` are refused
        (TRL drops them)."""
        conversion = converted_source(recipe.data)
        train, test, notes = unpaired_splits(recipe.data, recipe.training.seed, conversion)
        desirable = sum(r["label"] is True for r in train)
        kept = f"rows kept: {len(train)} ({desirable} desirable, {len(train) - desirable} undesirable); "
        t = recipe.training

        def trainer_lines(skeleton: Any) -> list[str]:
            matched, trainable = lora_summary(skeleton, recipe)
            return [
                f"LoRA target modules found: {', '.join(f'{n} x{c}' for n, c in sorted(matched.items()))}",
                f"trainable parameters: {trainable:,}",
                f"objective kto: TRL's KTOTrainer, desirable_weight {t.desirable_weight}, "
                f"undesirable_weight {t.undesirable_weight}, beta {t.beta}",
            ]

        head = [*notes, kept + f"held-out rows: {len(test)}"]
        split = (train, test, notes)
        return completion_inputs(recipe, conversion, split, "KTOTrainer", head, trainer_lines, report=report)

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
        """TRL's ``KTOTrainer`` with the recipe's LoRA, as for DPO; TRL computes the reference in every step, so
        ``cache`` is not read."""
        from trl import KTOTrainer

        rows = trainer_rows(train_rows, UNPAIRED_COLUMNS)  # held-out rows are scored by evaluation.kto_scoring
        # with a PEFT adapter the reference is the base with the adapter disabled
        return padded_trainer(KTOTrainer, recipe, args, model, tokenizer, rows, out, ref_model=None)

    def held_out_rows(self, data: DataSection, recipe: Recipe) -> Rows:
        """As training held them out: pairs split, rows shuffled with the seed."""
        return unpaired_splits(data, recipe.training.seed)[1]

    def held_out_report(
        self, trainer: Any, tokenizer: Any, rows: Rows, recipe: Recipe, cache: BaseCache, stopwatch: Stopwatch
    ) -> dict[str, Any] | None:
        """KTO's own held-out numbers, scored through the trainer on the main process."""
        from dpo_recipe.evaluation.kto_scoring import evaluate_kto_adapter

        return evaluate_kto_adapter(trainer, tokenizer, rows, settings=recipe.eval, cache=cache, stopwatch=stopwatch)

    def eval_report(
        self, recipe: Recipe, model: Any, tokenizer: Any, rows: Rows, cache: BaseCache, stopwatch: Stopwatch
    ) -> dict[str, Any] | None:
        """Through a ``scoring_trainer`` in a scratch directory: nothing is trained or kept."""
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            trainer = scoring_trainer(recipe, model, tokenizer, rows, Path(scratch))
            return self.held_out_report(trainer, tokenizer, rows, recipe, cache, stopwatch)

    def training_metrics(self, train_rows: Rows, log_history: list[dict[str, Any]]) -> dict[str, Any]:
        """``metrics.json``'s training additions: row counts, the pairs they were split from (None for unpaired data),
        and KTO's last logged numbers (TRL logs each reward only when its batch held such a row)."""
        from dpo_recipe.training.callbacks import (
            LOGPS_CHOSEN,
            LOGPS_REJECTED,
            REWARD_CHOSEN,
            REWARD_MARGIN,
            REWARD_REJECTED,
        )

        desirable = sum(r["label"] is True for r in train_rows)
        last: dict[str, Any] = {}
        for key in ("kl", REWARD_CHOSEN, REWARD_REJECTED, REWARD_MARGIN, LOGPS_CHOSEN, LOGPS_REJECTED):
            value = next((h[key] for h in reversed(log_history) if key in h), None)
            if value is not None:
                last[key] = value
        from_pairs = bool(train_rows) and PAIR_COLUMN in train_rows[0]
        return {
            "objective": "kto",
            "pairs": len({r[PAIR_COLUMN] for r in train_rows}) if from_pairs else None,  # before the split
            "rows": len(train_rows),
            "desirable_rows": desirable,
            "undesirable_rows": len(train_rows) - desirable,
            "split_from_pairs": from_pairs,
            **last,
        }

    def report_lines(self, report: dict[str, Any]) -> list[str]:
        return kto_lines(report)

    def held_out_line(self, report: dict[str, Any]) -> str:
        overall = report["overall"]
        return (
            f"held-out KL-adjusted reward accuracy: {overall['reward_accuracy']:.3f} on {overall['rows']} rows "
            f"(desirable {overall['desirable_accuracy']:.3f}, undesirable {overall['undesirable_accuracy']:.3f}; "
            f"reward margin {overall['reward_margin']:.3f})"
        )

    def card_note(self, recipe: Recipe, metrics: dict[str, Any]) -> str:
        """How a KTO run read its data (pairs split, or unpaired rows) and weighed its rows: what a reader needs
        to compare it with a DPO adapter trained on the same pairs."""
        t, train = recipe.training, metrics.get("train", {})
        rows = train.get("rows")
        counts = (
            f" ({train['desirable_rows']} desirable and {train['undesirable_rows']} undesirable training rows)"
            if rows is not None
            else ""
        )
        split = (
            " The training data were pairs, split automatically into unpaired rows (each chosen answer desirable, "
            "each rejected one undesirable; TRL's `unpair_preference_dataset`)."
            if train.get("split_from_pairs")
            else ""
        )
        return (
            f"Trained with TRL's `KTOTrainer`: beta {t.beta}, desirable_weight {t.desirable_weight}, "
            f"undesirable_weight {t.undesirable_weight}{counts}.{split}"
        )


def scoring_trainer(recipe: Recipe, model: Any, tokenizer: Any, rows: Rows, out: Path) -> Any:
    """A ``KTOTrainer`` around an adapter already trained (``dpo-recipe eval``): its dataset preparation,
    collator and reference pass are what ``evaluation.kto_scoring`` scores with, so a re-evaluation gives the
    numbers training's held-out report gave. Nothing is trained or written (checkpoints would go to ``out``)."""
    import datasets
    from trl import KTOTrainer

    rows = trainer_rows(rows, UNPAIRED_COLUMNS)
    trainer = KTOTrainer(
        model=model,
        ref_model=None,
        args=KTO().trainer_args(recipe, out),
        train_dataset=datasets.Dataset.from_list(rows),  # KTOTrainer needs one; only evaluation reads it
        processing_class=tokenizer,
    )
    # Given a trained PeftModel, KTOTrainer copies its adapter into a "ref" adapter to continue training
    # against it; the reference of the adapter's own training was the base with the adapter disabled, which
    # is what compute_ref_log_probs uses once "ref" is gone.
    if "ref" in trainer.model.peft_config:
        trainer.model.delete_adapter("ref")
        trainer.model.set_adapter("default")
    return trainer
