"""What every judge shares: TRL's completion and prompt forms read, and judge_for's spec."""

from __future__ import annotations

import pytest

from dpo_recipe.config.schema import JudgeSection
from dpo_recipe.errors import JudgeError
from dpo_recipe.judges import judge_for
from dpo_recipe.judges.base import completion_text, prompt_question
from dpo_recipe.judges.endpoint import EndpointJudge
from dpo_recipe.judges.rules import RulesJudge


def test_completions_and_prompts_in_trls_forms() -> None:
    assert completion_text("答え。") == "答え。"
    assert completion_text([{"role": "assistant", "content": "答え。"}]) == "答え。"
    with pytest.raises(TypeError):
        completion_text(3)
    chat = [{"role": "system", "content": "丁寧に。"}, {"role": "user", "content": "AIとは？"}]
    assert (prompt_question("AIとは？"), prompt_question(chat)) == ("AIとは？", "AIとは？")


def test_judge_for_reads_the_spec_once() -> None:
    assert isinstance(judge_for("rules", JudgeSection()), RulesJudge)
    endpoint = judge_for("openai:http://127.0.0.1:8080/v1", JudgeSection())
    assert isinstance(endpoint, EndpointJudge) and endpoint.url == "http://127.0.0.1:8080/v1/chat/completions"
    with pytest.raises(JudgeError, match=r"--judge: unknown judge 'llm'; known: rules, implicit"):
        judge_for("llm", JudgeSection())
    with pytest.raises(JudgeError, match=r"--judge: reward-model needs where it is: reward-model:PATH_OR_ID"):
        judge_for("reward-model", JudgeSection())
    with pytest.raises(JudgeError, match="--judge: rules takes nothing after it"):
        judge_for("rules:strict", JudgeSection())
    with pytest.raises(JudgeError, match="sampled from a base model .* which has no implicit reward"):
        judge_for("implicit", JudgeSection(), adapter=None)
