"""The base model's outputs on disk: keys that change with what changes the numbers, and nothing else;
held-out scoring and answers that read them instead of recomputing, with the same results."""

from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import MethodType

import pytest
import torch
from conftest import tiny_overrides

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.data.sources import load_preference_splits
from dpo_recipe.evaluation.answers import greedy_answers
from dpo_recipe.evaluation.scoring import score_pairs
from dpo_recipe.models.loading import load_model, load_tokenizer
from dpo_recipe.training import base_cache
from dpo_recipe.training.base_cache import BaseCache, autocast_precision, base_weights_digest


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
    chosen, rejected = cache.read_logps("k", 2)
    assert chosen.tolist() == [-1.5, -2.0] and rejected.tolist() == [-3.0, -4.25]
    cache.write_answers("k", [[17, 4, 2], []])
    assert cache.read_answers("k", 2) == [[17, 4, 2], []]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        ".dpo-recipe-cache",
        "base_answers",
        "base_answers/k.json",
        "reference_logps",
        "reference_logps/k.safetensors",
    ]
    nowhere = BaseCache(None)
    nowhere.write_logps("k", (torch.zeros(1), torch.zeros(1)))
    assert nowhere.read_logps("k", 1) is None and nowhere.read_answers("k", 1) is None


def test_a_cache_that_keeps_nothing_hashes_no_weights(tiny) -> None:
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


# ---------------------------------------------------------------------------- warm equals cold
# A property, not a list of bugs: for each one-setting change, the run that finds the cache filled by
# the unchanged configuration (warm) computes exactly what a run with an empty cache (cold) computes.

RUN = ("data.max_train_pairs=8", "data.max_eval_pairs=8", "eval.num_generations=2", "eval.max_new_tokens=8")
KEYS_THAT_TIME = ("runtime_s", "pairs_per_s", "end_to_end_s")


def _numbers(out: Path) -> dict:
    """Everything a run computed: training's curve ends and the whole held-out report (pairs, answers)."""
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    report = json.loads((out / "eval_report.json").read_text(encoding="utf-8"))
    report.pop("charts", None)
    return {"train": {k: v for k, v in metrics["train"].items() if k not in KEYS_THAT_TIME}, "eval": report}


def _cache_line(text: str) -> str:
    return next(line for line in reversed(text.splitlines()) if "Cache:" in line).split("Cache:", 1)[1]


@dataclass
class _Runs:
    """Runs of the tiny recipe on one model directory, each with a cache directory of its own choosing."""

    tmp: Path
    model_dir: Path
    capsys: pytest.CaptureFixture
    monkeypatch: pytest.MonkeyPatch
    count: int = 0

    def train(self, cache: str, *settings: str) -> tuple[dict, str]:
        """(numbers, the Cache: part of the Time line) of one in-process training run."""
        from dpo_recipe.train import run

        self.count += 1
        out = self.tmp / f"run{self.count}"
        self.monkeypatch.setenv("DPO_RECIPE_CACHE", str(self.tmp / cache))
        self.capsys.readouterr()
        run("tiny-ja", tiny_overrides(self.model_dir, *RUN, *settings), output_dir=str(out))
        return _numbers(out), _cache_line(self.capsys.readouterr().out)

    def warm_and_cold(self, before: tuple[str, ...], after: tuple[str, ...], edit=None) -> tuple[dict, dict, str]:
        """The unchanged run fills the warm cache; ``edit`` changes the model directory; then the changed
        configuration runs warm and cold. Returns (unchanged numbers, changed numbers, the warm run's Cache:)."""
        unchanged, _ = self.train("warm", *before)
        if edit is not None:
            edit(self.model_dir)
        warm, warm_cache = self.train("warm", *after)
        cold, cold_cache = self.train("cold", *after)
        assert "hit" not in cold_cache
        assert warm == cold  # the whole point: a cached value is what a cold run computes
        return unchanged, warm, warm_cache


@pytest.fixture
def runs(tiny_model: Path, tmp_path: Path, capsys, monkeypatch) -> _Runs:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model, model_dir)
    return _Runs(tmp_path, model_dir, capsys, monkeypatch)


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _penalise_repeats(model_dir: Path) -> None:
    _edit_json(model_dir / "generation_config.json", lambda config: config.update(repetition_penalty=3.0))


def _prepend_a_token(model_dir: Path) -> None:
    """A post-processor that starts every encoding with <|im_start|>: new ids for the same strings."""

    def change(tokenizer: dict) -> None:
        start = {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}
        tokenizer["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [start, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [start, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}},
        }

    _edit_json(model_dir / "tokenizer.json", change)


