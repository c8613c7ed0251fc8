"""dpo-recipe eval --adapter DIR [--base MODEL] [--data SOURCE] [--split test] [--out report.json]
    accelerate launch --multi_gpu --num_processes 2 -m dpo_recipe.evaluation --adapter DIR ...

Training's loss says how the adapter fits the pairs it saw; this module says how it ranks pairs
it never saw, and whether that beats the base. It orchestrates: processes split the pairs, each
scores its share with ``packing.score_packed`` (the same packed pass the trainer's reference uses,
so only completion positions go through the vocabulary-sized LM head), and the main process
gathers them, summarises them with the ``dpo_preference`` metric (overall, by rejection type, by
domain) and renders Markdown. One pass gives each answer's log-prob under the tuned model
(adapter on) and the base (adapter off, the DPO reference): that yields the implicit rewards and,
from the base alone, the "before" log-likelihood accuracy. A reference-free objective (SimPO,
ORPO) is scored by its own implicit reward, beta x mean log-prob, and the report names it.
Charts are drawn by ``plots``, the base-versus-tuned answers by ``answers``. ``build_parser`` is
the one definition of the flags.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import zip_longest
from pathlib import Path
from typing import Any

from dpo_recipe.config.schema import EvalSection
from dpo_recipe.data.tokens import encode_pair
from dpo_recipe.training.base_cache import BaseCache
from dpo_recipe.utils.stopwatch import Stopwatch

METRIC_DIR = Path(__file__).resolve().parent / "metrics" / "dpo_preference"


BREAKDOWNS = ("rejection_type", "domain")  # row columns the report is broken down by, when the data has them


def load_metric() -> Any:
    """The ``dpo_preference`` metric shipped in this package, as an ``evaluate`` module."""
    import evaluate

    return evaluate.load(str(METRIC_DIR))


def score_pairs(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    max_length: int,
    batch_size: int,
    progress: bool = True,
    cache: BaseCache | None = None,
    reference: tuple[list[float], list[float]] | None = None,
) -> list[dict[str, Any]]:
    """Per-pair log-probs under the tuned model and the base (adapter disabled), in ``rows`` order.

    Each record holds the ``dpo_preference`` metric's inputs, plus the row's breakdown keys and
    topic. Rows are tokenized as TRL tokenizes them (``tokens.encode_pair``) and truncated as it
    truncates them, so the token counts are those training optimised. The base's half comes from
    ``cache`` when an earlier run on the same base scored the same pairs (then one forward a pair, not two),
    or from ``reference`` (chosen, rejected), the base's log-probs of these rows already in memory.
    Call it inside the autocast the model's forward runs in (the key records it).
    """
    from dpo_recipe.training.packing import SCORING_TOKENS, score_packed, truncated

    cache = cache or BaseCache(None)
    pairs = [vars(encode_pair(tokenizer, row)) for row in rows]
    key = ""
    if reference is None:  # the ids the model is given, pairs a row (a row's length moves half-precision sums), rows
        # a forward
        key = cache.key(model, [truncated(pair, max_length) for pair in pairs], rows=batch_size, tokens=SCORING_TOKENS)
        cached = cache.read_logps(key, len(pairs))
        reference = None if cached is None else (cached[0].tolist(), cached[1].tolist())
    scores = score_packed(
        model,
        pairs,
        max_length,
        batch_size,
        policy=True,
        reference=reference is None,
        progress_desc="Scoring held-out pairs" if progress else None,
    )
    if reference is None:
        cache.write_logps(key, scores.reference)
        reference = (scores.reference[0].tolist(), scores.reference[1].tolist())
    policy_chosen, policy_rejected = (t.tolist() for t in scores.policy)
    reference_chosen, reference_rejected = reference
    scored = []
    for j, (pair, row) in enumerate(zip(pairs, rows, strict=True)):
        _, chosen, rejected = truncated(pair, max_length)
        scored.append(
            {
                "policy_chosen_logps": policy_chosen[j],
                "policy_rejected_logps": policy_rejected[j],
                "reference_chosen_logps": reference_chosen[j],
                "reference_rejected_logps": reference_rejected[j],
                "chosen_tokens": len(chosen),
                "rejected_tokens": len(rejected),
                **{key: row[key] for key in (*BREAKDOWNS, "topic") if key in row},
            }
        )
    return scored


def implicit_reward(loss_type: str | list[str]) -> tuple[bool, str]:
    """Whether the objective's implicit reward is reference-free, and its description for the report.

    DPO's losses reward beta x (policy - reference) log-prob; SimPO and ORPO, which train without a
    reference, beta x mean log-prob per completion token (TRL's CPO / ORPO trainers' reward).
    """
    from dpo_recipe.config.vocabulary import is_reference_free

    names = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    if is_reference_free(names):  # a reference-free loss trains alone (losses.mixing_problem)
        return True, f"{names[0]}: beta x mean log-prob"
    return False, "dpo: beta x (policy - reference) log-prob"


def summarise(scored: list[dict[str, Any]], beta: float, loss_type: str | list[str] = "sigmoid") -> dict[str, Any]:
    """The metric over all records (``overall``) and per value of each breakdown (``by_<key>``), with the
    implicit reward of ``loss_type`` (``implicit_reward``), named under ``"reward"``.

    Also writes each record's ``reward_margin`` into it, for the margin histogram.
    """
    metric = load_metric()
    inputs = list(metric.features)
    reference_free, reward = implicit_reward(loss_type)

    def compute(subset: list[dict[str, Any]]) -> dict[str, Any]:
        columns = {k: [s[k] for s in subset] for k in inputs}
        return metric.compute(**columns, beta=beta, reference_free=reference_free)

    report: dict[str, Any] = {"beta": beta, "reward": reward, "overall": compute(scored)}
    for s in scored:
        if reference_free:
            margin = s["policy_chosen_logps"] / max(s["chosen_tokens"], 1)
            margin -= s["policy_rejected_logps"] / max(s["rejected_tokens"], 1)
        else:
            margin = (s["policy_chosen_logps"] - s["reference_chosen_logps"]) - (
                s["policy_rejected_logps"] - s["reference_rejected_logps"]
            )
        s["reward_margin"] = beta * margin
    for key in BREAKDOWNS:
        groups: dict[str, list] = defaultdict(list)
        for s in scored:
            if key in s:
                groups[str(s[key])].append(s)
        if groups:
            report[f"by_{key}"] = {name: compute(group) for name, group in sorted(groups.items())}
    return report


def shared_scores(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    max_length: int,
    batch_size: int,
    *,
    cache: BaseCache | None = None,
    reference: tuple[list[float], list[float]] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """``score_pairs`` of ``rows`` with each process scoring a shard; every process gets all records, in
    ``rows`` order (so every process can take the same decision on them). ``reference``: the base's
    log-probs of all ``rows``; ``progress``: a bar on the main process."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    with state.split_between_processes(list(enumerate(rows))) as shard:
        mine = None if reference is None else tuple([side[i] for i, _ in shard] for side in reference)
        scored = score_pairs(
            model,
            tokenizer,
            [r for _, r in shard],
            max_length,
            batch_size,
            progress=progress and state.is_main_process,
            cache=cache,
            reference=mine,
        )
        tagged = [(i, s) for (i, _), s in zip(shard, scored, strict=True)]
    return [s for _, s in sorted(gather_object(tagged), key=lambda item: item[0])]


