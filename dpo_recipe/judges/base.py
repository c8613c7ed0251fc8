"""What every judge gives: a verdict per answer (a score and the reason for it), one prompt's answers at a time.

Two kinds: a *scoring* judge scores each answer alone and is also a reward function with TRL 1.16's signature,
``judge(prompts=..., completions=..., **kwargs) -> list[float]`` (what ``GRPOTrainer`` and the experimental
``OnlineDPOTrainer`` take as ``reward_funcs``; a conversational completion arrives as
``[{"role": "assistant", "content": ...}]``, the dataset's other columns, ``topic`` for one, as keyword lists), so
a user can hand ``rules``, ``implicit`` or ``reward-model`` to TRL's own trainers. A *pairwise* judge (``openai``)
compares two answers at a time, so its score is the comparisons an answer won. ``onpolicy.pairing`` turns the
verdicts into pairs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Group:
    """One prompt and the answers sampled for it; ``row`` is its 1-based row in the samples file, ``columns`` the
    prompt's other columns (``topic``)."""

    prompt: Any  # text or chat messages
    answers: list[str]
    row: int
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    score: float
    reason: str


def completion_text(completion: Any) -> str:
    """A completion as TRL hands it to a reward function: text, or messages whose last turn is the answer."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"a completion is text or a list of messages, got {type(completion).__name__}")


def prompt_question(prompt: Any) -> str:
    """The question a prompt asks: the text, or the content of its last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1] if users else prompt[-1].get("content", ""))


class Judge(ABC):
    """A judge of one prompt's answers. ``spec`` is how it was named (``rules``, ``openai:URL``)."""

    spec: str
    summary: dict[str, Any]  # figures of the last judging (implicit: the length penalty fitted), for the report

    @abstractmethod
    def judge_groups(self, groups: Sequence[Group]) -> list[list[Verdict]]:
        """A verdict per answer of each group, in order."""


class ScoringJudge(Judge):
    """A judge that scores each answer on its own: also a TRL reward function (``__call__``)."""

    @abstractmethod
    def verdicts(self, prompts: list[Any], completions: list[str], columns: dict[str, list[Any]]) -> list[Verdict]:
        """One verdict per (prompt, completion); ``columns``: the other columns, a list per name, aligned."""

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        """TRL 1.16's reward-function signature: one score per completion (``completion_ids``, ``trainer_state``
        and columns the judge does not read are ignored)."""
        columns = {k: v for k, v in kwargs.items() if isinstance(v, list) and len(v) == len(completions)}
        texts = [completion_text(c) for c in completions]
        return [v.score for v in self.verdicts(list(prompts), texts, columns)]

    def judge_groups(self, groups: Sequence[Group]) -> list[list[Verdict]]:
        prompts = [g.prompt for g in groups for _ in g.answers]
        completions = [a for g in groups for a in g.answers]
        names = {name for g in groups for name in g.columns}
        columns = {name: [g.columns.get(name) for g in groups for _ in g.answers] for name in names}
        flat = self.verdicts(prompts, completions, columns)
        out, start = [], 0
        for g in groups:
            out.append(flat[start : start + len(g.answers)])
            start += len(g.answers)
        return out
