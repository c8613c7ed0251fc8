"""Preference data as it is published, turned into the standard form training sees.

Public preference sets hold a pair in several shapes (*forms*). This module maps a file's columns,
recognises its form and converts every row to ``prompt`` / ``chosen`` / ``rejected``, all text or all
TRL conversational messages, so that the linter, the dry run and the trainer see one form:

- ``standard``: prompt / chosen / rejected, as TRL documents it;
- ``implicit``: chosen and rejected only, the prompt inside both. TRL's ``extract_prompt`` takes it
  out (the longest shared text prefix; for messages the shared leading turns), and for messages it
  must be exactly the turns before each conversation's last assistant turn;
- ``hh``: Anthropic HH-RLHF transcripts (``\\n\\nHuman: …\\n\\nAssistant: …``) become messages, so the
  model's chat template renders them, then as ``implicit``;
- ``ranked``: several scored answers per prompt become pairs by the rule ``data.ranked_pairs`` names;
- ``sharegpt``: a conversation column (``conversations`` / ``messages``, ``{from, value}`` or ``{role, content}``
  turns) is the prompt, chosen / rejected the answers as text, one message or a list of them (llm-jp's
  hh-rlhf-12k-ja, LLaMA-Factory's ShareGPT preference form, axolotl's chat_template form);
- ``openai``: OpenAI's preference fine-tuning JSONL (``input.messages``, ``preferred_output``,
  ``non_preferred_output``);
- ``unpaired``: ``prompt`` / ``completion`` / ``label``, one judged answer a row (TRL's unpaired preference
  form): linted and converted here, but no pairs for DPO; ``unpaired_rows`` turns pairs into it.
- ``completion`` (``prompt`` / ``completion``, no label: TRL's prompt-completion form) and ``chat`` (a
  ``messages`` / ``conversations`` column alone, the last assistant turn the answer: TRL's conversational
  language-modeling form): one answer a row, nobody's judgement, the data of supervised fine-tuning. Read as
  unpaired rows labelled desirable (``ONE_ANSWER_FORMS``), which ``training.objective: sft`` trains on.

Role names the chat forms use (human, gpt, model, …) are mapped onto TRL's system / user / assistant, with
``data.roles`` for others; a system column (``data.system_column``) becomes the prompt's first message, in
every form. Every form's turns pass the same shape rules (``dpo_recipe.data.turns``).

The form is detected from the first row: of the forms its columns could be, the first that reads it; a
column no form needs (ultrafeedback_binarized's ``messages``) never decides it, and prompt and ranked
columns under the names published sets use are recognised without keys (``recognised_names``).

A row that cannot be converted is a lint finding naming its row and field, not an exception, so one
run of ``dpo-recipe data lint`` lists them all, before any model loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dpo_recipe.config.schema import DataSection
from dpo_recipe.data.lint import TEXT_COLUMNS, Finding
from dpo_recipe.data.turns import (
    RowProblem,
    answer_turns,
    chat_turns,
    checked_answer,
    checked_messages,
    checked_prompt,
    last_assistant_turn,
    prompt_turns,
    role_names,
)
from dpo_recipe.errors import DataError

Row = dict[str, Any]
Rows = list[Row]
Numbered = list[tuple[int, Row]]  # rows with their 1-based number in the source split

CONVERSATION_COLUMNS = ("conversations", "messages")  # ShareGPT's and ChatML's names for a prompt's turns
OPENAI_COLUMNS = ("input", "preferred_output", "non_preferred_output")
UNPAIRED_COLUMNS = ("prompt", "completion", "label")
COMPLETION_COLUMNS = ("prompt", "completion")
ONE_ANSWER_FORMS = ("unpaired", "completion", "chat")  # read as unpaired rows: no pairs for DPO
SFT_FORMS = ("completion", "chat")  # one answer a row with no label: SFT's data, read as desirable
PROMPT_NAMES = ("prompt", "question", "input", "instruction", "query")  # a prompt column as published sets name it
RANKED_NAMES = ("responses", "completions")  # a column of scored answers (UltraFeedback: completions)
RANKED_TEXT_NAMES = ("text", "response")  # an answer object's text
RANKED_SCORE_NAMES = ("score", "overall_score", "rating")  # an answer object's score
CHAT_FORMS = ("sharegpt", "openai")  # forms whose rows are always read as chat messages
LABELS = {"true": True, "1": True, "false": False, "0": False}  # a label as CSV and other text files hold it
PROMPT_JOINER = "\n\n"  # between the columns of a list-valued data.prompt_column (Alpaca's instruction, input)
HH_TURN = re.compile(r"(?:\A|\n\n)(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
FORM_EXPLAINED = {
    "standard": "prompt / chosen / rejected as given",
    "implicit": "chosen and rejected hold the prompt: their longest shared start, or for messages every turn "
    "before the last assistant turn",
    "hh": "HH-RLHF '\\n\\nHuman:' / '\\n\\nAssistant:' turns become messages; the prompt is every turn "
    "before the last assistant turn",
    "ranked": "several scored answers per prompt become pairs",
    "sharegpt": "the conversation column's turns are the prompt (roles mapped onto system / user / assistant); "
    "each answer (text, one message or a list) becomes assistant messages",
    "openai": "OpenAI preference JSONL: input.messages is the prompt, preferred_output / non_preferred_output the "
    "answers; input.tools is kept as a tools column",
    "unpaired": "prompt / completion / label, one judged answer a row (true: desirable); no pairs, so DPO cannot "
    "train on it",
    "completion": "prompt / completion with no label: one answer a row to learn from (SFT's data; no pairs)",
    "chat": "a conversation a row: every turn before the last assistant turn is the prompt, that turn the answer "
    "(SFT's data; no pairs)",
}


@dataclass
class Conversion:
    """Splits in the standard form, and what was done to get them (printed by the data commands and the dry run)."""

    splits: dict[str, Rows]
    notes: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)  # errors only; rows numbered as in the source
    form: str | None = None  # the form read (None: none fits); 'unpaired' rows hold prompt / completion / label
    source_forms: dict[str, str] = field(default_factory=dict)  # a mixture: the form each source was read in

    @property
    def one_answer(self) -> bool:
        """Rows of one answer each (prompt / completion / label), judged or not: KTO's and SFT's, not DPO's."""
        return self.form in ONE_ANSWER_FORMS


