"""pairs sample's engine: N seeded answers per training prompt, written whole, resumable after a stop with the
same answers an uninterrupted run writes; bad settings refused before any weights load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.data.sources import read_source
from dpo_recipe.errors import DataError, RunInterrupted
from dpo_recipe.evaluation import answers
from dpo_recipe.models.adapters import adapter_base, load_adapter_model
from dpo_recipe.onpolicy import sampling
from dpo_recipe.onpolicy.sampling import Sampling, partial_path, read_samples, run_sample, sample

# one prompt holds U+2028 and U+0085, which str.splitlines would cut a JSON line at
PROMPTS = [{"prompt": f"質問{i}とは\u2028何\x85ですか？", "topic": f"質問{i}"} for i in range(5)]
SETTINGS = Sampling(n=3, temperature=1.0, top_p=0.9, max_new_tokens=6, prompts_per_call=2, seed=7)
ORIGIN = {"adapter": "A", "base": "B"}


@pytest.fixture(scope="module")
def policy(tiny_adapter: Path):
    adapter_dir, _, section = adapter_base(str(tiny_adapter))
    return load_adapter_model(adapter_dir, section)


def test_answers_per_prompt_seeded_and_written_whole(policy, tmp_path: Path) -> None:
    model, tokenizer = policy
    out = tmp_path / "samples.jsonl"
    result = sample(model, tokenizer, PROMPTS, SETTINGS, out, ORIGIN, progress=False)
    rows = read_samples(out)
    assert (result.prompts, result.answers, result.resumed_from) == (5, 15, 0)
    assert [row["prompt"] for row in rows] == [p["prompt"] for p in PROMPTS] and rows[0]["topic"] == "質問0"
    assert all(len(row["completions"]) == 3 for row in rows)
    assert rows[0]["sampled_from"] == {
        **ORIGIN,
        "n": 3,
        "temperature": 1.0,
        "top_p": 0.9,
        "max_new_tokens": 6,
        "seed": 7,
    }
    assert len({a for row in rows for a in row["completions"]}) > 5  # sampled, not greedy: answers differ
    assert not partial_path(out).exists()
    again = tmp_path / "again.jsonl"
    sample(model, tokenizer, PROMPTS, SETTINGS, again, ORIGIN, progress=False)
    assert again.read_text() == out.read_text()  # the same seed, the same answers


@pytest.mark.parametrize("seed", [-1, 10**20])
def test_any_integer_seed_samples_the_same_answers_twice(seed: int, policy, tmp_path: Path) -> None:
    """--seed and iterate.seed are any integer (YAML reads 20 digits as one): torch's generator takes 64 bits."""
    import dataclasses

    model, tokenizer = policy
    settings = dataclasses.replace(SETTINGS, seed=seed)
    first, second = (tmp_path / "first.jsonl", tmp_path / "second.jsonl")
    for out in (first, second):
        sample(model, tokenizer, PROMPTS[:2], settings, out, ORIGIN, progress=False)
    assert [len(row["completions"]) for row in read_samples(first)] == [3, 3]
    assert first.read_text() == second.read_text() and read_samples(first)[0]["sampled_from"]["seed"] == seed


