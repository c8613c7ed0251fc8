"""The implicit judge: beta x (log pi - log pi_ref) of a trained adapter, equal to the plain per-sequence
computation, with DICE's length penalty fitted so chosen and rejected answers are of one length on average."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from dpo_recipe.config.schema import JudgeSection
from dpo_recipe.data.tokens import encode_pair
from dpo_recipe.judges.implicit import fit_length_penalty, load_implicit_judge

PROMPTS = ["AIとは何ですか？", "AIとは何ですか？", "AIとは何ですか？", "CPUとは？", "CPUとは？"]
ANSWERS = [
    "AIは人工知能です。",
    "AIは、人間のように考える機械の研究分野です。",
    "はい。",
    "CPUは計算装置です。",
    "CPU。",
]


def test_no_penalty_when_the_best_are_not_longer() -> None:
    assert fit_length_penalty([[(1.0, 5), (0.0, 9)], [(2.0, 3), (1.0, 3)]]) == 0.0


def test_the_penalty_makes_the_length_gap_as_small_as_any_penalty_can() -> None:
    # reward grows with length: unpenalised the best answer is always the longest
    noises = (0.0, 0.05, -0.02), (0.03, 0.0, 0.01), (-0.01, 0.02, 0.04)
    groups = [[(0.1 * t + n, t) for t, n in zip((10, 20, 30), noise, strict=True)] for noise in noises]
    groups.append([(0.5, 12), (0.9, 12), (0.2, 12)])  # equal lengths: its gap is 0 whatever alpha is

    def best_worst_gap(a: float) -> float:
        gaps = []
        for answers in groups:
            scored = [r - a * t for r, t in answers]
            gaps.append(answers[scored.index(max(scored))][1] - answers[scored.index(min(scored))][1])
        return sum(gaps) / len(gaps)

    alpha = fit_length_penalty(groups)
    assert best_worst_gap(0.0) == 15.0
    assert abs(best_worst_gap(alpha)) <= min(abs(best_worst_gap(a / 1000)) for a in range(0, 1001)) + 1e-9
    assert abs(best_worst_gap(alpha)) < 5 and 0.09 < alpha < 0.11


def plain_logp(model: torch.nn.Module, ids: list[int], answer: list[int]) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + answer])).logits[0].float()
    logps = logits[len(ids) - 1 : -1].log_softmax(-1).gather(1, torch.tensor(answer)[:, None])
    return logps.sum().item()


def plain_reward(judge: Any, prompt: Any, answer: Any) -> tuple[float, int]:
    """beta x (log pi - log pi_ref) of ``answer`` after ``prompt``, one plain forward each (the adapter on, then
    off), and the answer's tokens: what the judge's packed, cached reward must equal."""
    pair = encode_pair(judge.tokenizer, {"prompt": prompt, "chosen": answer, "rejected": answer})
    model = judge.model.eval()
    policy = plain_logp(model, pair.prompt_ids, pair.chosen_ids)
    with model.disable_adapter():
        reference = plain_logp(model, pair.prompt_ids, pair.chosen_ids)
    return judge.beta * (policy - reference), len(pair.chosen_ids)


def test_rewards_equal_the_plain_computation(tiny_adapter: Path) -> None:
    judge = load_implicit_judge(str(tiny_adapter), JudgeSection(batch_size=2, length_correction=False))
    rewards, tokens = judge.rewards(PROMPTS, ANSWERS)
    for prompt, answer, reward, length in zip(PROMPTS, ANSWERS, rewards, tokens, strict=True):
        expected, answer_tokens = plain_reward(judge, prompt, answer)
        assert reward == pytest.approx(expected, abs=1e-4)
        assert length == answer_tokens
    assert any(abs(r) > 1e-4 for r in rewards)  # a trained adapter moves them
    scores = judge(prompts=PROMPTS, completions=[[{"role": "assistant", "content": a}] for a in ANSWERS])
    assert scores == pytest.approx(rewards, abs=1e-6)  # no length penalty asked for: the rewards themselves
    again, _ = judge.rewards(PROMPTS, ANSWERS)  # the reference half comes from the base cache the second time
    assert again == pytest.approx(rewards, abs=1e-6)
    penalised = load_implicit_judge(str(tiny_adapter), JudgeSection(batch_size=2))
    verdicts = penalised.verdicts(PROMPTS, ANSWERS, {})
    alpha = penalised.summary["length_penalty_alpha"]
    expected = [r - alpha * t for r, t in zip(rewards, tokens, strict=True)]
    assert [v.score for v in verdicts] == pytest.approx(expected, abs=1e-6)  # scores are kept to 6 decimals
    assert verdicts[0].reason.startswith(f"beta x log-ratio {rewards[0]:+.4f}, {tokens[0]} tokens")


def test_chat_prompts_are_scored_with_the_answer_as_the_assistant_turn(tiny_adapter: Path) -> None:
    """Messages prompts (chat data, the held-out answers of a conversational run): each answer is scored as the
    assistant's turn after them, through the chat template, as TRL scores a conversational pair; it raised a
    TypeError (a list plus a string) before."""
    judge = load_implicit_judge(str(tiny_adapter), JudgeSection(batch_size=2, length_correction=False))
    chats = [[{"role": "user", "content": prompt}] for prompt in PROMPTS]
    rewards, tokens = judge.rewards(chats, ANSWERS)
    for chat, answer, reward, length in zip(chats, ANSWERS, rewards, tokens, strict=True):
        expected, answer_tokens = plain_reward(judge, chat, [{"role": "assistant", "content": answer}])
        assert reward == pytest.approx(expected, abs=1e-4)
        assert length == answer_tokens
    assert tokens != judge.rewards(PROMPTS, ANSWERS)[1]  # the template's turn markers are scored too