def to_standard(splits: dict[str, Rows], data: DataSection) -> Conversion:
    """``splits`` as prompt / chosen / rejected rows, in the form ``data.form`` names or the one detected.

    Detection reads the first row: of the forms its columns could be (``_candidates``), the first that reads
    it without a problem wins, and one that reads it into other pairs makes the file ambiguous (an error
    naming both, settled by ``data.form``). Columns the chosen form does not read are kept as they are and
    named in the form's line, so that a column never decides the form by merely being there."""
    data, named, unclear = recognised_names(splits, data)
    if unclear:
        return Conversion({}, named, unclear)
    mapped, mapping_note = map_columns(splits, data)
    notes = named + ([mapping_note] if mapping_note else [])
    has_system = any(data.system_column in row for rows in mapped.values() for row in rows)
    system = data.system_column if data.system_column and has_system else None
    candidates = {name: [_candidates(row, data) for row in rows] for name, rows in mapped.items()}
    first = next(
        (
            (name, row, found)
            for name, rows in mapped.items()
            for row, found in zip(rows, candidates[name], strict=True)
            if found
        ),
        None,
    )
    if first is None:
        return Conversion({}, notes, [_no_form_fits(mapped, data)])
    (form, kind), why, rivals = _detected(*first, data)
    how = "detected" if data.form == "auto" else "data.form"
    unread = [c for c in first[1] if c not in _read_columns(form, first[1], data, system)]
    aside = f"; other columns, kept but not trained on: {', '.join(unread)}" if unread else ""
    notes.append(f"form: {form}{f', {kind}' if kind else ''} ({how}{why}): {FORM_EXPLAINED[form]}{aside}")
    ambiguous = rivals or _ambiguous(mapped, data)
    if ambiguous:
        return Conversion({}, notes, ambiguous)
    mixed = _mixed_forms(candidates, form, kind)
    elsewhere = {(f.split, number) for f in mixed for number in f.rows}  # reported once, as mixed, not converted
    numbered = {
        name: [(n, row) for n, row in enumerate(rows, start=1) if (name, n) not in elsewhere]
        for name, rows in mapped.items()
    }
    if system:
        notes.append(
            f"system: column '{system}' becomes the prompt's first message (role system); text pairs become "
            "messages, so the chat template renders it"
        )
    if form == "ranked":
        pairs, findings, counts = _pair_ranked(numbered, data)
        notes.append(counts)
        if system:  # numbered as the pairs made, as the ranked form's other findings are
            numbered_pairs = {name: list(enumerate(rows, start=1)) for name, rows in pairs.items()}
            pairs, refused = _convert_rows(numbered_pairs, lambda row: _with_system(row, system))
            findings += refused
        return Conversion(pairs, notes, mixed + findings, form)
    converted, findings = _convert_rows(numbered, _row_converter(form, data, system))
    return Conversion(converted, notes, mixed + findings, form)


def _row_converter(form: str, data: DataSection, system: str | None) -> Callable[[Row], Row]:
    """One row → the standard form, by ``form``'s converter, then with the system column's prompt in front."""
    convert = CONVERTERS[form]
    if system is None:
        return lambda row: convert(row, data)
    return lambda row: _with_system(convert(row, data), system)


# ---------------------------------------------------------------------------- columns


