"""The base model's outputs on disk: keys that change with what changes the numbers, and nothing else;
held-out scoring and answers that read them instead of recomputing, with the same results."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from dpo_recipe.answers import greedy_answers
from dpo_recipe.base_cache import BaseCache, autocast_precision, base_weights_digest
from dpo_recipe.config import load_recipe
from dpo_recipe.data import load_preference_splits
from dpo_recipe.evaluation import score_pairs
from dpo_recipe.model import load_model, load_tokenizer


@pytest.fixture(scope="module")
def tiny(tiny_model: Path):
    recipe = load_recipe("tiny-ja", tiny_overrides(tiny_model))
    _, rows, _ = load_preference_splits(recipe.data)
    return recipe, load_model(recipe.model).eval(), load_tokenizer(recipe.model), rows


def _with_lora(model, targets: list[str] | str, seed: int = 1, tokens: list[int] | None = None):
    """A PEFT model whose LoRA B matrices are random, so adapter-on differs from the base."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, target_modules=targets, trainable_token_indices=tokens)
    tuned = get_peft_model(copy.deepcopy(model), config)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(seed)))
    return tuned


class _Forwards:
    """Counts forward calls of a model, to see which passes ran."""

    def __init__(self, model) -> None:
        self.calls = 0
        self.handle = model.get_base_model().register_forward_hook(self._count)

    def _count(self, *_) -> None:
        self.calls += 1


def test_the_digest_is_the_base_alone(tiny) -> None:
    _, model, _, _ = tiny
    base = base_weights_digest(model)
    # the adapter (its values, which layers it wraps, trained token rows) does not enter the digest
    assert base_weights_digest(_with_lora(model, ["q_proj", "v_proj"])) == base
    assert base_weights_digest(_with_lora(model, "all-linear", seed=2, tokens=[5, 6])) == base
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert base_weights_digest(changed) != base


def test_keys_follow_inputs_settings_and_precision(tiny, tmp_path: Path) -> None:
    _, model, _, _ = tiny
    tuned = _with_lora(model, ["q_proj", "v_proj"])
    cache = BaseCache(tmp_path)
    key = cache.key(tuned, [[1, 2, 3]], max_length=64)
    assert key == cache.key(_with_lora(model, "all-linear", seed=3), [[1, 2, 3]], max_length=64)
    assert key != cache.key(tuned, [[1, 2, 4]], max_length=64)
    assert key != cache.key(tuned, [[1, 2, 3]], max_length=32)
    assert autocast_precision("cpu") == "off"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_precision("cpu") == "bfloat16"
        assert cache.key(tuned, [[1, 2, 3]], max_length=64) != key


def test_entries_round_trip_and_a_cache_without_a_directory_keeps_nothing(tmp_path: Path) -> None:
    cache = BaseCache(tmp_path)
    cache.write_logps("k", (torch.tensor([-1.5, -2.0]), torch.tensor([-3.0, -4.25])))
    chosen, rejected = cache.read_logps("k")
    assert chosen.tolist() == [-1.5, -2.0] and rejected.tolist() == [-3.0, -4.25]
    cache.write_answers("k", ["機械学習とは、データから学ぶ手法です。"])
    assert cache.read_answers("k") == ["機械学習とは、データから学ぶ手法です。"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*")) == [
        "base_answers/k.json",
        "reference_logps/k.safetensors",
    ]
    nowhere = BaseCache(None)
    nowhere.write_logps("k", (torch.zeros(1), torch.zeros(1)))
    assert nowhere.read_logps("k") is None and nowhere.read_answers("k") is None


def test_a_cache_that_keeps_nothing_hashes_no_weights(tiny) -> None:
    from dpo_recipe import base_cache

    _, model, _, _ = tiny
    unseen = copy.deepcopy(model)
    assert BaseCache(None).key(unseen, [[1, 2, 3]], max_length=64) == ""
    assert unseen not in base_cache._WEIGHT_DIGESTS  # no pass over the weights for a key nobody reads


def test_held_out_scoring_reads_the_base_half_from_the_cache(tiny, tmp_path: Path) -> None:
    recipe, model, tokenizer, rows = tiny
    tuned = _with_lora(model, ["q_proj", "v_proj"])
    max_length, cache = recipe.training.max_length, BaseCache(tmp_path)
    forwards = _Forwards(tuned)
    first = score_pairs(tuned, tokenizer, rows[:12], max_length, 4, progress=False, cache=cache)
    cold = forwards.calls
    again = score_pairs(tuned, tokenizer, rows[:12], max_length, 4, progress=False, cache=cache)
    assert (cold, forwards.calls - cold) == (6, 3)  # 3 packed batches: policy + reference, then policy alone
    assert again == first  # the same records, to the bit
    # another adapter on the same base reuses the entry; its own policy numbers are its own
    other = _with_lora(model, "all-linear", seed=5)
    uncached = score_pairs(other, tokenizer, rows[:12], max_length, 4, progress=False)
    assert score_pairs(other, tokenizer, rows[:12], max_length, 4, progress=False, cache=cache) == uncached
    assert len(list(tmp_path.glob("reference_logps/*"))) == 1


def test_base_answers_are_generated_once_per_base(tiny, tmp_path: Path) -> None:
    _, model, tokenizer, rows = tiny
    cache, picked = BaseCache(tmp_path), rows[:3]
    first_adapter, second_adapter = _with_lora(model, ["q_proj", "v_proj"]), _with_lora(model, ["q_proj"], seed=7)
    first = greedy_answers(first_adapter, tokenizer, picked, 6, cache=cache)
    forwards = _Forwards(second_adapter)
    second = greedy_answers(second_adapter, tokenizer, picked, 6, cache=cache)
    assert forwards.calls <= 6  # one greedy batch of at most 6 steps: the base's batch was read from disk
    uncached = greedy_answers(second_adapter, tokenizer, picked, 6)
    assert forwards.calls > 6  # (the uncached call ran both batches)
    assert second == uncached and [a["base"] for a in second] == [a["base"] for a in first]
    assert len(list(tmp_path.glob("base_answers/*.json"))) == 1
