"""The prompts a model is asked on-policy (``dpo-recipe pairs sample``, ``iterate``): the training prompts of any
data source a recipe accepts, never a held-out one.

A source is read as training reads it (``sources.converted_source``: pairs, ranked answers, chat data, unpaired
rows, a mixture), or, where no pair form fits, as plain prompt rows (a ``prompt`` column, text or messages). Its
training and held-out rows are split by ``sources.train_and_held_out`` with the hold-out training uses (by topic,
else by prompt), and ``data.max_train_pairs`` picks the rows that train, so "held out" means exactly what
training holds out. A prompt is also dropped when it is among the recipe's own held-out prompts: prompts read
from another file (a copy of the test split, say) never reach the rounds. Prompts are then unique, in the
order first seen, each with the columns every row of that prompt agrees on (``topic``, ``domain``: what the
judges read), and ``data.as_conversation`` applies as in training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dpo_recipe.config.schema import DataSection
from dpo_recipe.data.forms import Conversion, map_columns
from dpo_recipe.data.sources import (
    as_conversation,
    converted_source,
    hold_out_prompts,
    prompt_key,
    read_source,
    sample_rows,
    train_and_held_out,
)
from dpo_recipe.errors import DataError

Rows = list[dict[str, Any]]
# a row's columns that belong to one answer, not to its prompt: never carried onto a prompt
ANSWER_COLUMNS = ("chosen", "rejected", "completion", "label", "chosen_score", "rejected_score", "rejection_type")


@dataclass
class Prompts:
    """Unique training prompts (``prompt`` plus the prompt-level columns) and what was done to find them."""

    rows: Rows
    notes: list[str] = field(default_factory=list)


def training_prompts(data: DataSection, source: str | None = None, limit: int | None = None) -> Prompts:
    """The training prompts of ``source`` (default: the recipe's own data), read with the recipe's data keys.

    ``limit`` keeps at most that many, chosen after a shuffle seeded by ``data.seed``. Raises DataError when no
    prompt is left (the source is empty, or every prompt is held out)."""
    section = data if source is None else dataclasses.replace(data, source=source, sources=[], revision=None)
    name = section.source if not section.sources else "data.sources"
    train, held = _split(section, name)
    train = sample_rows(train, data.max_train_pairs, data.seed)
    held_keys = {prompt_key(row["prompt"]) for row in held}
    if source is not None:  # the recipe's own held-out prompts stay out, whatever file they come from
        held_keys |= {prompt_key(row["prompt"]) for row in _split(data, data.source)[1]}
    unique = _unique_prompts(train)
    kept = [row for row in unique if prompt_key(row["prompt"]) not in held_keys]
    if not kept:
        why = (
            f"all {len(unique)} of its training prompts are in the held-out split (the recipe's data.test_split, "
            "or its held-out topics)"
            if unique
            else "it has no training rows with a prompt"
        )
        raise DataError(
            f"{name}: no prompt to sample: {why}. Held-out prompts are never sampled, so held-out numbers stay "
            "honest; give prompts of the training split (--prompts SOURCE)."
        )
    notes = [
        f"prompts: {len(kept)} unique training prompts of {name}"
        + (f"; {len(unique) - len(kept)} in the held-out split left out" if len(unique) > len(kept) else "")
    ]
    picked = sample_rows(kept, limit, data.seed)
    if len(picked) < len(kept):
        notes.append(f"prompts: {len(picked)} of them, chosen after a shuffle seeded by data.seed {data.seed}")
    if data.as_conversation:
        picked = [as_conversation(row) for row in picked]
    return Prompts(picked, notes)


def _split(section: DataSection, name: str) -> tuple[Rows, Rows]:
    """Training and held-out rows of ``section``, as training splits them; plain prompt rows where no form fits."""
    conversion = converted_source(section)
    if conversion.findings or not conversion.splits:
        conversion = _prompt_rows(section, conversion)
    return train_and_held_out(conversion, section, name, hold=hold_out_prompts)


def _prompt_rows(section: DataSection, failed: Conversion) -> Conversion:
    """Rows that hold a prompt and no answers (a file of questions), or the conversion's own error."""
    if section.sources:
        raise DataError(_findings_text("data.sources", failed))
    raw = read_source(section.source, num_pairs=section.num_pairs, seed=section.seed, revision=section.revision)
    mapped, _ = map_columns(raw, dataclasses.replace(section, chosen_column="chosen", rejected_column="rejected"))
    rows = [row for split in mapped.values() for row in split]
    if not rows or not all(isinstance(row.get("prompt"), (str, list)) and row["prompt"] for row in rows):
        raise DataError(_findings_text(section.source, failed))
    return Conversion(mapped, ["form: prompt rows (a prompt column and no answers)"], [], "prompts")


def _findings_text(name: str, conversion: Conversion) -> str:
    found = "; ".join(f"{f.check} in split '{f.split}' rows {f.rows_text(5)}: {f.message}" for f in conversion.findings)
    return (
        f"{name}: neither a data form nor plain prompt rows (a non-empty prompt column) could be read"
        + (f" ({found})" if found else "")
        + f". Run 'dpo-recipe data lint {name}' to see what it holds."
    )


def _unique_prompts(rows: Rows) -> Rows:
    """One row per prompt, first seen first, with the columns all of that prompt's rows agree on."""
    groups: dict[str, Rows] = {}
    for row in rows:
        groups.setdefault(prompt_key(row["prompt"]), []).append(row)
    unique = []
    for group in groups.values():
        first = group[0]
        shared = {
            k: v
            for k, v in first.items()
            if k != "prompt" and k not in ANSWER_COLUMNS and all(other.get(k) == v for other in group)
        }
        unique.append({"prompt": first["prompt"], **shared})
    return unique