def map_columns(splits: dict[str, Rows], data: DataSection) -> tuple[dict[str, Rows], str | None]:
    """The recipe's column names mapped onto prompt / chosen / rejected, and a line saying how (None: no mapping).

    A mapped column that the data lacks is an error even when a column with the standard name
    exists: silently training on ``chosen`` when the recipe says ``better`` would train the wrong pairs.
    """
    _check_system_column(splits, data)
    prompt_sources = [data.prompt_column] if isinstance(data.prompt_column, str) else list(data.prompt_column)
    sources = {"prompt": prompt_sources, "chosen": [data.chosen_column], "rejected": [data.rejected_column]}
    moved = {target: columns for target, columns in sources.items() if columns != [target]}
    if not moved:
        return splits, None
    for name, rows in splits.items():
        absent = [
            f"data.{target}_column '{column}'"
            for target, columns in moved.items()
            for column in columns
            if rows and column not in rows[0]
        ]
        if absent:
            raise DataError(
                f"{data.source}: {', '.join(absent)}: no such column in split '{name}' (found: "
                f"{', '.join(rows[0])}). Set the key to a column the data has, or remove it to use the standard name."
            )
    dropped = set(moved) | {column for columns in moved.values() for column in columns}

    def mapped(row: Row) -> Row:
        values = {target: _joined([row.get(c) for c in columns]) for target, columns in moved.items()}
        return {**values, **{k: v for k, v in row.items() if k not in dropped}}

    joined = " (joined by a blank line, empty ones skipped)" if len(prompt_sources) > 1 else ""
    listing = ", ".join(f"{target} <- {' + '.join(columns)}" for target, columns in moved.items())
    return {name: [mapped(r) for r in rows] for name, rows in splits.items()}, f"columns: {listing}{joined}"


def _check_system_column(splits: dict[str, Rows], data: DataSection) -> None:
    """A system column the recipe names must exist; the default one ('system') is used only where it does."""
    column = data.system_column
    if column in (None, DataSection().system_column):
        return
    for name, rows in splits.items():
        if rows and column not in rows[0]:
            raise DataError(
                f"{data.source}: data.system_column '{column}': no such column in split '{name}' (found: "
                f"{', '.join(rows[0])}). Set the key to the column holding the system prompt, or to null for none."
            )


def _joined(values: list[Any]) -> Any:
    """One column's value as is; several text columns joined, empty ones skipped (None if one is not text)."""
    if len(values) == 1:
        return values[0]
    if not all(v is None or isinstance(v, str) for v in values):
        return None  # the linter reports the prompt as not a string
    return PROMPT_JOINER.join(v.strip() for v in values if v and v.strip())


# ---------------------------------------------------------------------------- detection


def _kind_of(value: Any) -> str | None:
    """'text' for a string, 'messages' for a list (checked when converted), None for anything else."""
    if isinstance(value, str):
        return "text"
    return "messages" if isinstance(value, list) else None


def _is_hh(text: Any) -> bool:
    """An HH-RLHF transcript: it opens with a Human turn (one without an Assistant turn is an error, not a form)."""
    return isinstance(text, str) and re.match(r"\s*Human:", text) is not None


def _candidates(row: Row, data: DataSection) -> list[tuple[str, str | None]]:
    """The forms one row's columns could be, in the order detection tries them, each as ``(form, kind)``: kind
    'text' or 'messages' (None when its values are neither). With ``data.form`` set, only that form."""
    kind = _kind_of(row.get("chosen")) or _kind_of(row.get("rejected"))
    if data.form == "ranked":
        return [("ranked", _kind_of(row.get("prompt")))]
    if data.form != "auto":
        return [(data.form, _form_kind(data.form, row, kind))]
    found: list[tuple[str, str | None]] = []
    if all(column in row for column in OPENAI_COLUMNS):
        found.append(("openai", None))
    if "chosen" not in row or "rejected" not in row:
        if data.ranked_column in row:
            found.append(("ranked", _kind_of(row.get("prompt"))))
        if all(column in row for column in UNPAIRED_COLUMNS):
            found.append(("unpaired", _kind_of(row.get("prompt"))))
        elif all(column in row for column in COMPLETION_COLUMNS):
            found.append(("completion", _kind_of(row.get("prompt"))))
        elif not found and _conversation_column(row) is not None and "prompt" not in row:
            found.append(("chat", None))
        return found
    if _conversation_column(row) is not None:
        found.append(("sharegpt", None))
    prompt = _kind_of(row.get("prompt"))
    # TRL's maybe_extract_prompt: a prompt column counts when it is text with text answers, or messages with messages
    form = "standard" if "prompt" in row and (prompt == kind or None in (prompt, kind)) else "implicit"
    if kind == "text" and (
        _is_hh(row["chosen"]) or _is_hh(row["rejected"]) or (form == "standard" and _is_hh(row["prompt"]))
    ):
        form = "hh"
    return [*found, (form, kind)]