def _another_system_line(model_dir: Path) -> None:
    template = model_dir / "chat_template.jinja"
    template.write_text("{{ '<|im_start|>system\\n丁寧に答えてください。<|im_end|>\\n' }}" + template.read_text())


def _nudge_weights(model_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(model_dir / "model.safetensors")
    name = next(n for n in sorted(weights) if n.endswith("mlp.up_proj.weight"))
    weights[name] = weights[name] + 0.05
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


def _pairs_dir(model_dir: Path) -> Path:
    return model_dir.parent / "pairs"


def _write_pairs(model_dir: Path, reverse: bool = False) -> None:
    """The builtin pairs as a saved dataset beside the model (in reverse order with ``reverse``)."""
    from datasets import Dataset, DatasetDict

    from dpo_recipe.data.generator import generate_pairs

    splits = {name: rows[::-1] if reverse else rows for name, rows in generate_pairs(200).items()}
    target = _pairs_dir(model_dir)
    shutil.rmtree(target, ignore_errors=True)
    DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(str(target))


ALL_MISS = "reference_logps 2 misses, base_answers 1 miss."
ANSWERS_HIT = "reference_logps 2 misses, base_answers 1 hit."
REVERSED = "data.source={pairs}"
CHANGES = {  # one setting each: (before, after, model-directory edit, what the warm run reads from the cache)
    "bf16 after fp32": (("training.precision=fp32",), ("training.precision=bf16",), None, ALL_MISS),
    "fp32 after bf16": (("training.precision=bf16",), ("training.precision=fp32",), None, ALL_MISS),
    "generation config": ((), (), _penalise_repeats, "reference_logps 2 hits, base_answers 1 miss."),
    "tokenizer post-processor": ((), (), _prepend_a_token, ALL_MISS),
    "chat template": (("data.as_conversation=true",), ("data.as_conversation=true",), _another_system_line, ALL_MISS),
    "max_length that truncates": (
        (),
        ("training.max_length=40",),
        None,
        "reference_logps 2 misses, base_answers 1 hit.",
    ),
    "data order": (
        ("data.source={pairs}",),
        ("data.source={pairs}",),
        lambda d: _write_pairs(d, reverse=True),
        ALL_MISS,
    ),
    "weights at the same path": ((), (), _nudge_weights, ALL_MISS),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_warm_run_computes_what_a_cold_run_computes(runs: _Runs, change: str, monkeypatch) -> None:
    from dpo_recipe.models import hardware

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)  # bf16 autocast runs (emulated) anywhere
    _write_pairs(runs.model_dir)
    before, after, edit, read_back = CHANGES[change]
    pairs = str(_pairs_dir(runs.model_dir))
    before, after = ([s.format(pairs=pairs) for s in settings] for settings in (before, after))
    unchanged, changed, warm_cache = runs.warm_and_cold(tuple(before), tuple(after), edit)
    assert changed != unchanged  # the change moves the numbers, so a stale entry would have shown
    assert warm_cache.strip() == read_back


def test_answers_follow_the_generation_config(runs: _Runs) -> None:
    unchanged, changed, _ = runs.warm_and_cold((), (), _penalise_repeats)
    base_answers = [[g["base"] for g in numbers["eval"]["generations"]] for numbers in (unchanged, changed)]
    assert base_answers[0] != base_answers[1]


def test_what_changes_no_number_hits(runs: _Runs) -> None:
    """A max_length that cuts nothing, and the same model at another path: the same ids, the same base."""
    unchanged, changed, warm_cache = runs.warm_and_cold((), ("training.max_length=512",))
    assert changed == unchanged
    assert warm_cache.strip() == "reference_logps 2 hits, base_answers 1 hit."
    moved = runs.tmp / "moved"
    shutil.copytree(runs.model_dir, moved)
    runs.model_dir = moved
    elsewhere, moved_cache = runs.train("warm")
    assert elsewhere == unchanged and moved_cache.strip() == "reference_logps 2 hits, base_answers 1 hit."


def test_eval_after_train_reads_trainings_entries(runs: _Runs, runner) -> None:
    """``dpo-recipe eval`` of the adapter training just wrote: the base's half is training's, numbers equal."""
    from conftest import invoke

    trained, _ = runs.train("warm")
    adapter = runs.tmp / f"run{runs.count}"
    reports = {}
    for cache in ("warm", "cold"):
        runs.monkeypatch.setenv("DPO_RECIPE_CACHE", str(runs.tmp / cache))
        out = runs.tmp / f"eval-{cache}.json"
        result = invoke(runner, "eval", "--adapter", adapter, "--max-pairs", 8, "--out", out)  # training's 8
        assert result.exit_code == 0, result.output
        reports[cache] = (json.loads((runs.tmp / f"eval-{cache}.json").read_text()), _cache_line(result.output))
    assert reports["warm"][1].strip() == "reference_logps 1 hit, base_answers 1 hit."
    assert reports["cold"][1].strip() == "reference_logps 1 miss, base_answers 1 miss."
    for report, _ in reports.values():
        for key in ("overall", "per_pair", "generations"):
            assert report[key] == trained["eval"][key]


def test_two_processes_warm_equals_cold(runs: _Runs) -> None:
    """Two processes pack other rows (each scores every other pair): their entries are their own."""
    import subprocess

    from conftest import subprocess_env, train_cmd, two_process_launcher

    runs.train("warm")
    numbers = {}
    for cache in ("warm", "cold"):
        out = runs.tmp / f"two-{cache}"
        command = train_cmd(runs.model_dir, out, *RUN, launcher=two_process_launcher())
        done = subprocess.run(
            command, env=subprocess_env(DPO_RECIPE_CACHE=str(runs.tmp / cache)), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        numbers[cache] = _numbers(out)
    assert numbers["warm"] == numbers["cold"]


def test_a_frozen_ref_adapter_is_part_of_the_base(tiny) -> None:
    """Training an adapter further: its frozen ``ref`` copy is the reference, ParameterDict rows included."""
    from peft import LoraConfig, get_peft_model

    _, model, _, _ = tiny
    config = LoraConfig(r=4, target_modules=["q_proj"], trainable_token_indices=[5, 6])
    tuned = get_peft_model(copy.deepcopy(model), config)
    tuned.add_adapter("ref", config)
    before = base_weights_digest(tuned)
    rows = dict(tuned.named_parameters())
    assert any(name.endswith("trainable_tokens_delta.ref") for name in rows)
    with torch.no_grad():
        next(p for n, p in rows.items() if n.endswith("trainable_tokens_delta.default")).add_(1.0)
    base_cache._WEIGHT_DIGESTS.pop(tuned)
    assert base_weights_digest(tuned) == before  # the adapter being trained is not the base
    with torch.no_grad():
        next(p for n, p in rows.items() if n.endswith("trainable_tokens_delta.ref")).add_(1.0)
    base_cache._WEIGHT_DIGESTS.pop(tuned)
    assert base_weights_digest(tuned) != before  # the frozen reference is


def test_a_key_outside_the_autocast_of_a_mixed_precision_forward_is_refused(tiny, tmp_path: Path) -> None:
    _, model, _, _ = tiny
    prepared = _with_lora(model, ["q_proj"])
    # what accelerate's prepare_model does under mixed_precision="bf16" (one AcceleratorState per test process)
    prepared._original_forward = prepared.forward
    prepared.forward = MethodType(torch.autocast("cpu", dtype=torch.bfloat16)(prepared.forward.__func__), prepared)
    cache = BaseCache(tmp_path)
    with pytest.raises(RuntimeError, match="accelerator.autocast"):
        cache.key(prepared, [[1, 2, 3]])
    plain = _with_lora(model, ["q_proj"])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # where the forward runs in bf16, the key says so
        in_bf16 = cache.key(prepared, [[1, 2, 3]])
        assert in_bf16 == cache.key(plain, [[1, 2, 3]])
    assert in_bf16 != cache.key(plain, [[1, 2, 3]])


def test_cache_info_and_clear(runs: _Runs, runner) -> None:
    from conftest import invoke

    runs.train("warm")
    runs.monkeypatch.setenv("DPO_RECIPE_CACHE", str(runs.tmp / "warm"))
    info = invoke(runner, "cache", "info").output
    assert f"Cache: {runs.tmp / 'warm'}" in info
    assert re.search(r"reference_logps\s+2 entries", info) and re.search(r"base_answers\s+1 entries", info)
    assert "keyed on the base's weights" in info
    cleared = invoke(runner, "cache", "clear", "--kind", "base_answers")
    assert cleared.exit_code == 0 and "Removed base_answers" in cleared.output
    assert not (runs.tmp / "warm" / "base_answers").exists() and (runs.tmp / "warm" / "reference_logps").exists()
    invoke(runner, "cache", "clear")
    assert re.search(r"reference_logps\s+0 entries\s+0 B", invoke(runner, "cache", "info").output)
