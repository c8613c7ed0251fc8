"""Does the tuned model *answer* better? Numbers for a generated answer, not a feeling.

Reward accuracy says whether the adapter ranks held-out answers correctly; it says nothing about
what the model writes when asked. These checks score a generated answer on what a reader of a
Japanese chat model notices first, and each one is plain string arithmetic, so a report can be
checked by hand:

- ``japanese_share``: Japanese characters (kana, kanji) among the answer's letters and digits
  (spaces and punctuation do not count). An English or byte-noise answer scores near 0.
- ``names_topic``: the asked topic (the row's ``topic``) appears in the answer, compared after
  NFKC and case folding. ``None`` when the row names no topic.
- ``repetition``: the share of characters covered by a character n-gram (``LOOP_NGRAM`` long)
  that occurs more than once. A greedy loop of a small model scores near 1; ordinary prose near 0.
- ``distinct_2``: distinct character bigrams / all bigrams (low = repetitive).
- ``ends_sentence``: the answer ends with sentence-final punctuation, not cut mid-word.
- ``length``: characters.

Characters, not tokens: Japanese has no spaces, and a tokenizer-free measure compares two models
with different vocabularies on equal terms.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Any

LOOP_NGRAM = 8  # long enough that set phrases (「とは、」「です。」) do not count as a loop
MOSTLY_LOOP = 0.5  # an answer with more than half its characters in repeated n-grams is "mostly a loop"
SENTENCE_END = "。．.！!？?」』)）"
CHECKS = ("japanese_share", "names_topic", "repetition", "distinct_2", "ends_sentence", "length")


def is_japanese(char: str) -> bool:
    code = ord(char)
    return (
        0x3040 <= code <= 0x30FF  # hiragana, katakana
        or 0x3400 <= code <= 0x4DBF  # CJK extension A
        or 0x4E00 <= code <= 0x9FFF  # CJK unified ideographs
        or 0xFF66 <= code <= 0xFF9F  # half-width katakana
        or char in "々〆ヵヶ"
    )


def japanese_share(text: str) -> float:
    """Japanese characters among letters and digits (0.0 for an answer with none of either)."""
    counted = [c for c in text if unicodedata.category(c)[0] in "LN"]
    return sum(is_japanese(c) for c in counted) / len(counted) if counted else 0.0


def repetition(text: str, n: int = LOOP_NGRAM) -> float:
    """Share of characters inside a character n-gram that occurs more than once."""
    text = "".join(text.split())
    if len(text) < n:
        return 0.0
    grams = [text[i : i + n] for i in range(len(text) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(text)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[i : i + n] = [True] * n
    return sum(covered) / len(text)


def distinct_2(text: str) -> float:
    text = "".join(text.split())
    bigrams = [text[i : i + 2] for i in range(len(text) - 1)]
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def check_answer(answer: str, topic: str | None = None) -> dict[str, Any]:
    """Every check for one answer (see the module docstring for what each means)."""
    stripped = answer.strip()
    return {
        "japanese_share": round(japanese_share(stripped), 4),
        "names_topic": None if not topic else _fold(topic) in _fold(stripped),
        "repetition": round(repetition(stripped), 4),
        "distinct_2": round(distinct_2(stripped), 4),
        "ends_sentence": bool(stripped) and stripped[-1] in SENTENCE_END,
        "length": len(stripped),
    }


def summarise_checks(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over answers, plus the share that are mostly a loop (``repetition`` > ``MOSTLY_LOOP``)."""
    if not checks:
        return {}
    named = [c["names_topic"] for c in checks if c["names_topic"] is not None]
    return {
        "answers": len(checks),
        "japanese_share": round(sum(c["japanese_share"] for c in checks) / len(checks), 4),
        "names_topic": round(sum(named) / len(named), 4) if named else None,
        "repetition": round(sum(c["repetition"] for c in checks) / len(checks), 4),
        "mostly_loop": round(sum(c["repetition"] > MOSTLY_LOOP for c in checks) / len(checks), 4),
        "distinct_2": round(sum(c["distinct_2"] for c in checks) / len(checks), 4),
        "ends_sentence": round(sum(c["ends_sentence"] for c in checks) / len(checks), 4),
        "length": round(sum(c["length"] for c in checks) / len(checks), 1),
    }