def _detected(
    split: str, row: Row, found: list[tuple[str, str | None]], data: DataSection
) -> tuple[tuple[str, str | None], str, list[Finding]]:
    """The file's form from its first row: the first candidate that reads the row, why those before it did not,
    and an 'ambiguous-form' error when a later candidate reads it into other pairs."""
    read: dict[tuple[str, str | None], Any] = {}
    refused: dict[tuple[str, str | None], RowProblem] = {}
    for candidate in found:
        if candidate[0] not in CONVERTERS or len(found) == 1:  # ranked pairs are made across rows
            read[candidate] = None
            continue
        try:
            converted = CONVERTERS[candidate[0]](row, data)
            read[candidate] = {column: converted.get(column) for column in TEXT_COLUMNS}
        except RowProblem as problem:
            refused[candidate] = problem
    if not read:
        return found[0], "", []  # the first candidate's findings say what to fix
    chosen = next(iter(read))
    why = "".join(
        f"; not {form}: {refused[(form, kind)].column} {refused[(form, kind)].detail}"
        for form, kind in found[: found.index(chosen)]
    )
    others = [candidate[0] for candidate in read if read[candidate] != read[chosen]]
    if not others:
        return chosen, why, []
    message = (
        f"the rows read as {chosen[0]} and as {' and as '.join(others)} give different pairs; set data.form (--form) "
        "to the one the data means"
    )
    return chosen, why, [Finding("error", "ambiguous-form", split, [], message)]


def _read_columns(form: str, row: Row, data: DataSection, system: str | None) -> set[str]:
    """The columns ``form`` reads from ``row``: the others are kept as they are and not trained on."""
    if form == "sharegpt":
        columns: tuple[str, ...] = (_conversation_column(row) or CONVERSATION_COLUMNS[0], "chosen", "rejected")
    elif form == "ranked":
        columns = ("prompt", data.ranked_column, data.ranked_score_field)
    else:
        columns = {"openai": OPENAI_COLUMNS, "unpaired": UNPAIRED_COLUMNS, "completion": COMPLETION_COLUMNS}.get(
            form, TEXT_COLUMNS
        )
    if form == "chat":
        columns = (_conversation_column(row) or CONVERSATION_COLUMNS[0],)
    return {*columns, *([system] if system else [])}


def recognised_names(splits: dict[str, Rows], data: DataSection) -> tuple[DataSection, list[str], list[Finding]]:
    """``data`` with the keys left at their defaults set from the names published data uses, a line saying so,
    and an 'ambiguous-form' error when two columns could each be the prompt.

    The prompt under ``PROMPT_NAMES`` (orca_dpo_pairs' question, distilabel's input, UltraFeedback's
    instruction), ranked answers under ``RANKED_NAMES`` with their text and score under the field names
    UltraFeedback uses. Read from the first row; the recipe's own keys always win."""
    split, row = next(((name, rows[0]) for name, rows in splits.items() if rows), ("train", {}))
    default = DataSection()
    changes: dict[str, str] = {}
    if data.ranked_column == default.ranked_column and data.ranked_column not in row:
        column = next((name for name in RANKED_NAMES if _answer_objects(row.get(name))), None)
        if column:
            changes["ranked_column"] = column
    answers = row.get(changes.get("ranked_column", data.ranked_column))
    if _answer_objects(answers):
        for key, names in (("ranked_text_field", RANKED_TEXT_NAMES), ("ranked_score_field", RANKED_SCORE_NAMES)):
            if getattr(data, key) == getattr(default, key) and getattr(data, key) not in answers[0]:
                name = next((name for name in names if name in answers[0]), None)
                if name:
                    changes[key] = name
    answered = {data.chosen_column, data.rejected_column} <= row.keys() or _answer_objects(answers)
    if data.prompt_column == default.prompt_column and "prompt" not in row and answered:
        names = [name for name in PROMPT_NAMES if isinstance(row.get(name), str)]
        if len(names) > 1:
            message = (
                f"columns {' and '.join(names)} could each be the prompt; set data.prompt_column to the one meant, "
                f"or to a list of them to join them (e.g. [{', '.join(names)}])"
            )
            return data, [], [Finding("error", "ambiguous-form", split, [], message)]
        if names:
            changes["prompt_column"] = names[0]
    if not changes:
        return data, [], []
    listed = ", ".join(f"data.{key} {value}" for key, value in changes.items())
    return dataclasses.replace(data, **changes), [f"recognised by name (set the key to read another): {listed}"], []


def _answer_objects(value: Any) -> bool:
    """A list of answer objects, as a ranked column holds them."""
    return isinstance(value, list) and bool(value) and all(isinstance(answer, dict) for answer in value)


def _form_kind(form: str, row: Row, kind: str | None) -> str | None:
    """The kind a row of a named form is compared by: none for the chat forms (their answers may be text,
    a message or a list, all read as messages), the prompt's for unpaired rows, else the answers'."""
    if form in CHAT_FORMS:
        return None
    return _kind_of(row.get("prompt")) if form in ONE_ANSWER_FORMS else kind


def _conversation_column(row: Row) -> str | None:
    """The column holding a ShareGPT / ChatML conversation before the answers, or None.

    ``prompt`` counts when it is a list whose answers are not lists of messages too (that is the standard
    form) or when any turn is written ``{from, value}``."""
    for column in CONVERSATION_COLUMNS:
        if isinstance(row.get(column), list):
            return column
    prompt = row.get("prompt")
    if not isinstance(prompt, list):
        return None
    answers = [row.get("chosen"), row.get("rejected")]
    sharegpt_turns = any(
        isinstance(turn, dict) and "from" in turn
        for value in (prompt, *answers)
        if isinstance(value, list)
        for turn in value
    )
    return "prompt" if sharegpt_turns or not all(isinstance(a, list) for a in answers) else None


