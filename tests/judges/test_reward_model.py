"""The reward-model judge on a tiny sequence-classification model built here: its scores are the model's own
logit on prompt and answer through the chat template, and a classifier of several labels is refused before its
weights load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dpo_recipe.config.schema import JudgeSection
from dpo_recipe.errors import JudgeError
from dpo_recipe.judges import judge_for
from dpo_recipe.judges.base import Group


def tiny_reward_model(tiny_model: Path, out: Path, num_labels: int = 1) -> Path:
    """The tiny model's tokenizer and a 2-layer Llama with a score head of ``num_labels`` outputs."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = LlamaConfig.from_pretrained(tiny_model, num_labels=num_labels, pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_scores_are_the_models_logit_on_the_rendered_conversation(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    where = tiny_reward_model(tiny_model, tmp_path / "rm")
    judge = judge_for(f"reward-model:{where}", JudgeSection(batch_size=2))
    answers = ["AIは人工知能です。", "はい。", "AIとは、人間のように考える機械を作る研究分野です。"]
    verdicts = judge.judge_groups([Group("AIとは何ですか？", answers, 1)])[0]
    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(where), AutoTokenizer.from_pretrained(where)
    for answer, verdict in zip(answers, verdicts, strict=True):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "AIとは何ですか？"}, {"role": "assistant", "content": answer}], tokenize=False
        )
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            alone = model(**ids).logits[0, 0].item()  # one row, no padding: the plain computation
        assert verdict.score == pytest.approx(alone, abs=1e-5)
        assert verdict.reason == f"reward model score {verdict.score:+.4f}"
    assert len({v.score for v in verdicts}) == 3
    trl_call = judge(prompts=["AIとは何ですか？"] * 3, completions=answers)
    assert trl_call == pytest.approx([v.score for v in verdicts], abs=1e-5)


def test_a_model_of_several_labels_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    where = tiny_reward_model(tiny_model, tmp_path / "classifier", num_labels=3)
    with pytest.raises(JudgeError) as err:
        judge_for(f"reward-model:{where}", JudgeSection())
    assert f"--judge reward-model:{where}: the model has 3 labels (LABEL_0, LABEL_1, LABEL_2): a classifier" in str(
        err.value
    )
    with pytest.raises(JudgeError, match="no model config could be read"):
        judge_for(f"reward-model:{tmp_path / 'missing'}", JudgeSection())


def test_a_causal_language_model_is_no_reward_model(tiny_model: Path) -> None:
    with pytest.raises(JudgeError, match=r"the model is a causal language model \(LlamaForCausalLM\), not a reward"):
        judge_for(f"reward-model:{tiny_model}", JudgeSection())
