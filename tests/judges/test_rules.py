"""The rules judge: the answer checks as gates and a weighted score, and a TRL reward function."""

from __future__ import annotations

import dataclasses

import pytest

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.config.schema import JudgeSection
from dpo_recipe.errors import RecipeError
from dpo_recipe.judges.base import Group
from dpo_recipe.judges.rules import RulesJudge, failed_gates, length_fit

GOOD = "機械学習とは、データから規則を学ぶ方法です。"
LOOP = "機械学習機械学習機械学習機械学習機械学習機械学習機械学習"
ENGLISH = "Machine learning is learning from data."


def test_the_gates_are_the_answer_checks_with_the_recipes_bounds() -> None:
    settings = JudgeSection()
    assert failed_gates(GOOD, settings) == []
    assert failed_gates(LOOP, settings) == ["no_loop", "ends_sentence"]
    assert failed_gates(ENGLISH, settings) == ["japanese"]
    assert failed_gates("短い。", dataclasses.replace(settings, gates=["length"])) == ["length"]  # 3 < min_chars 8
    assert failed_gates(LOOP, dataclasses.replace(settings, gates=[])) == []


def test_the_score_is_the_weighted_sum_of_the_checks() -> None:
    judge = RulesJudge(JudgeSection())
    good, loop, english = judge.verdicts(["Q"] * 3, [GOOD, LOOP, ENGLISH], {"topic": ["機械学習"] * 3})
    # japanese 1 + topic 1 + (1 - repetition 0) + ends 1 + length 0.5 x 1 (22 chars, in 8..400)
    assert good.score == pytest.approx(4.5)
    assert good.reason == "japanese 1.00, topic named, repetition 0.00, ends a sentence, 22 chars"
    assert loop.score == pytest.approx(1 + 1 + (1 - 1.0) + 0 + 0.5)
    assert english.score < good.score and "topic not named" in english.reason
    only_length = RulesJudge(JudgeSection(rules={"length": 2.0}))
    assert only_length.verdicts(["Q"], ["短い。"], {})[0].score == pytest.approx(2 * 3 / 8)
    assert length_fit(800, JudgeSection()) == 0.5


def test_it_is_a_trl_reward_function() -> None:
    judge = RulesJudge(JudgeSection())
    texts = judge(prompts=["Q", "Q"], completions=[GOOD, LOOP], completion_ids=[[1], [2]], topic=["機械学習"] * 2)
    chat = judge(
        prompts=[[{"role": "user", "content": "Q"}]] * 2,
        completions=[[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": LOOP}]],
        topic=["機械学習"] * 2,
        trainer_state=None,
    )
    assert texts == chat == [pytest.approx(4.5), pytest.approx(2.5)]
    groups = judge.judge_groups([Group("Q", [GOOD, LOOP], 1, {"topic": "機械学習"}), Group("Q2", [ENGLISH, GOOD], 2)])
    # ENGLISH, no topic column: japanese 0, topic 0, 1 - repetition 0.4706 ("learning" twice), ends 1, length 0.5
    assert [[v.score for v in g] for g in groups] == [texts, [pytest.approx(2.0294), pytest.approx(3.5)]]


def test_the_judge_keys_are_checked_with_the_recipe() -> None:
    with pytest.raises(RecipeError, match="judge.min_chars \\(400\\) must be below judge.max_chars \\(400\\)"):
        load_recipe("tiny-ja", ["judge.min_chars=400"])
    with pytest.raises(RecipeError, match=r"judge.rules.length: a weight must be >= 0, got -1.0"):
        load_recipe("tiny-ja", ["judge.rules={length: -1}"])
    with pytest.raises(RecipeError, match="judge.gates: unknown gate 'loop'"):
        load_recipe("tiny-ja", ["judge.gates=[loop]"])
