"""encode_pair tokenizes a pair exactly as TRL's DPOTrainer does; length_percentiles picks nearest ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_overrides

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.data.tokens import RenderedPair, encode_pair, length_percentiles, render_pair
from dpo_recipe.models.loading import load_model, load_tokenizer

PLAIN = [
    {"prompt": "AIとは何ですか？", "chosen": "AIは人工知能です。", "rejected": "知らない。"},
    {
        "prompt": "機械学習とは？",
        "chosen": "データから学ぶ方法です。<|im_end|>",
        "rejected": "さあ。",
    },  # EOS already there
]
CONVERSATIONAL = [
    {
        "prompt": [{"role": "user", "content": "AIとは何ですか？"}],
        "chosen": [{"role": "assistant", "content": "AIは人工知能です。"}],
        "rejected": [{"role": "assistant", "content": "知らない。"}],
    }
]


@pytest.fixture(scope="module")
def recipe(tiny_model: Path):
    return load_recipe("tiny-ja", tiny_overrides(tiny_model))


def test_plain_text_pair_gets_eos_once_and_splits_at_the_prompt(recipe) -> None:
    tokenizer = load_tokenizer(recipe.model)
    eos = tokenizer.eos_token_id
    first, second = (encode_pair(tokenizer, row) for row in PLAIN)
    assert first.prompt_ids == tokenizer(PLAIN[0]["prompt"])["input_ids"] and first.prompt_is_prefix
    whole = tokenizer(PLAIN[0]["prompt"] + PLAIN[0]["chosen"] + tokenizer.eos_token)["input_ids"]
    assert first.prompt_ids + first.chosen_ids == whole
    assert first.chosen_ids[-1] == eos and first.rejected_ids[-1] == eos
    assert second.chosen_ids.count(eos) == 1 and second.chosen_ids[-1] == eos  # not appended twice
    assert second.rejected_ids.count(eos) == 1


@pytest.mark.parametrize("rows", [PLAIN, CONVERSATIONAL], ids=["plain", "conversational"])
def test_encode_pair_matches_trl_dpo_trainer(recipe, rows, tmp_path: Path) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOTrainer

    from dpo_recipe.training.objectives.dpo import DPO

    tokenizer = load_tokenizer(recipe.model)
    trainer = DPOTrainer(
        model=load_model(recipe.model),
        args=DPO().trainer_args(recipe, tmp_path),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    for row, trl_row in zip(rows, trainer.train_dataset, strict=True):
        ours = encode_pair(tokenizer, row)
        assert ours.prompt_ids == trl_row["prompt_ids"]
        assert ours.chosen_ids == trl_row["chosen_ids"]
        assert ours.rejected_ids == trl_row["rejected_ids"]


def test_length_percentiles_by_nearest_rank() -> None:
    assert length_percentiles(list(range(100, 0, -1))) == {"p50": 51, "p95": 95, "max": 100}
    assert length_percentiles([7, 3, 12]) == {"p50": 7, "p95": 12, "max": 12}
    assert length_percentiles([4]) == {"p50": 4, "p95": 4, "max": 4}
    assert length_percentiles([]) == {"p50": 0, "p95": 0, "max": 0}


def test_render_pair_shows_what_the_model_reads_and_checks_the_template_round_trip(recipe) -> None:
    tokenizer = load_tokenizer(recipe.model)
    assert render_pair(tokenizer, CONVERSATIONAL[0]) == RenderedPair(
        "<|im_start|>user\nAIとは何ですか？<|im_end|>\n<|im_start|>assistant\n",
        "AIは人工知能です。<|im_end|>\n",
        "知らない。<|im_end|>\n",
        prompt_is_prefix=True,
    )
    assert render_pair(tokenizer, PLAIN[0]) == RenderedPair(
        "AIとは何ですか？", "AIは人工知能です。<|im_end|>", "知らない。<|im_end|>", prompt_is_prefix=True
    )
    tokenizer.chat_template = "{% if add_generation_prompt %}[today]{% endif %}" + tokenizer.chat_template
    broken = render_pair(tokenizer, CONVERSATIONAL[0])
    assert not broken.prompt_is_prefix and broken.chosen.startswith("<|im_start|>user\n")
