"""The preference-data linter: cheap checks that run before any model is loaded.

Every finding names its check, split and rows, so a user can open the file at the right line.
Errors make training refuse to start; warnings are printed and left to the user's judgement.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

TEXT_COLUMNS = ("prompt", "chosen", "rejected")
LENGTH_BIAS_LIMIT = 0.85  # chosen longer in more (or fewer, 1 - x) of the pairs than this
MIN_PAIRS_FOR_STATS = 20
JAPANESE_SHARE_MIN = 0.3  # a field with less Japanese than this counts as non-Japanese

_JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]")
_LETTERS = re.compile(r"[^\W\d_]")


@dataclass
class Finding:
    severity: str  # "error" or "warning"
    check: str
    split: str
    rows: list[int] = field(default_factory=list)  # 1-based rows within the split
    message: str = ""

    def rows_text(self, limit: int = 8) -> str:
        if not self.rows:
            return "-"
        shown = ", ".join(str(r) for r in self.rows[:limit])
        return shown + (f" (+{len(self.rows) - limit} more)" if len(self.rows) > limit else "")


@dataclass
class LintReport:
    findings: list[Finding]
    stats: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)  # how the rows were read: form, column mapping, ranked pairs
    form: str | None = None  # the data form the rows were read in ('unpaired': prompt / completion / label rows)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def table(self) -> str:
        if not self.findings:
            return "No findings."
        lines = ["severity | check | split | rows | message", "--- | --- | --- | --- | ---"]
        lines += [f"{f.severity} | {f.check} | {f.split} | {f.rows_text()} | {f.message}" for f in self.findings]
        return "\n".join(lines)


def normalise(text: str) -> str:
    """Text as the equality and duplicate checks compare it.

    NFKC folds full / half width; whitespace is collapsed so spacing changes don't count; invisible
    format characters (Unicode category Cf: zero-width spaces and joiners, BOMs, direction marks) are
    dropped, so a ``rejected`` that is ``chosen`` plus a U+200B is still the same answer.
    """
    visible = "".join(c for c in unicodedata.normalize("NFKC", text) if unicodedata.category(c) != "Cf")
    return " ".join(visible.split()).casefold()


def as_text(value: Any) -> str | None:
    """Text of a field in the standard (string) or conversational (messages list) form."""
    if isinstance(value, str):
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value)
    ):
        return "\n".join(m["content"] for m in value)
    return None


def japanese_share(text: str) -> float:
    letters = _LETTERS.findall(text)
    return len(_JAPANESE.findall(text)) / len(letters) if letters else 0.0


def looks_like_mojibake(text: str) -> bool:
    if "\ufffd" in text:
        return True
    for wrong_codec in ("cp1252", "cp1254", "latin-1"):
        try:
            repaired = text.encode(wrong_codec).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
        if repaired != text:
            return True
    return False


def lint(splits: dict[str, list[dict[str, Any]]]) -> LintReport:
    findings: list[Finding] = []
    stats: dict[str, dict[str, Any]] = {}
    for split, rows in splits.items():
        missing = [c for c in TEXT_COLUMNS if rows and c not in rows[0]] if rows else []
        if not rows:
            findings.append(Finding("error", "empty-split", split, [], f"split '{split}' has no rows"))
            continue
        if missing:
            have = ", ".join(rows[0]) or "none"
            findings.append(
                Finding(
                    "error",
                    "missing-column",
                    split,
                    [],
                    f"missing column(s) {', '.join(missing)} (found: {have}); rename them in the file or map them "
                    "with data.prompt_column / data.chosen_column / data.rejected_column",
                )
            )
            continue
        texts = _row_texts(split, rows, findings)
        findings.extend(_pair_checks(split, texts))
        stats[split] = _stats(texts)
        findings.extend(_language_and_length_checks(split, texts, stats[split]))
    findings.extend(_cross_split_prompts(splits))
    return LintReport(findings, stats)


UNPAIRED_TEXT_COLUMNS = ("prompt", "completion")


def lint_unpaired(splits: dict[str, list[dict[str, Any]]]) -> LintReport:
    """The checks that make sense for unpaired rows (prompt / completion / label, labels already booleans):
    text fields as for pairs, one answer judged both ways (an error), duplicates, prompts in two splits."""
    findings: list[Finding] = []
    stats: dict[str, dict[str, Any]] = {}
    for split, rows in splits.items():
        if not rows:
            findings.append(Finding("error", "empty-split", split, [], f"split '{split}' has no rows"))
            continue
        texts = _row_texts(split, rows, findings, UNPAIRED_TEXT_COLUMNS)
        seen: dict[tuple[str, ...], tuple[int, Any]] = {}
        conflicting, duplicates = [], []
        for number, t in texts.items():
            key = tuple(normalise(t[c]) for c in UNPAIRED_TEXT_COLUMNS)
            label = rows[number - 1].get("label")
            if key in seen:
                (conflicting if seen[key][1] != label else duplicates).append(number)
            else:
                seen[key] = (number, label)
        if conflicting:
            findings.append(
                Finding(
                    "error",
                    "label-conflict",
                    split,
                    conflicting,
                    "the same prompt and completion as an earlier row, with the other label; keep one judgement",
                )
            )
        if duplicates:
            findings.append(
                Finding(
                    "warning", "duplicate-row", split, duplicates, "duplicate of an earlier row after normalisation"
                )
            )
        labels = [rows[n - 1].get("label") is True for n in texts]
        if labels and len(set(labels)) == 1:
            findings.append(
                Finding(
                    "warning",
                    "one-label",
                    split,
                    [],
                    f"every row is labelled {str(labels[0]).lower()}; KTO learns from desirable and undesirable "
                    "answers together, so training refuses a training split of one label",
                )
            )
        stats[split] = {
            "rows": len(texts),
            "desirable_share": sum(labels) / max(1, len(labels)),
            "japanese_rows": {
                c: sum(japanese_share(t[c]) >= JAPANESE_SHARE_MIN for t in texts.values()) / max(1, len(texts))
                for c in UNPAIRED_TEXT_COLUMNS
            },
        }
    findings.extend(_cross_split_prompts(splits))
    return LintReport(findings, stats)


def _row_texts(
    split: str, rows: list[dict[str, Any]], findings: list[Finding], columns: tuple[str, ...] = TEXT_COLUMNS
) -> dict[int, dict[str, str]]:
    """Rows whose text fields are usable text, keyed by 1-based row number."""
    bad: dict[str, list[int]] = defaultdict(list)
    texts: dict[int, dict[str, str]] = {}
    for number, row in enumerate(rows, start=1):
        values = {}
        for column in columns:
            text = as_text(row.get(column))
            if text is None:
                bad[f"not-a-string:{column}"].append(number)
            elif not text.strip():
                bad[f"empty-field:{column}"].append(number)
            elif not normalise(text):  # str.strip() keeps U+200B and its kin: the field looks filled but says nothing
                bad[f"empty-after-normalise:{column}"].append(number)
            elif looks_like_mojibake(text):
                bad[f"mojibake:{column}"].append(number)
            values[column] = text
        if all(isinstance(v, str) and normalise(v) for v in values.values()):
            texts[number] = values  # mojibake rows stay in: they are still pairs
    advice = {
        "not-a-string": "must be a string (or a list of chat messages); fix or drop these rows",
        "empty-field": "is empty; fill it in or drop these rows",
        "empty-after-normalise": "is empty once invisible format characters (Unicode Cf: zero-width spaces and "
        "joiners, BOMs, direction marks) and whitespace are dropped; fill it in or drop these rows",
        "mojibake": "looks like mojibake (UTF-8 read as cp1252/cp1254/latin-1, or U+FFFD); re-export the file as UTF-8",
    }
    for key, numbers in bad.items():
        check, column = key.split(":")
        findings.append(Finding("error", check, split, numbers, f"{column} {advice[check]}"))
    return texts


def _pair_checks(split: str, texts: dict[int, dict[str, str]]) -> Iterable[Finding]:
    same = [n for n, t in texts.items() if normalise(t["chosen"]) == normalise(t["rejected"])]
    if same:
        yield Finding(
            "error",
            "chosen-equals-rejected",
            split,
            same,
            "chosen and rejected are the same text after NFKC / width / invisible-character normalisation; such a pair "
            "teaches nothing",
        )
    exact: dict[tuple[str, ...], list[int]] = defaultdict(list)
    folded: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for n, t in texts.items():
        exact[tuple(t[c] for c in TEXT_COLUMNS)].append(n)
        folded[tuple(normalise(t[c]) for c in TEXT_COLUMNS)].append(n)
    exact_rows = sorted(n for group in exact.values() if len(group) > 1 for n in group[1:])
    if exact_rows:
        yield Finding("warning", "duplicate-pair", split, exact_rows, "exact duplicate of an earlier row; drop it")
    near_rows = sorted(n for group in folded.values() if len(group) > 1 for n in group[1:] if n not in set(exact_rows))
    if near_rows:
        yield Finding(
            "warning",
            "near-duplicate-pair",
            split,
            near_rows,
            "duplicate of an earlier row after normalisation (width, case, spacing, invisible characters); drop it",
        )


def _stats(texts: dict[int, dict[str, str]]) -> dict[str, Any]:
    pairs = list(texts.values())
    shares = {c: [japanese_share(p[c]) for p in pairs] for c in TEXT_COLUMNS}
    chosen_longer = sum(len(p["chosen"]) > len(p["rejected"]) for p in pairs)
    return {
        "pairs": len(pairs),
        "japanese_rows": {c: sum(s >= JAPANESE_SHARE_MIN for s in v) / max(1, len(v)) for c, v in shares.items()},
        "chosen_longer_share": chosen_longer / max(1, len(pairs)),
        "mean_length_ratio": sum(len(p["rejected"]) / len(p["chosen"]) for p in pairs) / max(1, len(pairs)),
    }


def _language_and_length_checks(
    split: str, texts: dict[int, dict[str, str]], stats: dict[str, Any]
) -> Iterable[Finding]:
    if stats["japanese_rows"]["prompt"] > 0.5:  # a Japanese dataset: prompts and chosen stay Japanese
        for column in ("prompt", "chosen"):
            rows = [n for n, t in texts.items() if japanese_share(t[column]) < JAPANESE_SHARE_MIN]
            if rows:
                yield Finding(
                    "warning",
                    "non-japanese",
                    split,
                    rows,
                    f"{column} is mostly non-Japanese in a Japanese dataset; check these rows",
                )
    share = stats["chosen_longer_share"]
    if stats["pairs"] >= MIN_PAIRS_FOR_STATS and not (1 - LENGTH_BIAS_LIMIT <= share <= LENGTH_BIAS_LIMIT):
        yield Finding(
            "warning",
            "length-bias",
            split,
            [],
            f"chosen is longer than rejected in {share:.0%} of pairs: a model can win by length alone; "
            "add rejected answers of similar length that are wrong in content",
        )


def _cross_split_prompts(splits: dict[str, list[dict[str, Any]]]) -> Iterable[Finding]:
    names = list(splits)
    for i, first in enumerate(names):
        seen = {normalise(t): n for n, r in enumerate(splits[first], 1) if (t := as_text(r.get("prompt")))}
        for second in names[i + 1 :]:
            rows = [
                n for n, r in enumerate(splits[second], 1) if (t := as_text(r.get("prompt"))) and normalise(t) in seen
            ]
            if rows:
                yield Finding(
                    "warning",
                    "prompt-in-both-splits",
                    second,
                    rows,
                    f"prompt also appears in split '{first}': held-out scores will be inflated",
                )
