"""``rules``: the answer checks (``evaluation.answer_checks``) made a judge, offline and in milliseconds.

Two parts, as the published iterative methods filter and rank: **gates** (``judge.gates``: Japanese, no loop,
ends a sentence, length in range), which a chosen answer must pass whatever the judge (``failed_gates``; pairing
applies them to every judge), and a **soft score**, the weighted sum (``judge.rules``) of the checks, each in
[0, 1]: Japanese share, topic named (the prompt's ``topic`` column; 0 where there is none), 1 - repetition,
ends a sentence, and length (1 inside ``judge.min_chars``..``max_chars``, falling off in proportion outside).
The held-out answer checks measure the same things, so the rounds table also reports what this judge never
saw (held-out reward accuracy).
"""

from __future__ import annotations

from typing import Any

from dpo_recipe.config.schema import JudgeSection
from dpo_recipe.evaluation.answer_checks import check_answer
from dpo_recipe.judges.base import ScoringJudge, Verdict


def length_fit(length: int, settings: JudgeSection) -> float:
    """1 inside the recipe's length range, else the share of the bound reached (short) or not overshot (long)."""
    if length < settings.min_chars:
        return length / settings.min_chars
    if length > settings.max_chars:
        return settings.max_chars / length
    return 1.0


def rule_values(checks: dict[str, Any], settings: JudgeSection) -> dict[str, float]:
    """Each weighed check of one answer as a number in [0, 1], higher better."""
    return {
        "japanese_share": float(checks["japanese_share"]),
        "names_topic": float(bool(checks["names_topic"])),
        "repetition": 1.0 - float(checks["repetition"]),
        "ends_sentence": float(checks["ends_sentence"]),
        "length": length_fit(checks["length"], settings),
    }


def failed_gates(answer: str, settings: JudgeSection, topic: str | None = None) -> list[str]:
    """The gates of ``judge.gates`` that ``answer`` fails (empty: it may be chosen)."""
    checks = check_answer(answer, topic)
    failed = {
        "japanese": checks["japanese_share"] < settings.min_japanese_share,
        "no_loop": checks["repetition"] > settings.max_repetition,
        "ends_sentence": not checks["ends_sentence"],
        "length": not settings.min_chars <= checks["length"] <= settings.max_chars,
    }
    return [gate for gate in settings.gates if failed[gate]]


class RulesJudge(ScoringJudge):
    """The weighted answer checks; ``topic`` (a column, or a keyword list under TRL) names each answer's topic."""

    def __init__(self, settings: JudgeSection) -> None:
        self.spec = "rules"
        self.settings = settings
        self.summary: dict[str, Any] = {"weights": dict(settings.rules)}

    def verdicts(self, prompts: list[Any], completions: list[str], columns: dict[str, list[Any]]) -> list[Verdict]:
        topics = columns.get("topic") or [None] * len(completions)
        weights = self.settings.rules
        out = []
        for answer, topic in zip(completions, topics, strict=True):
            checks = check_answer(answer, str(topic) if topic is not None else None)
            values = rule_values(checks, self.settings)
            score = sum(weights.get(name, 0.0) * value for name, value in values.items())
            reason = (
                f"japanese {checks['japanese_share']:.2f}, "
                f"{'topic named' if checks['names_topic'] else 'topic not named' if topic else 'no topic'}, "
                f"repetition {checks['repetition']:.2f}, "
                f"{'ends a sentence' if checks['ends_sentence'] else 'cut off'}, {checks['length']} chars"
            )
            out.append(Verdict(round(score, 6), reason))
        return out
