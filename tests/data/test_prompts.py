"""Training prompts of any data source, never a held-out one: the recipe's own split, another file's, a file of
plain questions, messages; and the clear error when every prompt is held out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import write_jsonl

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.data.prompts import training_prompts
from dpo_recipe.data.sources import read_source
from dpo_recipe.errors import DataError

RECIPE = load_recipe("tiny-ja")
SPLITS = read_source("builtin:ja-preferences", num_pairs=200)
HELD_OUT_TOPICS = {row["topic"] for row in SPLITS["test"]}


def test_the_recipes_own_training_prompts_are_those_that_train() -> None:
    prompts = training_prompts(RECIPE.data)
    assert len(prompts.rows) == 64  # data.max_train_pairs: the 64 rows that train, one prompt each
    assert not {row["topic"] for row in prompts.rows} & HELD_OUT_TOPICS
    first = prompts.rows[0]
    assert set(first) == {"prompt", "topic", "domain"}  # answer columns (chosen, rejection_type) never come along
    every = training_prompts(dataclasses.replace(RECIPE.data, max_train_pairs=None))
    assert len(every.rows) == len({row["prompt"] for row in SPLITS["train"]})
    picked = training_prompts(RECIPE.data, limit=5)
    assert len(picked.rows) == 5 and picked.notes[-1].endswith("chosen after a shuffle seeded by data.seed 0")
    assert picked.rows == training_prompts(RECIPE.data, limit=5).rows  # seeded


def test_a_copy_of_the_held_out_split_gives_no_prompt(tmp_path: Path) -> None:
    copy = write_jsonl(tmp_path / "test-copy.jsonl", SPLITS["test"])
    with pytest.raises(DataError) as err:
        training_prompts(RECIPE.data, str(copy))
    assert f"{copy}: no prompt to sample: all " in str(err.value)
    assert "of its training prompts are in the held-out split" in str(err.value)


def test_plain_prompt_rows_and_the_recipes_held_out_prompts_left_out(tmp_path: Path) -> None:
    questions = [{"prompt": f"質問{i}は何ですか？", "topic": f"話題{i % 5}"} for i in range(20)]
    held = [{"prompt": row["prompt"], "topic": row["topic"]} for row in SPLITS["test"][:3]]
    source = write_jsonl(tmp_path / "questions.jsonl", questions + held)
    data = dataclasses.replace(RECIPE.data, max_train_pairs=None)
    prompts = training_prompts(data, str(source))
    texts = {row["prompt"] for row in prompts.rows}
    assert not texts & {row["prompt"] for row in held}  # the recipe's held-out questions, in another file
    # the file's own hold-out: data.test_size 0.1 of its topics (5 + the held-out ones) by the seeded hold-out
    assert 0 < len(texts) < 20 and all(row["topic"].startswith("話題") for row in prompts.rows)
    unsplit = training_prompts(dataclasses.replace(data, test_size=0.0), str(source))  # no hold-out of its own
    assert {row["prompt"] for row in unsplit.rows} == {q["prompt"] for q in questions}
    assert unsplit.notes == [f"prompts: 20 unique training prompts of {source}; 3 in the held-out split left out"]
    chat = write_jsonl(
        tmp_path / "chat.jsonl", [{"prompt": [{"role": "user", "content": q["prompt"]}]} for q in questions]
    )
    as_chat = training_prompts(dataclasses.replace(data, test_size=0.0), str(chat))
    assert len(as_chat.rows) == 20 and as_chat.rows[0]["prompt"][0]["role"] == "user"
    converted = training_prompts(dataclasses.replace(data, test_size=0.0, as_conversation=True), str(source))
    assert converted.rows[0]["prompt"] == [{"role": "user", "content": converted.rows[0]["prompt"][0]["content"]}]


def test_rows_with_no_prompt_are_refused(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "nothing.jsonl", [{"question": "AIとは？"}, {"question": ""}])
    with pytest.raises(DataError, match="neither a data form nor plain prompt rows"):
        training_prompts(RECIPE.data, str(source))
