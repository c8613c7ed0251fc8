"""The base model's outputs on disk: keys that change with what changes the numbers, and nothing else;
held-out scoring and answers that read them instead of recomputing, with the same results."""

from __future__ import annotations

import copy
import errno
import importlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import MethodType, SimpleNamespace

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
from dpo_recipe.utils.files import write_file_atomically


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
    """Counts forward calls of a model's decoder, to see which passes ran."""

    def __init__(self, model) -> None:
        self.calls = 0
        self.handle = model.get_base_model().get_decoder().register_forward_hook(self._count)

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


SCORING = '''"""A scoring module."""

LIMIT = 4096  # tokens a forward


def score(x):
    """Why it scores so."""
    return x * 2
'''
EDITS_THAT_CHANGE_NO_NUMBER = {
    "a docstring": ("Why it scores so.", "Why it scores that way, at length."),
    "a comment": ("# tokens a forward", "# tokens in one forward pass"),
    "the layout": ("return x * 2", "return (\n        x * 2\n    )"),
    "the module docstring": ('"""A scoring module."""', '"""Scoring."""'),
}
EDITS_THAT_MAY = {
    "a constant": ("LIMIT = 4096", "LIMIT = 2048"),
    "the code": ("return x * 2", "return x * 3"),
    "a string that is not a docstring": ("return x * 2", "return 'x'"),
}


@pytest.mark.parametrize(
    ("edit", "changes"), [(e, False) for e in EDITS_THAT_CHANGE_NO_NUMBER] + [(e, True) for e in EDITS_THAT_MAY]
)
def test_the_code_digest_follows_the_code_not_its_docs(tmp_path: Path, edit: str, changes: bool) -> None:
    """Entries are kept across edits to docstrings, comments and layout, and missed after any edit to what runs."""
    module = tmp_path / "scoring.py"
    module.write_text(SCORING, encoding="utf-8")
    before = base_cache.code_digest([module])
    old, new = {**EDITS_THAT_CHANGE_NO_NUMBER, **EDITS_THAT_MAY}[edit]
    module.write_text(SCORING.replace(old, new), encoding="utf-8")
    assert (base_cache.code_digest([module]) != before) is changes


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
    # 3 packed rows of 4 pairs, stacked into one forward: policy + reference, then policy alone
    assert (cold, forwards.calls - cold) == (2, 1)
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
    warnings: tuple[str, ...] = ()  # the last run's ``Warning:`` lines

    def train(self, cache: str, *settings: str) -> tuple[dict, str]:
        """(numbers, the Cache: part of the Time line) of one in-process training run."""
        from dpo_recipe.train import run

        self.count += 1
        out = self.tmp / f"run{self.count}"
        self.monkeypatch.setenv("DPO_RECIPE_CACHE", str(self.tmp / cache))
        self.capsys.readouterr()
        run("tiny-ja", tiny_overrides(self.model_dir, *RUN, *settings), output_dir=str(out))
        assert not (out / "INCOMPLETE").exists()  # a finished run, whatever the cache did
        captured = self.capsys.readouterr()
        self.warnings = tuple(line for line in captured.err.splitlines() if line.startswith("Warning: "))
        return _numbers(out), _cache_line(captured.out)

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
    unchanged, changed, warm_cache = runs.warm_and_cold(("training.max_length=512",), ("training.max_length=1024",))
    assert changed == unchanged
    assert warm_cache.strip() == "reference_logps 2 hits, base_answers 1 hit."
    moved = runs.tmp / "moved"
    shutil.copytree(runs.model_dir, moved)
    runs.model_dir = moved
    elsewhere, moved_cache = runs.train("warm", "training.max_length=512")
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


# ---------------------------------------------------------------------------- damaged storage
# The cache is never a source of failure or of wrong numbers: whatever happened to its folder, a run
# finishes with what a cold run computes, and says in one line what it skipped.


