"""``dpo-recipe pairs judge``: a judge's verdicts on each prompt's sampled answers, made into pairs the way the
published iterative methods make them, and written in the ``ranked`` data form training already reads.

For each prompt: empty answers and answers holding broken characters (U+FFFD: bytes that are no character, which
a small model writes and training's linter refuses, ``lint.looks_like_mojibake``) are left out and counted. Of
the others, the answers that pass every gate (``judge.gates``, ``judges.rules.failed_gates``: Japanese, no loop,
ends a sentence) may be chosen; the best-scored of them is chosen, the worst-scored answer of all is rejected (a
loop is a good rejected answer). A prompt gives no pair when no answer passes the gates, when the two tie (or are
the same text), or when the chosen one wins by no more than ``judge.min_margin``; each reason is counted. A judge
that ties everything leaves no pair at all, and that is an error (nothing would train), not an empty file.

A kept pair is one row: ``prompt``, ``responses`` (the chosen and the rejected answer, each ``{text, score,
reason}``, so ``data.ranked_pairs: best_vs_worst`` reads back exactly this pair), ``judged`` (every answer with
its score, reason and failed gates, kept but not trained on), the prompt's own columns (``topic``), ``judge``
and ``sampled_from``. ``dpo-recipe train`` and ``data lint`` detect the form by the ``responses`` column.
The file appears whole, and only when there are pairs. The mean length of the chosen and rejected answers is
reported: a judge that favours long answers shows here first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dpo_recipe.config.schema import JudgeSection
from dpo_recipe.data.lint import looks_like_mojibake, normalise
from dpo_recipe.data.sources import checked_out, write_rows
from dpo_recipe.errors import JudgeError
from dpo_recipe.judges.base import Group, Judge, Verdict
from dpo_recipe.judges.rules import failed_gates
from dpo_recipe.onpolicy.sampling import COMPLETIONS, SAMPLED_FROM, partial_path, read_samples

RESPONSES = "responses"  # the ranked form's column of scored answers (data.ranked_column's default)


@dataclass
class PairingSummary:
    """What one judging made: counts of pairs and of prompts without one, by reason, and the pairs' lengths."""

    judge: str
    prompts: int
    answers: int
    pairs: int
    ties: int
    under_margin: int
    no_answer_passes: int
    unreadable: int  # prompts with fewer than 2 readable answers
    broken_answers: int  # answers empty or holding U+FFFD / mojibake: never in a pair
    chosen_chars: float | None
    rejected_chars: float | None
    judge_figures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        lengths = (
            f"; mean length chosen {self.chosen_chars:.0f} / rejected {self.rejected_chars:.0f} chars"
            if self.pairs
            else ""
        )
        return (
            f"{self.judge}: {self.prompts} prompts, {self.answers} answers -> {self.pairs} pairs; dropped: "
            f"{self.ties} ties, {self.under_margin} under judge.min_margin, {self.no_answer_passes} with no answer "
            f"passing the gates, {self.unreadable} with fewer than 2 readable answers ({self.broken_answers} answers "
            f"empty or holding broken characters){lengths}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def groups_of(rows: list[dict[str, Any]]) -> list[Group]:
    """The samples file's rows as the judges take them: prompt, answers, 1-based row, the prompt's own columns."""
    skip = ("prompt", COMPLETIONS, SAMPLED_FROM)
    return [
        Group(row["prompt"], list(row[COMPLETIONS]), number, {k: v for k, v in row.items() if k not in skip})
        for number, row in enumerate(rows, 1)
    ]


def make_pairs(
    rows: list[dict[str, Any]], verdicts: list[list[Verdict]], judge: Judge, settings: JudgeSection
) -> tuple[list[dict[str, Any]], PairingSummary]:
    """The pair rows (ranked form) and the summary; see the module docstring for the rule."""
    pairs: list[dict[str, Any]] = []
    ties = under = no_pass = unreadable = broken = 0
    for group, judged in zip(groups_of(rows), verdicts, strict=True):
        topic = group.columns.get("topic")
        gates = [failed_gates(answer, settings, str(topic) if topic is not None else None) for answer in group.answers]
        readable = [
            k for k, answer in enumerate(group.answers) if normalise(answer) and not looks_like_mojibake(answer)
        ]
        broken += len(group.answers) - len(readable)
        if len(readable) < 2:
            unreadable += 1
            continue
        passing = [k for k in readable if not gates[k]]
        if not passing:
            no_pass += 1
            continue
        chosen = max(passing, key=lambda k: (judged[k].score, -k))  # the first listed wins a tie
        rejected = min(readable, key=lambda k: (judged[k].score, -k))  # the last listed loses one
        margin = judged[chosen].score - judged[rejected].score
        if margin <= 0 or normalise(group.answers[chosen]) == normalise(group.answers[rejected]):
            ties += 1
            continue
        if margin <= settings.min_margin:
            under += 1
            continue

        pairs.append(
            {
                "prompt": group.prompt,
                RESPONSES: [_answer(group, judged, gates, chosen), _answer(group, judged, gates, rejected)],
                **group.columns,
                "judge": judge.spec,
                "judged": [_answer(group, judged, gates, k) for k in range(len(group.answers))],
                SAMPLED_FROM: rows[group.row - 1].get(SAMPLED_FROM),
            }
        )
    chosen_chars = [len(p[RESPONSES][0]["text"].strip()) for p in pairs]
    rejected_chars = [len(p[RESPONSES][1]["text"].strip()) for p in pairs]
    summary = PairingSummary(
        judge.spec,
        len(rows),
        sum(len(r[COMPLETIONS]) for r in rows),
        len(pairs),
        ties,
        under,
        no_pass,
        unreadable,
        broken,
        round(sum(chosen_chars) / len(pairs), 1) if pairs else None,
        round(sum(rejected_chars) / len(pairs), 1) if pairs else None,
        dict(judge.summary),
    )
    return pairs, summary


def _answer(group: Group, judged: list[Verdict], gates: list[list[str]], k: int) -> dict[str, Any]:
    """Answer ``k`` of ``group`` as the pairs file holds it: text, score, reason, the gates it failed."""
    return {"text": group.answers[k], "score": judged[k].score, "reason": judged[k].reason, "gates_failed": gates[k]}


def run_judge(
    samples: Path, out: Path, settings: JudgeSection, spec: str | None = None, *, overwrite: bool = False
) -> PairingSummary:
    """Judge ``samples`` (a ``pairs sample`` file) with ``spec`` (default ``judge.kind``) into ``out``; raises
    JudgeError, writing nothing, when no pair is left."""
    from dpo_recipe.judges import judge_for

    journal = partial_path(out.expanduser())
    out = checked_out(out, str(samples), overwrite=overwrite or journal.is_file())
    rows = read_samples(samples)
    if overwrite:
        journal.unlink(missing_ok=True)
    adapters = {(row.get(SAMPLED_FROM) or {}).get("adapter") for row in rows}
    if len(adapters) > 1:
        raise JudgeError(
            f"{samples}: its answers come from {len(adapters)} different policies ({', '.join(map(str, adapters))}); "
            "judge one policy's sample at a time."
        )
    too_few = [number for number, row in enumerate(rows, 1) if len(row[COMPLETIONS]) < 2]
    if too_few or not rows:
        raise JudgeError(
            f"{samples}: "
            + (f"rows {', '.join(map(str, too_few[:5]))} hold fewer than 2 answers" if too_few else "no rows")
            + "; a judge ranks a prompt's answers against each other. Sample with --n 2 or more (4 is usual)."
        )
    judge = judge_for(spec or settings.kind, settings, adapter=next(iter(adapters)), journal=journal)
    verdicts = judge.judge_groups(groups_of(rows))
    pairs, summary = make_pairs(rows, verdicts, judge, settings)
    if not pairs:
        raise JudgeError(
            f"{samples}: no pairs; nothing to train. {summary.line()}. "
            + (
                "Every judged prompt's answers tied: the judge told none apart (an endpoint that always answers the "
                "same identifier ties both orders). "
                if 0 < summary.ties == summary.prompts - summary.unreadable - summary.no_answer_passes
                else ""
            )
            + "Sample more answers (--n), lower judge.min_margin, loosen judge.gates, or use another judge."
        )
    write_rows(pairs, out, "parquet" if out.suffix.lower() == ".parquet" else "jsonl")
    journal.unlink(missing_ok=True)
    return summary