def _mixed_forms(candidates: dict[str, list[Any]], form: str, kind: str | None) -> list[Finding]:
    """Rows that cannot be the file's form (and kind), read from its first row: one file holds one form."""
    findings = []
    for split, rows in candidates.items():
        others: dict[Any, list[int]] = defaultdict(list)
        for number, found in enumerate(rows, start=1):
            if not any(f == form and (None in (k, kind) or k == kind) for f, k in found):
                others[found[0] if found else None].append(number)
        for found, numbers in others.items():
            what = "fit no form (their columns lack chosen / rejected)" if found is None else _describe(*found)
            findings.append(
                Finding(
                    "error",
                    "mixed-forms",
                    split,
                    numbers,
                    f"these rows are {what}, but the data's first row is {_describe(form, kind)}; one dataset holds "
                    "one form: convert these rows or move them to another file",
                )
            )
    return findings


def _describe(form: str, kind: str | None) -> str:
    return f"{form} ({kind})" if kind else form


def _ambiguous(splits: dict[str, Rows], data: DataSection) -> list[Finding]:
    """Rows that hold both a pair and a ranked column: which one to train on is the user's call."""
    if data.form != "auto":
        return []
    return [
        Finding(
            "error",
            "ambiguous-form",
            name,
            [],
            f"the rows hold both chosen / rejected and a ranked answers column '{data.ranked_column}'; set "
            "data.form: standard (or implicit) to train on the pairs, or data.form: ranked to pair the answers",
        )
        for name, rows in splits.items()
        if rows and {"chosen", "rejected", data.ranked_column} <= rows[0].keys()
    ]


def _no_form_fits(splits: dict[str, Rows], data: DataSection) -> Finding:
    name, rows = next(((n, r) for n, r in splits.items() if r), (next(iter(splits), "train"), []))
    found = ", ".join(rows[0]) if rows else "none"
    return Finding(
        "error",
        "unknown-form",
        name,
        [],
        f"no preference form fits the columns found ({found}). Name them in the recipe (or with --set on the "
        "data commands): data.prompt_column (a list joins several, e.g. [instruction, input]), "
        "data.chosen_column and data.rejected_column (e.g. question / response_j / response_k); or, for "
        "several scored answers per prompt, data.form: ranked with data.ranked_column (now "
        f"'{data.ranked_column}') and data.ranked_score_field; for a conversation with chosen / rejected answers, "
        "data.prompt_column naming the conversation column (read as sharegpt); for one judged answer a row, "
        "columns prompt / completion / label (unpaired)",
    )


# ---------------------------------------------------------------------------- one row at a time


def _convert_rows(splits: dict[str, Numbered], convert: Any) -> tuple[dict[str, Rows], list[Finding]]:
    """Every row through ``convert``; rows it refuses become one finding per (check, field, detail)."""
    converted: dict[str, Rows] = {}
    problems: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
    for name, rows in splits.items():
        converted[name] = []
        for number, row in rows:
            try:
                converted[name].append(convert(row))
            except RowProblem as problem:
                problems[(name, problem.check, problem.column, problem.detail)].append(number)
    return converted, _findings(problems)


def _findings(problems: dict[tuple[str, str, str, str], list[int]]) -> list[Finding]:
    """Refused rows, one error per (split, check, field, detail), each naming its rows."""
    return [
        Finding("error", check, name, rows, f"{column} {detail}")
        for (name, check, column, detail), rows in problems.items()
    ]


def _standard_pair(row: Row, prompt: Any, chosen: Any, rejected: Any) -> Row:
    """The row with its pair replaced, prompt / chosen / rejected first, the other columns kept."""
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        **{k: v for k, v in row.items() if k not in TEXT_COLUMNS},
    }


def _standard(row: Row, data: DataSection) -> Row:
    """A standard row; messages are checked (roles, content, an assistant answer), text is left to the linter."""
    values = [row.get(column) for column in TEXT_COLUMNS]
    if len({_kind_of(v) for v in values} - {None}) > 1:  # TRL would quietly take the prompt from the answers
        raise RowProblem(
            "mixed-forms", "prompt / chosen / rejected", "mix text and messages; give all three in one form"
        )
    if all(_kind_of(v) == "messages" for v in values):
        names = role_names(data, aliases=False)
        prompt = checked_prompt(checked_messages(values[0], "prompt", names), "prompt")
        chosen, rejected = (
            checked_answer(checked_messages(v, c, names), c) for v, c in zip(values[1:], TEXT_COLUMNS[1:], strict=True)
        )
        return _standard_pair(row, prompt, chosen, rejected)
    return row