def test_a_stopped_sample_resumes_to_the_same_file(policy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = policy
    whole = tmp_path / "whole.jsonl"
    sample(model, tokenizer, PROMPTS, SETTINGS, whole, ORIGIN, progress=False)
    calls, original = [], answers.sampled_batch

    def stop_on_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    out = tmp_path / "samples.jsonl"
    monkeypatch.setattr(answers, "sampled_batch", stop_on_the_second_batch)
    with pytest.raises(RunInterrupted) as err:
        sample(model, tokenizer, PROMPTS, SETTINGS, out, ORIGIN, progress=False)
    assert err.value.exit_status == 130 and "after 2 of 5 prompts" in str(err.value)
    assert not out.exists() and partial_path(out).read_text().count("\n") == 1 + 2  # header and one batch
    monkeypatch.undo()
    result = sample(model, tokenizer, PROMPTS, SETTINGS, out, ORIGIN, progress=False)
    assert result.resumed_from == 2 and out.read_text() == whole.read_text()
    # a partial sample of other settings is not mixed into this one
    partial_path(out).write_text(json.dumps({"settings": {}}) + "\n")
    with pytest.raises(DataError, match="holds part of a sample with other settings"):
        sample(model, tokenizer, PROMPTS, SETTINGS, out, ORIGIN, progress=False)


def test_bad_requests_are_refused_before_any_weights_load(
    tiny_adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the checks")

    monkeypatch.setattr("dpo_recipe.models.adapters.load_adapter_model", no_weights)
    recipe = load_recipe("tiny-ja")
    with pytest.raises(DataError, match="--n 1: a judge ranks a prompt's answers against each other"):
        Sampling.from_recipe(recipe, n=1)
    with pytest.raises(DataError, match="--n 1"):
        run_sample(tmp_path / "s.jsonl", adapter=str(tiny_adapter), n=1)
    held = write_jsonl(tmp_path / "held.jsonl", read_source("builtin:ja-preferences", num_pairs=200)["test"])
    with pytest.raises(DataError, match="no prompt to sample: all .* in the held-out split"):
        run_sample(tmp_path / "s.jsonl", adapter=str(tiny_adapter), prompts=str(held))
    (tmp_path / "done.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="done.jsonl already exists. Choose another --out or pass --overwrite"):
        run_sample(tmp_path / "done.jsonl", adapter=str(tiny_adapter))
    with pytest.raises(DataError, match="is the source itself"):
        run_sample(held, adapter=str(tiny_adapter), prompts=str(held))
    with pytest.raises(DataError, match="Give the policy to sample: --adapter RUN"):
        run_sample(tmp_path / "s.jsonl")
    with pytest.raises(DataError, match="--set applies to a recipe"):
        run_sample(tmp_path / "s.jsonl", adapter=str(tiny_adapter), overrides=("iterate.top_p=0.5",))
    assert sampling.Sampling.from_recipe(recipe, n=None).n == recipe.iterate.num_generations


def test_a_samples_file_must_hold_prompts_and_answers(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Q", "completions": ["a", "b"]}, {"prompt": "Q2"}])
    with pytest.raises(DataError, match=r"bad.jsonl, row 2: not a row of 'dpo-recipe pairs sample'"):
        read_samples(bad)
    number = write_jsonl(tmp_path / "number.jsonl", [{"prompt": 7, "completions": ["a", "b"]}])
    with pytest.raises(DataError, match=r"number.jsonl, row 1: the prompt is not text or chat messages \(int\)"):
        read_samples(number)
    for missing in (tmp_path / "missing.jsonl", tmp_path):  # the API's path, which click does not check
        with pytest.raises(DataError, match=f"{missing}: no such samples file. Give the file 'dpo-recipe pairs"):
            read_samples(missing)


def test_a_stranger_or_a_careless_hand_cannot_make_it_write_elsewhere(
    policy, tiny_adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = policy
    out = tmp_path / "samples.jsonl"
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    partial_path(out).symlink_to(precious)
    with pytest.raises(DataError, match="is a symbolic link; a journal is never written through one"):
        sample(model, tokenizer, PROMPTS[:1], SETTINGS, out, ORIGIN, progress=False)
    assert precious.read_text() == "mine"
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(DataError, match="is a folder; name the file to write"):
        run_sample(folder, adapter=str(tiny_adapter), overwrite=True)
    with pytest.raises(DataError, match=r"iterate.num_generations: must be <= 64, got 1000"):
        run_sample(tmp_path / "s.jsonl", adapter=str(tiny_adapter), n=1000)
    real_open = Path.open

    def full_disk(self: Path, *args, **kwargs):
        if self.name.endswith(".partial") and "a" in args[0:1]:
            raise OSError(28, "No space left on device")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full_disk)
    with pytest.raises(DataError, match=r"samples2.jsonl.partial could not be written \(No space left on device\)"):
        sample(model, tokenizer, PROMPTS[:1], SETTINGS, tmp_path / "samples2.jsonl", ORIGIN, progress=False)