class StepScorer:
    """The held-out pairs ``eval.steps`` scores during training: the base's half once (from the base cache when
    an earlier run scored them), the tuned half at every call. Every process returns the same numbers."""

    def __init__(
        self,
        tokenizer: Any,
        rows: list[dict[str, Any]],
        *,
        beta: float,
        max_length: int,
        batch_size: int,
        loss_type: str | list[str],
        cache: BaseCache | None = None,
    ) -> None:
        self.tokenizer, self.rows, self.cache = tokenizer, rows, cache
        self.beta, self.max_length, self.batch_size, self.loss_type = beta, max_length, batch_size, loss_type
        self.reference: tuple[list[float], list[float]] | None = None

    def __call__(self, model: Any) -> dict[str, Any]:
        """``summarise``'s ``overall`` for ``model`` as it is now; call it inside the forward's autocast."""
        settings = {"cache": self.cache, "reference": self.reference}
        scored = shared_scores(model, self.tokenizer, self.rows, self.max_length, self.batch_size, **settings)
        if self.reference is None:
            self.reference = tuple([s[f"reference_{side}_logps"] for s in scored] for side in ("chosen", "rejected"))
        return summarise(scored, self.beta, self.loss_type)["overall"]


def evaluate_adapter(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    *,
    beta: float,
    max_length: int,
    settings: EvalSection,
    loss_type: str | list[str] = "sigmoid",
    cache: BaseCache | None = None,
    stopwatch: Stopwatch | None = None,
) -> dict[str, Any] | None:
    """Score ``rows`` split across processes; the main process returns the report, others None.

    ``cache`` (``base_cache.default_cache()`` in ``train`` and ``eval``) keeps the base's log-probs
    and answers, which are the same every run on that base; ``stopwatch`` times scoring and answers.

    The report: ``summarise``'s keys, ``per_pair`` (``score_pairs``'s records with their reward
    margin), ``generations`` (held-out prompts spread over the topics, answered by the base and the tuned
    model with each answer's checks) and ``answer_checks`` (their summary and the decoding used).
    """
    from accelerate import PartialState

    state, stopwatch = PartialState(), stopwatch or Stopwatch()
    with stopwatch.phase("held-out scoring"):
        scored = shared_scores(model, tokenizer, rows, max_length, settings.batch_size, cache=cache, progress=True)
    if not state.is_main_process:
        return None
    report = summarise(scored, beta, loss_type)
    report["per_pair"] = scored
    if settings.num_generations:
        with stopwatch.phase("answers"):
            report["generations"], report["answer_checks"] = checked_answers(model, tokenizer, rows, settings, cache)
    return report


