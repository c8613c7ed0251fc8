"""Judges of sampled answers, one module each: ``rules`` (the answer checks as gates and a score), ``implicit``
(the adapter's own DPO reward, length-corrected), ``reward_model`` (a sequence-classification reward model) and
``endpoint`` (an OpenAI-compatible chat endpoint asked pairwise). ``judge_for`` picks one from its spec
(``judge.kind`` or ``--judge``) once; nothing else asks which judge it is."""

from __future__ import annotations

from pathlib import Path

from dpo_recipe.config.schema import JudgeSection
from dpo_recipe.config.vocabulary import split_judge_spec
from dpo_recipe.errors import JudgeError
from dpo_recipe.judges.base import Judge


def check_judge(spec: str, settings: JudgeSection) -> None:
    """What can be checked of a judge before anything is sampled or trained (``dpo-recipe iterate``): its spec,
    an endpoint's key variable, a reward model's number of labels (its config only)."""
    try:
        kind, where = split_judge_spec(spec)
    except ValueError as exc:
        raise JudgeError(f"--judge: {exc}.") from None
    if kind == "openai":
        from dpo_recipe.judges.endpoint import EndpointJudge

        EndpointJudge(str(where), settings)
    elif kind == "reward-model":
        from dpo_recipe.judges.reward_model import checked_config

        checked_config(str(where))


def checked_settings(spec: str | None, recipe: str | None, overrides: tuple[str, ...]) -> JudgeSection:
    """The judge keys ``--judge`` judges with (``config.loader.judge_section``: ``--judge-recipe``'s, or the
    defaults, with ``--set judge.KEY=VALUE``), checked with the judge itself (``check_judge``) before anything
    loads; ``--judge-recipe`` or ``--set`` without ``--judge`` is refused (``eval``, ``compare``)."""
    from dpo_recipe.config.loader import judge_section

    if spec is None:
        if recipe is not None or overrides:
            given = "--judge-recipe" if recipe is not None else f"--set {overrides[0]}"
            raise JudgeError(f"{given} sets the judge of --judge, and no --judge is given; add --judge KIND.")
        return JudgeSection()
    settings = judge_section(recipe, overrides)
    check_judge(spec, settings)
    return settings


def judge_for(spec: str, settings: JudgeSection, *, adapter: str | None = None, journal: Path | None = None) -> Judge:
    """The judge ``spec`` names (``rules``, ``implicit``, ``reward-model:PATH_OR_ID``, ``openai:URL``), with the
    recipe's ``judge`` keys. ``adapter``: the adapter the answers were sampled from (``implicit`` scores with it);
    ``journal``: where ``openai`` keeps the replies it has had, so a stopped run goes on."""
    try:
        kind, where = split_judge_spec(spec)
    except ValueError as exc:
        raise JudgeError(f"--judge: {exc}.") from None
    if kind == "rules":
        from dpo_recipe.judges.rules import RulesJudge

        return RulesJudge(settings)
    if kind == "implicit":
        if adapter is None:
            raise JudgeError(
                "--judge implicit scores answers by the adapter that wrote them (beta x (log pi - log pi_ref)), but "
                "these answers were sampled from a base model (pairs sample --recipe), which has no implicit reward: "
                "every answer would tie. Sample with --adapter RUN, or pick another judge."
            )
        from dpo_recipe.judges.implicit import load_implicit_judge

        return load_implicit_judge(adapter, settings)
    if kind == "reward-model":
        from dpo_recipe.judges.reward_model import RewardModelJudge

        return RewardModelJudge(str(where), settings)
    from dpo_recipe.judges.endpoint import EndpointJudge

    return EndpointJudge(str(where), settings, journal)
