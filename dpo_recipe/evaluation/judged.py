"""The judged win rate: the tuned model's held-out answers against the base model's, question by question, by a
judge (``eval.judge`` at the end of training, ``dpo-recipe eval --judge``); and one run's answers against
another's (``judge_runs``: ``dpo-recipe compare --judge``, the rounds table of ``iterate``), counted the same way.

Reward accuracy says how the adapter ranks answers it is given; whether its own answers got better is another
question. The answers judged are those the held-out report already wrote (``scoring.checked_answers``: one
question per held-out topic, greedy, base and tuned under the same decoding), so judging costs only the judge.
Each question is one comparison:

- a pairwise judge (``openai``) is asked both orders, base shown first and tuned shown first
  (``EndpointJudge.judge_groups``): the tuned answer wins when both orders pick it, loses when both pick the
  base's, and ties when the orders disagree (the judge preferred a position, not an answer);
- a scoring judge (``rules``, ``implicit``, ``reward-model``) scores each answer alone; the higher score wins and
  scores within ``TIE`` of each other, that included, tie. The judges keep 6 decimals of a score, so ``TIE``
  (1e-6) is one unit of the last one kept: two scores that may differ by their rounding alone tie.

The win rate is (wins + ties / 2) / questions, a tie half a win (AlpacaEval's convention), with Wilson's 95 %
interval over the questions, the reward accuracy's (``dpo_preference.wilson_interval``). A question then scores
0, 1/2 or 1, whose variance is at most the binomial's, so with ties the interval is if anything too wide.

``implicit`` is the tuned adapter's own reward, beta x (log pi - log pi_ref): the model judges its own answers.
It says whether what the adapter writes is what its preference rates above the base's answer, not whether a
reader would prefer it; the report names the judge beside the figure.

An endpoint's replies are appended to a journal beside the report (``journal_path``) as they arrive; a judge that
fails half-way (an endpoint down) raises ``JudgeError`` and the same command asks only what it has not asked yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpo_recipe.config.schema import JudgeSection
from dpo_recipe.evaluation.scoring import questions_across_topics
from dpo_recipe.judges.base import Group, Judge, Verdict
from dpo_recipe.training.base_cache import BaseCache

TIE = 1e-6  # scores this close are the same score (the judges keep 6 decimals: one unit of the last)
OUTCOMES = ("win", "tie", "loss")  # of the tuned answer against the base's


def journal_path(report: Path) -> Path:
    """Where an endpoint's replies are kept while the answers beside ``report`` are judged."""
    return report.with_name(f"{report.stem}.judge-replies.jsonl")


def answer_judge(
    spec: str,
    settings: JudgeSection,
    *,
    model: Any,
    tokenizer: Any,
    beta: float,
    max_length: int,
    cache: BaseCache | None,
    journal: Path,
    adapter: str,
) -> Judge:
    """The judge ``spec`` names. ``implicit`` scores with ``model`` as it is in memory (the tuned adapter on, its
    reference the base with it off), not a second copy loaded from disk; ``adapter`` names it in the report."""
    from dpo_recipe.judges import judge_for

    if spec.strip() != "implicit":
        return judge_for(spec, settings, journal=journal)
    from dpo_recipe.judges.implicit import ImplicitJudge

    judge = ImplicitJudge(model, tokenizer, beta=beta, max_length=max_length, settings=settings, cache=cache)
    judge.adapter = adapter
    return judge


def outcome(base: Verdict, tuned: Verdict) -> str:
    """The tuned answer's ``win`` / ``tie`` / ``loss`` against the base's, by their scores."""
    difference = round(tuned.score - base.score, 9)  # 0.500001 - 0.5 is 1.0000000000287557e-06 in floats
    return "win" if difference > TIE else "loss" if difference < -TIE else "tie"


def tally(outcomes: list[str]) -> dict[str, Any]:
    """Win / tie / loss counts, the win rate (ties half) and its Wilson 95 % interval."""
    from dpo_recipe.evaluation.metrics.dpo_preference.dpo_preference import wilson_interval

    n = len(outcomes)
    counts = {name: outcomes.count(name) for name in OUTCOMES}
    won = counts["win"] + counts["tie"] / 2
    return {
        "questions": n,
        "wins": counts["win"],
        "ties": counts["tie"],
        "losses": counts["loss"],
        "win_rate": won / n if n else None,
        "win_rate_ci95": wilson_interval(won, n),
    }


def judge_answers(judge: Judge, generations: list[dict[str, Any]], prompts: list[Any]) -> dict[str, Any]:
    """Judge each generation's ``tuned`` answer against its ``base`` answer to ``prompts`` (the rows' own prompts,
    text or messages, in order). Each generation gets its ``judged`` entry (outcome, both verdicts); returns
    ``tally``'s figures with the judge and its own summary."""
    groups = [
        Group(prompt, [g["base"], g["tuned"]], number, {} if g.get("topic") is None else {"topic": g["topic"]})
        for number, (g, prompt) in enumerate(zip(generations, prompts, strict=True), 1)
    ]
    outcomes = []
    for g, (base, tuned) in zip(generations, judge.judge_groups(groups), strict=True):
        outcomes.append(outcome(base, tuned))
        g["judged"] = {
            "outcome": outcomes[-1],
            "base": {"score": base.score, "reason": base.reason},
            "tuned": {"score": tuned.score, "reason": tuned.reason},
        }
    return {"judge": judge.spec, **tally(outcomes), "judge_figures": dict(judge.summary)}


def judge_runs(judge: Judge, first: Any, later: Any) -> dict[str, Any] | None:
    """``later``'s tuned answers against ``first``'s: two runs' held-out ``generations`` (``metrics.json``), on
    the questions both answered, ``first`` in the base's place (``judge_answers``, so the same outcomes, ties
    and interval as a judged eval). The judge reads each question as its prompt. None when no question is
    shared (runs evaluated on other data or another ``eval.num_generations`` pick)."""
    answered = {g["question"]: g for g in _answers(first)}
    matched = [(answered[g["question"]], g) for g in _answers(later) if g["question"] in answered]
    if not matched:
        return None
    generations = [{"base": old["tuned"], "tuned": new["tuned"], "topic": new.get("topic")} for old, new in matched]
    return judge_answers(judge, generations, [new["question"] for _, new in matched])


def _answers(generations: Any) -> list[dict[str, Any]]:
    """The generations that hold a question and a tuned answer as text: a hand-edited or older ``metrics.json``
    may hold anything, and what is not an answer is not judged."""
    if not isinstance(generations, list):
        return []
    return [
        g
        for g in generations
        if isinstance(g, dict) and isinstance(g.get("question"), str) and isinstance(g.get("tuned"), str)
    ]


def judge_report(report: dict[str, Any], rows: list[dict[str, Any]], judge: Judge) -> dict[str, Any]:
    """The judged comparison of a held-out report's answers (``report["generations"]``, written from ``rows``) by
    ``judge`` (``answer_judge``), ``report["judged"]`` once done. An endpoint's journal of replies is removed then
    (every reply is in the report); a link there, or a file where a judge that keeps none would keep one, is not
    the judge's and stays."""
    generations = report["generations"]
    prompts = [row["prompt"] for row in questions_across_topics(rows, len(generations))]  # the rows they answered
    print(f"Judging {len(generations)} held-out answers of the tuned model against the base's with {judge.spec} ...")
    report["judged"] = judge_answers(judge, generations, prompts)
    journal = getattr(judge, "journal", None)  # EndpointJudge's
    if journal is not None and not journal.is_symlink():
        journal.unlink(missing_ok=True)
    return report["judged"]