def _implicit(row: Row, data: DataSection) -> Row:
    """chosen and rejected hold the prompt: text split where they part, messages before the last answer."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    kinds = (_kind_of(chosen), _kind_of(rejected))
    for kind, column in zip(kinds, ("chosen", "rejected"), strict=True):
        if kind is None:
            raise RowProblem("not-a-string", column, "must be text or a list of chat messages")
    if kinds[0] != kinds[1]:
        raise RowProblem("mixed-forms", "chosen / rejected", f"are {kinds[0]} and {kinds[1]}; give both in one form")
    if kinds[0] == "text":
        for value, column in ((chosen, "chosen"), (rejected, "rejected")):
            if not value.strip():
                raise RowProblem("empty-field", column, "is empty; fill it in or drop these rows")
        # extract_prompt needs a shared first character: without one it takes a trailing space as the prompt's end
        pair = _trl_extract_prompt(chosen, rejected) if chosen[0] == rejected[0] else {"prompt": ""}
        if not pair["prompt"].strip():
            raise RowProblem(
                "no-shared-prompt",
                "chosen / rejected",
                f"share no prefix to take as the prompt; if a column holds the prompt (columns: {', '.join(row)}), "
                "name it with data.prompt_column",
            )
        return _standard_pair(row, pair["prompt"], pair["chosen"], pair["rejected"])
    names = role_names(data, aliases=False)
    pair = _split_conversations(
        row, checked_messages(chosen, "chosen", names), checked_messages(rejected, "rejected", names)
    )
    given = row.get("prompt")  # ultrafeedback_binarized: the question again as text, beside the conversations
    if isinstance(given, str) and given.strip() != pair["prompt"][-1]["content"].strip():
        raise RowProblem(
            "prompt-differs",
            "prompt",
            "is not the conversations' last user turn before the answer, so it is unclear which prompt the answers "
            "answer; make them agree, or drop the prompt column",
        )
    return pair


def _split_conversations(row: Row, chosen: list[dict[str, str]], rejected: list[dict[str, str]]) -> Row:
    """Two whole conversations → the prompt (turns before the last assistant turn) and the two answers."""
    cuts = (last_assistant_turn(chosen, "chosen"), last_assistant_turn(rejected, "rejected"))
    if 0 in cuts:
        raise RowProblem(
            "no-shared-prompt", "chosen / rejected", "open with the answer: there is no turn before it to be the prompt"
        )
    pair = _trl_extract_prompt(chosen, rejected)  # TRL's semantics: the shared leading turns
    if not len(pair["prompt"]) == cuts[0] == cuts[1]:
        raise RowProblem(
            "differs-before-answer",
            "chosen / rejected",
            "differ before the last assistant turn; only the last answer may differ (the turns before it are "
            "the prompt)",
        )
    prompt = checked_prompt(pair["prompt"], "chosen / rejected")
    answers = (checked_answer(pair[column], column) for column in ("chosen", "rejected"))
    return _standard_pair(row, prompt, *answers)


def _trl_extract_prompt(chosen: Any, rejected: Any) -> dict[str, Any]:
    """TRL's own prompt extraction, so an implicit pair splits here exactly as TRL would split it.

    Imported on use: trl imports torch, seconds that files in other forms need not wait for."""
    from trl.data_utils import extract_prompt

    return extract_prompt({"chosen": chosen, "rejected": rejected})


def _hh(row: Row, data: DataSection) -> Row:
    """HH-RLHF transcripts → messages → split before the last assistant turn."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    for value, column in ((chosen, "chosen"), (rejected, "rejected")):
        if not isinstance(value, str):
            raise RowProblem("not-a-string", column, "must be HH-RLHF text ('\\n\\nHuman: …\\n\\nAssistant: …')")
    prompt = row.get("prompt")
    # A prompt column holding the transcript up to the last "Assistant:" (the full-hh-rlhf layout) goes in front
    head = prompt if isinstance(prompt, str) and not _is_hh(chosen) else ""
    return _split_conversations(row, _hh_messages(head + chosen, "chosen"), _hh_messages(head + rejected, "rejected"))


