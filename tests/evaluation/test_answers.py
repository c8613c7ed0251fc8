"""Greedy answers: the prompt as training showed it, the same text every time, base beside tuned."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.evaluation.answers import greedy_answer, greedy_answers, greedy_batch, prompt_text
from dpo_recipe.models.loading import load_model, load_tokenizer
from dpo_recipe.models.tiny import CHAT_TEMPLATE


@pytest.fixture(scope="module")
def tiny(tiny_model: Path):
    recipe = load_recipe("tiny-ja", tiny_overrides(tiny_model))
    return load_model(recipe.model).eval(), load_tokenizer(recipe.model)


def test_prompt_text_keeps_plain_text_and_renders_messages(tiny) -> None:
    _, tokenizer = tiny
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert prompt_text(tokenizer, "AIとは何ですか？") == "AIとは何ですか？"
    messages = [{"role": "user", "content": "AIとは何ですか？"}]
    assert prompt_text(tokenizer, messages) == "<|im_start|>user\nAIとは何ですか？<|im_end|>\n<|im_start|>assistant\n"


def test_greedy_answer_is_the_argmax_continuation_without_the_prompt(tiny) -> None:
    model, tokenizer = tiny
    text = "AIとは何ですか？"
    answer = greedy_answer(model, tokenizer, text, max_new_tokens=6)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(6):  # the same six steps by hand: append the most likely next token
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    expected = tokenizer.decode(ids[0, len(tokenizer(text)["input_ids"]) :], skip_special_tokens=True).strip()
    assert answer == expected and answer
    assert greedy_answer(model, tokenizer, text, max_new_tokens=6) == answer


def test_greedy_answers_put_the_base_beside_the_tuned_model(tiny) -> None:
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    tuned = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 2.0)
    rows = [{"prompt": "AIとは何ですか？"}, {"prompt": [{"role": "user", "content": "機械学習とは？"}]}]
    answers = greedy_answers(tuned, tokenizer, rows, max_new_tokens=8)
    assert [a["prompt"] for a in answers] == [prompt_text(tokenizer, r["prompt"]) for r in rows]
    for answer in answers:
        assert answer["base"] == greedy_answer(model, tokenizer, answer["prompt"], 8)  # adapter off = the base
        assert answer["tuned"] == greedy_answer(tuned, tokenizer, answer["prompt"], 8)
    assert any(a["base"] != a["tuned"] for a in answers)  # the adapter is really on for "tuned"


def test_generation_stops_at_the_chat_templates_turn_end(tiny_model) -> None:
    from dpo_recipe.config.schema import ModelSection
    from dpo_recipe.evaluation.answers import turn_end_ids
    from dpo_recipe.models.loading import load_tokenizer

    chatml = load_tokenizer(ModelSection(name_or_path=str(tiny_model)))
    assert turn_end_ids(chatml) == [chatml.eos_token_id]  # <|im_end|> is already EOS
    gemma = load_tokenizer(ModelSection(name_or_path=str(tiny_model), chat_template="gemma"))
    assert turn_end_ids(gemma) == [gemma.eos_token_id]  # the tiny vocabulary spells <end_of_turn> in pieces
    gemma.add_special_tokens({"additional_special_tokens": ["<end_of_turn>"]})
    assert turn_end_ids(gemma) == [gemma.eos_token_id, gemma.convert_tokens_to_ids("<end_of_turn>")]


def test_repetition_penalty_counts_the_answer_not_the_question(tiny) -> None:
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    model, tokenizer = tiny
    texts = ["AIとは何ですか？", "機械学習とは何ですか？ 教師あり学習との違いも教えてください。"]
    answers = greedy_batch(model, tokenizer, texts, 12, repetition_penalty=3.0)  # one batch, left-padded
    for text, answer in zip(texts, answers, strict=True):
        ids = tokenizer(text, return_tensors="pt")
        penalty = RepetitionPenaltyLogitsProcessor(3.0, prompt_ignore_length=ids["input_ids"].shape[1])
        with torch.no_grad():  # transformers' own processor, told where the question ends
            processors = LogitsProcessorList([penalty])
            out = model.generate(**ids, max_new_tokens=12, do_sample=False, logits_processor=processors)
        expected = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        assert answer == expected
    plain = greedy_answer(model, tokenizer, texts[1], 12)
    assert greedy_answer(model, tokenizer, texts[1], 12, repetition_penalty=3.0) != plain  # the penalty acts


@pytest.mark.parametrize("vocab", [262_144, 50])
@pytest.mark.parametrize(("temperature", "top_p"), [(0.8, 0.95), (1.3, 0.5), (0.5, 0.999), (1.0, 1.0)])
def test_nucleus_sampling_gives_transformers_temperature_and_top_p_scores(
    vocab: int, temperature: float, top_p: float
) -> None:
    """Score for score what TemperatureLogitsWarper then TopPLogitsWarper give: peaked rows (the nucleus among the
    candidates), a flat row (it is not: transformers' own warper), Gemma 3's vocabulary and one under the
    candidate count."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from dpo_recipe.evaluation.answers import NucleusSampling

    generator = torch.Generator().manual_seed(0)
    scores = torch.cat([torch.randn(6, vocab, generator=generator) * 4, torch.zeros(1, vocab)])
    input_ids = torch.zeros(len(scores), 3, dtype=torch.long)
    tempered = TemperatureLogitsWarper(temperature)(input_ids, scores.clone())
    expected = tempered if top_p >= 1.0 else TopPLogitsWarper(top_p)(input_ids, tempered)
    got = NucleusSampling(temperature, top_p, candidates=64)(input_ids, scores.clone())
    assert torch.equal(got[:-1], expected[:-1])
    kept, kept_expected = (got > -float("inf")).sum(-1), (expected > -float("inf")).sum(-1)
    # the flat row: which of its equal scores stay is the sort's choice; and where top_p x the vocabulary is a
    # whole number (50 x 0.5) the boundary token's mass above it is top_p itself, summed in another order
    assert abs(kept[-1] - kept_expected[-1]) <= (1 if (vocab * top_p).is_integer() else 0)
    if top_p < 1.0:
        assert (kept[:-1] < vocab).all() and kept[-1] >= vocab * top_p


def test_sampled_answers_are_transformers_own_sampling(tiny) -> None:
    """The same seed gives the same sampled tokens through NucleusSampling as through generate's own warpers."""
    from dpo_recipe.evaluation.answers import generated_ids, sampled_batch

    model, tokenizer = tiny
    texts = [prompt_text(tokenizer, "AIとは何ですか？"), prompt_text(tokenizer, "機械学習とは？")]
    torch.manual_seed(7)
    ours = sampled_batch(model, tokenizer, texts, 12, num_return_sequences=3, temperature=0.8, top_p=0.9)
    torch.manual_seed(7)
    theirs = generated_ids(
        model, tokenizer, texts, 12, num_return_sequences=3, do_sample=True, temperature=0.8, top_p=0.9, top_k=0
    )
    from dpo_recipe.evaluation.answers import decoded

    answers = [text.rstrip("\ufffd").rstrip() for text in decoded(tokenizer, theirs)]
    assert ours == [answers[0:3], answers[3:6]]
    assert len({answer for group in ours for answer in group}) > 2  # sampled, not one greedy answer six times