def _flip_a_bit(data: bytes, path: Path) -> bytes:
    """One bit of one value, the file still parsing: a log-prob's exponent, or a digit of a token id."""
    if path.suffix == ".safetensors":
        return data[:-1] + bytes([data[-1] ^ 0x01])
    at = max((i for i, byte in enumerate(data) if chr(byte).isdigit()), default=len(data) // 2)
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


DAMAGE = {  # what happens to an entry's bytes on a failing disk, a killed copy or a stray write
    "bit-flipped": _flip_a_bit,
    "truncated": lambda data, path: data[: len(data) // 2],
    "empty": lambda data, path: b"",
    "random": lambda data, path: random.Random(0).randbytes(len(data)),
}


def _values(data: bytes, path: Path) -> object:
    """What an entry holds (safetensors does not keep its header's keys in one order)."""
    from safetensors.torch import load

    return {k: v.tolist() for k, v in load(data).items()} if path.suffix == ".safetensors" else json.loads(data)


def _entries(cache: Path) -> list[Path]:
    return sorted([*cache.glob("reference_logps/*.safetensors"), *cache.glob("base_answers/*.json")])


def test_a_damaged_entry_of_each_kind_is_recomputed_with_a_warning(runs: _Runs, record) -> None:
    cold, _ = runs.train("cold")
    runs.train("warm")
    pristine = {path: path.read_bytes() for path in _entries(runs.tmp / "warm")}
    assert len(pristine) == 3  # two reference_logps (training, held-out), one base_answers
    for damage, change in DAMAGE.items():
        with record.case("fault"):  # each damage to an entry of each kind
            for path, data in pristine.items():
                path.write_bytes(change(data, path))
            warm, warm_cache = runs.train("warm")
            assert warm == cold, damage  # never a damaged value
            assert warm_cache.strip() == "reference_logps 2 misses, base_answers 1 miss.", damage
            damaged = [w for w in runs.warnings if "is unreadable or damaged" in w and w.endswith("recomputing it.")]
            assert len(damaged) == len(runs.warnings) == 3, runs.warnings  # one line an entry
            assert all(_values(path.read_bytes(), path) == _values(data, path) for path, data in pristine.items())


def _failing_write(errno_: int):
    def write(target: Path, write_staging) -> Path:
        raise OSError(errno_, os.strerror(errno_), str(target))

    return write


@pytest.mark.parametrize("case", ["read-only", "full", "a file where its folder should be"])
def test_a_cache_that_cannot_be_written_never_fails_a_run(runs: _Runs, case: str, record) -> None:
    with record.case("fault"):
        cold, _ = runs.train("cold")
        if case == "a file where its folder should be":
            (runs.tmp / "broken").mkdir()
            for kind in ("reference_logps", "base_answers"):
                (runs.tmp / "broken" / kind).write_text("not a folder")
        else:
            write = _failing_write(errno.EROFS if case == "read-only" else errno.ENOSPC)
            runs.monkeypatch.setattr(base_cache, "write_file_atomically", write)
        numbers, _ = runs.train("broken")
        assert numbers == cold  # the run finished (metrics.json, no INCOMPLETE) with a cold run's numbers
        unwritable = [w for w in runs.warnings if "cache not writable" in w]
        assert len(unwritable) == 1 and unwritable[0].endswith("continuing without it.")  # once, not per entry
        expected = {"read-only": "Read-only file system", "full": "No space left on device"}.get(case, "File exists")
        assert expected in unwritable[0]


def test_a_run_writes_its_artifacts_before_the_held_out_entries(runs: _Runs) -> None:
    """On a nearly full disk the space goes to the run, not to the cache: only training's reference entry
    (which the training needs) comes before the run's metrics.json."""
    out, written = runs.tmp / f"run{runs.count + 1}", []

    def noting_the_run(target: Path, write) -> Path:
        written.append((target.parent.name, (out / "metrics.json").exists()))
        return write_file_atomically(target, write)

    runs.monkeypatch.setattr(base_cache, "write_file_atomically", noting_the_run)
    runs.train("cache")
    assert written == [("reference_logps", False), ("reference_logps", True), ("base_answers", True)]


def test_a_reader_racing_clear_gets_the_entry_or_a_miss(tmp_path: Path, record) -> None:
    """A reader that checked a file, then opened it, crashed when ``cache clear`` landed in between."""
    import threading

    with record.case("fault"):
        cache, logps, answers = BaseCache(tmp_path), (torch.arange(8.0), -torch.arange(8.0)), [[5, 6, 7], [8]]
        stop, failures, seen = threading.Event(), [], []

        def clear_and_refill() -> None:
            while not stop.is_set():
                cache.write_logps("a" * 32, logps)
                cache.write_answers("a" * 32, answers)
                BaseCache(tmp_path).clear()

        clearer = threading.Thread(target=clear_and_refill)
        clearer.start()
        try:
            for _ in range(2000):
                read = (cache.read_logps("a" * 32, 8), cache.read_answers("a" * 32, 2))
                seen.append(tuple(value is not None for value in read))
                if read[0] is not None and not (
                    torch.equal(read[0][0], logps[0]) and torch.equal(read[0][1], logps[1])
                ):
                    failures.append(read)
                if read[1] not in (None, answers):
                    failures.append(read)
        finally:
            stop.set()
            clearer.join()
        assert failures == [] and len(set(seen)) > 1  # whole values or misses, and the race did happen


def test_a_run_completes_while_the_cache_is_cleared_over_and_over(runs: _Runs, record) -> None:
    import threading

    from dpo_recipe.training.base_cache import default_cache

    with record.case("fault"):
        cold, _ = runs.train("cold")
        runs.train("warm")
        runs.monkeypatch.setenv("DPO_RECIPE_CACHE", str(runs.tmp / "warm"))
        clearing = default_cache()
        stop = threading.Event()
        clearer = threading.Thread(target=lambda: [clearing.clear() for _ in iter(stop.is_set, True)])
        clearer.start()
        try:
            warm, _ = runs.train("warm")
        finally:
            stop.set()
            clearer.join()
        assert warm == cold


def _no_decoder(model_dir: Path) -> None:
    """The tokenizer's decoder removed (ids unchanged): ids decode to byte-level symbols, not Japanese."""
    _edit_json(model_dir / "tokenizer.json", lambda tokenizer: tokenizer.update(decoder=None))


def test_answers_follow_the_tokenizer_decoder(runs: _Runs) -> None:
    unchanged, changed, warm_cache = runs.warm_and_cold((), (), _no_decoder)
    base_answers = [[g["base"] for g in numbers["eval"]["generations"]] for numbers in (unchanged, changed)]
    assert base_answers[0] != base_answers[1]  # the decoder moves the text ...
    assert warm_cache.strip() == "reference_logps 2 hits, base_answers 1 hit."  # ... but not the ids kept


SCORING_MODULES = (
    "dpo_recipe.training.trainer",  # the reference pass
    "dpo_recipe.training.packing",
    "dpo_recipe.evaluation.scoring",  # held-out scoring
    "dpo_recipe.evaluation.answers",  # generation
    "dpo_recipe.training.base_cache",
)


def test_the_code_digest_covers_every_module_that_computes_an_entry() -> None:
    assert set(base_cache._SCORING_CODE) == set(SCORING_MODULES)


@pytest.mark.parametrize("module", SCORING_MODULES)
def test_an_edit_to_the_code_that_computes_an_entry_misses(tiny, tmp_path: Path, monkeypatch, module: str) -> None:
    from importlib.util import find_spec

    _, model, _, _ = tiny
    cache = BaseCache(tmp_path)
    before = cache.key(model, [[1, 2, 3]])
    edited = tmp_path / "edited.py"
    monkeypatch.setattr(
        base_cache, "find_spec", lambda name: SimpleNamespace(origin=edited) if name == module else find_spec(name)
    )
    source = Path(find_spec(module).origin).read_bytes()
    edited.write_bytes(source + b"\n# one more line of comment\n")
    assert cache.key(model, [[1, 2, 3]]) == before  # what runs is the same: the entries stay
    edited.write_bytes(source + b"\n_ONE_MORE_LINE = 1\n")
    assert cache.key(model, [[1, 2, 3]]) != before


def test_an_upgrade_of_dpo_recipe_misses(tiny, tmp_path: Path, monkeypatch) -> None:
    from importlib.metadata import version

    _, model, _, _ = tiny
    cache = BaseCache(tmp_path)
    before = cache.key(model, [[1, 2, 3]])
    monkeypatch.setattr(base_cache, "version", lambda name: "99.0" if name == "dpo-recipe" else version(name))
    assert cache.key(model, [[1, 2, 3]]) != before


# ---------------------------------------------------------------------------- whose folder


def test_an_unusable_cache_root_is_refused_before_anything_runs(
    tiny_model: Path, tmp_path: Path, runner, monkeypatch, capsys, record
) -> None:
    from conftest import invoke

    from dpo_recipe.train import main

    with record.case("bad-input"):
        training = importlib.import_module("dpo_recipe.train")  # the module: the package exports a train() too
        monkeypatch.setattr(training, "load_policy", lambda *a, **k: pytest.fail("weights loaded"))
        monkeypatch.chdir(tmp_path)
        (tmp_path / "a-file").write_text("not a folder")
        for value, words in (("", "DPO_RECIPE_CACHE is set but empty"), ("a-file/cache", "a-file is a file")):
            monkeypatch.setenv("DPO_RECIPE_CACHE", value)
            for command in (("cache", "info"), ("cache", "clear")):
                result = invoke(runner, *command)
                assert result.exit_code == 1 and words in result.output and "Traceback" not in result.output
            with pytest.raises(SystemExit) as exit_info:
                main(
                    [
                        "--recipe",
                        "tiny-ja",
                        "--output-dir",
                        str(tmp_path / "out"),
                        "--set",
                        f"model.name_or_path={tiny_model}",
                    ]
                )
            assert exit_info.value.code == 2 and words in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written anywhere


def test_cache_clear_removes_only_what_the_cache_wrote(runs: _Runs, runner, record) -> None:
    from conftest import invoke

    with record.case("security"):
        # the current folder made the cache by an empty variable, in the old days: the user's folders, no marker
        home = runs.tmp / "home"
        for folder in ("gguf", "tiny", "reference_logps"):
            (home / folder).mkdir(parents=True)
            (home / folder / "notes.txt").write_text("mine")
        (home / "gguf" / "holiday-0123456789abcdef").mkdir()  # looks like an entry; not in a cache dpo-recipe made
        before = _tree(home)
        runs.monkeypatch.setenv("DPO_RECIPE_CACHE", str(home))
        refused = invoke(runner, "cache", "clear", "--kind", "all")
        assert refused.exit_code == 1 and "has no .dpo-recipe-cache marker" in refused.output
        assert _tree(home) == before
        # a real cache beside the user's things: a file of theirs in a kind folder, a kind folder linked to theirs
        runs.train("warm")
        warm = runs.tmp / "warm"
        (warm / "reference_logps" / "notes.txt").write_text("mine")
        (warm / "gguf").symlink_to(home / "gguf")
        runs.monkeypatch.setenv("DPO_RECIPE_CACHE", str(warm))
        cleared = invoke(runner, "cache", "clear", "--kind", "all")
        assert cleared.exit_code == 0 and f"Left alone: {warm / 'gguf'} (a link" in cleared.output
        assert _tree(home) == before and (warm / "reference_logps" / "notes.txt").read_text() == "mine"
        assert _entries(warm) == [] and not (warm / "base_answers").exists()


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