def _hh_messages(text: str, column: str) -> list[dict[str, str]]:
    """An HH-RLHF transcript as messages: Human turns are the user's, Assistant turns the assistant's."""
    parts = HH_TURN.split(text.lstrip())
    if parts[0].strip() or len(parts) < 3:
        raise RowProblem("hh-turns", column, "does not open with a '\\n\\nHuman:' turn")
    return [
        {"role": HH_ROLES[speaker], "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _sharegpt(row: Row, data: DataSection) -> Row:
    """A conversation column and its two answers → prompt messages and assistant answers."""
    column = _conversation_column(row) or CONVERSATION_COLUMNS[0]
    prompt = prompt_turns(row.get(column), column, data)
    chosen, rejected = (answer_turns(row.get(c), c, data) for c in ("chosen", "rejected"))
    return _standard_pair({k: v for k, v in row.items() if k != column}, prompt, chosen, rejected)


def _openai(row: Row, data: DataSection) -> Row:
    """OpenAI's preference JSONL row → the standard form; a non-empty ``input.tools`` is kept as a ``tools``
    column of JSON text (the column TRL's DPOTrainer hands the chat template), so it is not silently lost;
    training refuses such rows until it passes them on (``data.load_preference_splits``)."""
    given = row.get("input")
    if not isinstance(given, dict):
        raise RowProblem("not-messages", "input", "must be an object with a messages list (OpenAI's preference form)")
    prompt = prompt_turns(given.get("messages"), "input.messages", data)
    chosen = answer_turns(row.get("preferred_output"), "preferred_output", data)
    rejected = answer_turns(row.get("non_preferred_output"), "non_preferred_output", data)
    rest = {k: v for k, v in row.items() if k not in OPENAI_COLUMNS}
    if given.get("tools"):
        rest["tools"] = json.dumps(given["tools"], ensure_ascii=False)
    return _standard_pair(rest, prompt, chosen, rejected)


def _unpaired(row: Row, data: DataSection) -> Row:
    """An unpaired row with its label a boolean and messages checked; text is left to the linter."""
    prompt, completion = row.get("prompt"), row.get("completion")
    kinds = {_kind_of(prompt), _kind_of(completion)} - {None}
    if len(kinds) > 1:
        raise RowProblem("mixed-forms", "prompt / completion", "mix text and messages; give both in one form")
    if kinds == {"messages"}:
        names = role_names(data, aliases=False)
        prompt = checked_prompt(checked_messages(prompt, "prompt", names), "prompt")
        completion = checked_answer(checked_messages(completion, "completion", names), "completion")
    label = row.get("label")
    if not isinstance(label, bool):
        label = LABELS.get(str(label).strip().lower()) if isinstance(label, (str, int)) else None
    if label is None:
        raise RowProblem("not-a-label", "label", "must be true (a desirable answer) or false (an undesirable one)")
    rest = {k: v for k, v in row.items() if k not in UNPAIRED_COLUMNS}
    return {"prompt": prompt, "completion": completion, "label": label, **rest}


def _completion(row: Row, data: DataSection) -> Row:
    """A prompt / completion row, nobody's judgement: an unpaired row labelled desirable (what SFT learns)."""
    return _unpaired({**row, "label": True}, data)


def _chat(row: Row, data: DataSection) -> Row:
    """A conversation → the turns before its last assistant turn as the prompt, that turn as the completion."""
    column = _conversation_column(row) or CONVERSATION_COLUMNS[0]
    turns = chat_turns(row.get(column), column, data)
    answer = last_assistant_turn(turns, column)
    rest = {k: v for k, v in row.items() if k != column}
    prompt = checked_prompt(turns[:answer], column)
    return {"prompt": prompt, "completion": checked_answer(turns[answer:], column), "label": True, **rest}


CONVERTERS: dict[str, Callable[[Row, DataSection], Row]] = {
    "standard": _standard,
    "implicit": _implicit,
    "hh": _hh,
    "sharegpt": _sharegpt,
    "openai": _openai,
    "unpaired": _unpaired,
    "completion": _completion,
    "chat": _chat,
}


def _with_system(row: Row, column: str) -> Row:
    """The system column's text as the prompt's first message, the column itself dropped.

    Text rows become messages even where the column is empty, so that every row of the file has one form."""
    system = row.get(column)
    rest = {k: v for k, v in row.items() if k != column}
    if system is not None and not isinstance(system, str):
        raise RowProblem("not-a-string", column, "must be text: the system prompt")
    turn = [{"role": "system", "content": system}] if system and system.strip() else []
    prompt = rest.get("prompt")
    if isinstance(prompt, str):
        answers = {
            k: [{"role": "assistant", "content": rest[k]}] for k in ANSWER_COLUMNS if isinstance(rest.get(k), str)
        }
        return {**rest, "prompt": turn + [{"role": "user", "content": prompt}], **answers}
    if isinstance(prompt, list):
        if turn and prompt and prompt[0].get("role") == "system":
            raise RowProblem(
                "two-system-prompts",
                f"{column} / prompt",
                "both hold a system prompt; keep one (data.system_column: null ignores the column)",
            )
        return {**rest, "prompt": turn + prompt}
    return rest  # the linter reports the prompt


ANSWER_COLUMNS = ("chosen", "rejected", "completion")


# ---------------------------------------------------------------------------- ranked answers


@dataclass
class _RankedGroup:
    """One prompt's answers (text, score) and the columns its pairs keep."""

    prompt: Any
    answers: list[tuple[str, float]]
    extra: Row


def _pair_ranked(splits: dict[str, Numbered], data: DataSection) -> tuple[dict[str, Rows], list[Finding], str]:
    """Every prompt's answers → pairs by ``data.ranked_pairs``; returns the pairs, findings and a count line."""
    converted: dict[str, Rows] = {}
    problems: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
    prompts = answers = skipped = 0
    for name, rows in splits.items():
        converted[name] = []
        for group in _ranked_groups(rows, data, name, problems):
            prompts += 1
            answers += len(group.answers)
            pairs = ranked_pairs([score for _, score in group.answers], data)
            skipped += not pairs
            converted[name] += [_ranked_row(group, chosen, rejected) for chosen, rejected in pairs]
    rule = (
        "the best answer against the worst"
        if data.ranked_pairs == "best_vs_worst"
        else f"every two answers whose scores differ by {data.ranked_margin:g} or more"
    )
    pairs_made = sum(len(rows) for rows in converted.values())
    counts = (
        f"ranked: {prompts} prompts, {answers} answers -> {pairs_made} pairs ({rule}; {data.ranked_better} "
        f"{data.ranked_score_field} is better); prompts without a pair: {skipped} (one answer, or none far enough "
        "apart). Lint rows below count these pairs."
    )
    return converted, _findings(problems), counts


def _ranked_groups(
    rows: Numbered, data: DataSection, split: str, problems: dict[tuple[str, str, str, str], list[int]]
) -> list[_RankedGroup]:
    """Answers per prompt: a list column per row, or one answer per row grouped by prompt (first seen first)."""
    column, score_field = data.ranked_column, data.ranked_score_field
    groups: dict[str, _RankedGroup] = {}
    for number, row in rows:
        try:
            prompt = row.get("prompt")
            if _kind_of(prompt) == "messages":
                prompt = checked_prompt(checked_messages(prompt, "prompt"), "prompt")
            value = row.get(column)
            if isinstance(value, list):
                answers = [_scored(a, data, f"{column}[{i}]") for i, a in enumerate(value)]
                extra = {k: v for k, v in row.items() if k not in (column, "prompt")}
                groups[f"row {number}"] = _RankedGroup(prompt, answers, extra)
                continue
            answer = _scored({data.ranked_text_field: value, score_field: row.get(score_field)}, data, column)
        except RowProblem as problem:
            problems[(split, problem.check, problem.column, problem.detail)].append(number)
            continue
        asked = [row.get("prompt"), row.get(data.system_column) if data.system_column else None]  # one prompt
        key = json.dumps(asked, ensure_ascii=False, sort_keys=True, default=str)
        extra = {k: v for k, v in row.items() if k not in (column, score_field, "prompt")}
        group = groups.setdefault(key, _RankedGroup(prompt, [], extra))
        group.answers.append(answer)
        group.extra = {k: v for k, v in group.extra.items() if extra.get(k) == v}  # prompt-level columns only
    return list(groups.values())


def _scored(answer: Any, data: DataSection, where: str) -> tuple[str, float]:
    """(text, score) of one answer; the score as a number whatever the file stored it as (CSV holds text)."""
    text_field, score_field = data.ranked_text_field, data.ranked_score_field
    if not isinstance(answer, dict):
        raise RowProblem("ranked-answer", where, f"must be an object with '{text_field}' and '{score_field}'")
    text, score = answer.get(text_field), answer.get(score_field)
    if not isinstance(text, str) or not text.strip():
        raise RowProblem("ranked-answer", where, f"has no text in '{text_field}' (data.ranked_text_field)")
    try:
        number = float(score) if not isinstance(score, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise RowProblem("ranked-answer", where, f"has no numeric '{score_field}' (data.ranked_score_field)")
    return text, number


def ranked_pairs(scores: list[float], data: DataSection) -> list[tuple[int, int]]:
    """(better, worse) answer indices by the recipe's rule; ties never pair, and on equal scores the earlier
    listed answer counts as the better one, so the same file gives the same pairs."""
    sign = 1 if data.ranked_better == "higher" else -1
    order = sorted(range(len(scores)), key=lambda i: -sign * scores[i])
    if not order:
        return []
    if data.ranked_pairs == "best_vs_worst":
        best, worst = order[0], order[-1]
        return [(best, worst)] if scores[best] != scores[worst] else []
    return [
        (better, worse)
        for position, better in enumerate(order)
        for worse in order[position + 1 :]
        if abs(scores[better] - scores[worse]) >= data.ranked_margin
    ]


def _ranked_row(group: _RankedGroup, chosen: int, rejected: int) -> Row:
    """One pair; with a messages prompt each answer is one assistant turn."""
    (chosen_text, chosen_score), (rejected_text, rejected_score) = group.answers[chosen], group.answers[rejected]
    if _kind_of(group.prompt) == "messages":
        chosen_value: Any = [{"role": "assistant", "content": chosen_text}]
        rejected_value: Any = [{"role": "assistant", "content": rejected_text}]
    else:
        chosen_value, rejected_value = chosen_text, rejected_text
    row = _standard_pair(group.extra, group.prompt, chosen_value, rejected_value)
    return {**row, "chosen_score": chosen_score, "rejected_score": rejected_score}


# ---------------------------------------------------------------------------- pairs → unpaired


def unpaired_rows(rows: Rows) -> Rows:
    """Standard pairs as unpaired rows, by TRL's own ``unpair_preference_dataset``: every chosen answer a row
    labelled true, then every rejected one labelled false, the other columns repeated (what KTO reads)."""
    import datasets
    from datasets.utils import logging as datasets_logging
    from trl.data_utils import unpair_preference_dataset

    if not rows:
        return []
    shown = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()  # a progress bar for a file's rows is noise in a data command
    try:
        unpaired = unpair_preference_dataset(datasets.Dataset.from_list(rows)).to_list()
    finally:
        if shown:
            datasets_logging.enable_progress_bar()
    return [{**{c: row.pop(c) for c in UNPAIRED_COLUMNS}, **row} for row in unpaired]