def questions_across_topics(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Distinct questions to answer, spread over the topics: the first question of each topic, then the second
    of each, and so on (without a topic column, each distinct prompt once), ``limit`` at most. Up to one a
    topic the pick is the first row of each, so asking for more questions keeps the ones asked before."""
    by_topic: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for row in rows:
        question = str(row["prompt"])
        if question not in seen:
            seen.add(question)
            by_topic.setdefault(str(row.get("topic", question)), []).append(row)
    rounds = zip_longest(*by_topic.values())
    return [row for round_ in rounds for row in round_ if row is not None][:limit]


def checked_answers(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], settings: EvalSection, cache: BaseCache | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Base and tuned answers to held-out prompts, each scored by ``answer_checks``, and their summary."""
    from dpo_recipe.evaluation.answer_checks import check_answer, summarise_checks
    from dpo_recipe.evaluation.answers import greedy_answers

    decoding = {
        "repetition_penalty": settings.repetition_penalty,
        "no_repeat_ngram_size": settings.no_repeat_ngram_size,
    }
    picked = questions_across_topics(rows, settings.num_generations)
    print(f"Answering {len(picked)} held-out prompts, base and tuned, {settings.max_new_tokens} new tokens at most ...")
    answers = greedy_answers(model, tokenizer, picked, settings.max_new_tokens, cache=cache, **decoding)
    for answer, row in zip(answers, picked, strict=True):
        topic = row.get("topic")
        question = row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"]
        answer.update(question=question, topic=topic, base_checks=check_answer(answer["base"], topic))
        answer["tuned_checks"] = check_answer(answer["tuned"], topic)
    summary = {
        "decoding": {"greedy": True, "max_new_tokens": settings.max_new_tokens, **decoding},
        **{side: summarise_checks([a[f"{side}_checks"] for a in answers]) for side in ("base", "tuned")},
    }
    return answers, summary
