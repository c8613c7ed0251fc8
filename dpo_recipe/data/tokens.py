"""Turning a preference pair into token ids exactly as TRL's DPOTrainer does.

The dry run and the evaluation both use this, so the lengths they report and the
log-probabilities they score are those of the sequences the trainer optimises (a test checks
the evaluation's log-probs against TRL's own).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from trl.trainer.dpo_trainer import common_prefix_length


@dataclass
class EncodedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]  # completion only, EOS included
    rejected_ids: list[int]
    prompt_is_prefix: bool  # False when TRL would cut the prompt's tail


def row_tools(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A row's tool definitions as TRL's DPOTrainer reads its ``tools`` column: JSON text or a list; none when
    empty (an empty list makes some templates, Llama's, render tool boilerplate)."""
    tools = row.get("tools")
    return (json.loads(tools) if isinstance(tools, str) else tools) or None


def trainer_rows(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows cut to the ``columns`` a TRL trainer reads, and ``tools`` where any row has some (TRL gives them to
    the chat template; a row without has None), so tool definitions reach training as they reach scoring."""
    keep = (*columns, "tools") if any(row_tools(row) for row in rows) else columns
    return [{k: row.get(k) for k in keep} for row in rows]


def render_ids(
    tokenizer: Any, value: Any, *, generation_prompt: bool = False, tools: list[dict[str, Any]] | None = None
) -> list[int]:
    """Token ids of plain text (tokenized raw) or of messages (through the chat template, with ``tools``)."""
    if isinstance(value, str):
        return tokenizer(value)["input_ids"]
    rendered = tokenizer.apply_chat_template(
        value, tools=tools, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
    )
    return list(rendered["input_ids"])


def render_text(
    tokenizer: Any, value: Any, *, generation_prompt: bool = False, tools: list[dict[str, Any]] | None = None
) -> str:
    """Plain text as is, messages through the chat template (with ``tools``): the text the model reads."""
    if isinstance(value, str):
        return value
    return tokenizer.apply_chat_template(value, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)


def _pair_as_trl_sees_it(tokenizer: Any, row: dict[str, Any]) -> tuple[Any, Any, Any]:
    """prompt, chosen, rejected; plain-text completions get the EOS token appended (once), as TRL does."""
    prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    if isinstance(prompt, str):
        eos = tokenizer.eos_token
        chosen = chosen if chosen.endswith(eos) else chosen + eos
        rejected = rejected if rejected.endswith(eos) else rejected + eos
    return prompt, chosen, rejected


@dataclass
class RenderedPair:
    prompt: str
    chosen: str  # what rendering prompt + chosen adds after the rendered prompt
    rejected: str
    prompt_is_prefix: bool  # False when the chat template renders the prompt differently inside the whole turn


def render_pair(tokenizer: Any, row: dict[str, Any]) -> RenderedPair:
    """A pair as the text the model reads, and the chat template's round trip: the rendered prompt (with the
    generation prompt) must be a prefix of the rendered prompt + answer, or the answer's first tokens are not
    the ones training scores (a template that rewrites earlier turns, e.g. strips reasoning, breaks this)."""
    prompt, chosen, rejected = _pair_as_trl_sees_it(tokenizer, row)
    tools = row_tools(row)
    head = render_text(tokenizer, prompt, generation_prompt=True, tools=tools)
    whole = [render_text(tokenizer, prompt + answer, tools=tools) for answer in (chosen, rejected)]
    is_prefix = all(text.startswith(head) for text in whole)
    answers = [text[len(head) :] if text.startswith(head) else text for text in whole]
    return RenderedPair(head, answers[0], answers[1], is_prefix)


def encode_pair(tokenizer: Any, row: dict[str, Any]) -> EncodedPair:
    """A ``prompt`` / ``chosen`` / ``rejected`` row as TRL's DPOTrainer tokenizes it.

    Each of ``prompt + chosen`` and ``prompt + rejected`` is tokenized whole and split where it
    stops agreeing with the prompt; a ``tools`` column goes to the chat template, as TRL passes it.
    """
    prompt, chosen, rejected = _pair_as_trl_sees_it(tokenizer, row)
    tools = row_tools(row)
    prompt_ids = render_ids(tokenizer, prompt, generation_prompt=True, tools=tools)
    prompt_chosen = render_ids(tokenizer, prompt + chosen, tools=tools)
    prompt_rejected = render_ids(tokenizer, prompt + rejected, tools=tools)
    prompt_len = min(common_prefix_length(prompt_ids, prompt_chosen), common_prefix_length(prompt_ids, prompt_rejected))
    return EncodedPair(
        prompt_ids=prompt_ids[:prompt_len],
        chosen_ids=prompt_chosen[prompt_len:],
        rejected_ids=prompt_rejected[prompt_len:],
        prompt_is_prefix=prompt_len == len(prompt_ids),
    )


def length_percentiles(values: list[int]) -> dict[str, int]:
    """p50 / p95 / max by nearest rank: what a reader needs to choose max_length."""
    ordered = sorted(values) or [0]

    def at(q: float) -> int:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": at(0.5), "p95": at(0.95), "max": ordered[-1]}
