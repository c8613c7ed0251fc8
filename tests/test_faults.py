"""The fault-and-abuse suite: bad input, faults (kills, signals, a full disk, a failing Hub) and secrets.

Every case goes through `record` (conftest), which counts what was tried and what held and prints the
closing summary. Bad input runs through the real entry points (`python -m dpo_recipe.train`'s `main`,
in process, and the `dpo-recipe` click CLI) with model loading replaced by a sentinel that fails the
test: each error must come before any weights load.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CANARY, invoke, run_client, subprocess_env, tiny_overrides, train_cmd, write_jsonl
from huggingface_hub import HfApi
from safetensors.torch import load_file

from dpo_recipe.data.generator import generate_pairs
from dpo_recipe.train import run
from dpo_recipe.training.run_dir import RUN_MARKER, check_output_dir, newest_complete_checkpoint
from dpo_recipe.utils.files import write_file_atomically

# ---------------------------------------------------------------------------- bad input

GOOD_ROWS = generate_pairs(200, seed=0)["train"][:12]


def broken(**changes: object) -> list[dict]:
    """The good rows with row 3 changed."""
    return [*GOOD_ROWS[:2], {**GOOD_ROWS[2], **changes}, *GOOD_ROWS[3:]]


def tiny_gguf(path: Path) -> Path:
    """A small, valid GGUF file (metadata and one tensor), to truncate."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def bad(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory of broken recipes, data files, models and adapters, shared by the cases."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from dpo_recipe.models.tiny import build_tiny_model

    d = tmp_path_factory.mktemp("bad")
    (d / "no-model.yaml").write_text("training: {}\n", encoding="utf-8")
    (d / "syntax.yaml").write_text("model:\n  name_or_path: m\n  dtype: a: b\n", encoding="utf-8")
    (d / "list.yaml").write_text("- model\n- lora\n", encoding="utf-8")
    write_jsonl(d / "good.jsonl", GOOD_ROWS)
    (d / "empty.jsonl").write_bytes(b"")
    (d / "data.txt").write_text("prompt,chosen,rejected\n", encoding="utf-8")
    (d / "sjis.jsonl").write_bytes('{"prompt": "日本語"}\n'.encode("shift_jis"))
    (d / "bad-line.jsonl").write_text(json.dumps(GOOD_ROWS[0]) + '\n{"prompt": \n', encoding="utf-8")
    (d / "array-line.jsonl").write_text("[1, 2]\n", encoding="utf-8")
    (d / "object.json").write_text('[{"prompt": "a"}, 3]', encoding="utf-8")
    (d / "bad.parquet").write_bytes(b"not parquet")
    write_jsonl(
        d / "columns.jsonl", [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in GOOD_ROWS]
    )
    write_jsonl(d / "null.jsonl", broken(chosen=None))
    write_jsonl(d / "number.jsonl", broken(prompt=3))
    write_jsonl(d / "same.jsonl", broken(rejected=GOOD_ROWS[2]["chosen"]))
    write_jsonl(d / "one.jsonl", GOOD_ROWS[:1])
    write_jsonl(d / "mojibake.jsonl", broken(chosen="データ".encode().decode("cp1252")))
    write_jsonl(d / "long.jsonl", [{**r, "prompt": "長い質問です。" * 30 + r["prompt"]} for r in GOOD_ROWS])
    (d / "not-a-model").mkdir()
    (d / "not-a-model" / "notes.txt").write_text("hello", encoding="utf-8")
    (d / "garbage.gguf").write_bytes(b"GGUF" + bytes(random.Random(0).randrange(256) for _ in range(4096)))
    whole = tiny_gguf(d / "whole.gguf").read_bytes()
    (d / "truncated.gguf").write_bytes(whole[: len(whole) // 2])
    shutil.copytree(tiny_model, d / "no-eos")
    config = json.loads((d / "no-eos" / "tokenizer_config.json").read_text())
    config.pop("eos_token", None)
    (d / "no-eos" / "tokenizer_config.json").write_text(json.dumps(config))
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora).save_pretrained(d / "adapter")
    build_tiny_model(d / "other-base", hidden_size=32)
    (d / "pickled").mkdir()
    shutil.copy(d / "adapter" / "adapter_config.json", d / "pickled")
    torch.save(load_file(d / "adapter" / "adapter_model.safetensors"), d / "pickled" / "adapter_model.bin")
    (d / "finished").mkdir()
    (d / "finished" / RUN_MARKER).write_text("{}")
    (d / "finished" / "metrics.json").write_text("{}")
    (d / "mine").mkdir()
    (d / "mine" / "thesis.tex").write_text("the user's own file")
    (d / "interrupted").mkdir()
    (d / "interrupted" / RUN_MARKER).write_text("{}")
    (d / "interrupted" / "INCOMPLETE").write_text("resume me")
    (d / "a-file").write_text("not a directory")
    return d


def train(*settings: str, args: tuple[str, ...] = (), model: str = "{tiny}") -> tuple[str, ...]:
    """`python -m dpo_recipe.train` arguments for the tiny model; {tiny}, {bad}, {out} are filled in per case."""
    return ("train-module", "--recipe", "tiny-ja", "--output-dir", "{out}", "--set", f"model.name_or_path={model}",
            *[a for s in settings for a in ("--set", s)], *args)  # fmt: skip


def data(source: str, *settings: str) -> tuple[str, ...]:
    return train(f"data.source={{bad}}/{source}", *settings)


def cli(*args: str) -> tuple[str, ...]:
    return ("cli", *args)


# (id, argv, key words of the message, exit status)
BAD_INPUT = [
    # recipes
    ("unknown-key", train("training.learnig_rate=1"), ["training.learnig_rate", "did you mean learning_rate"], 2),
    ("unknown-section", train("trainig.seed=1"), ["trainig: unknown section", "did you mean training"], 2),
    ("wrong-type", train("training.per_device_batch_size=two"), ["per_device_batch_size", "expected an integer"], 2),
    ("range-lora-r", train("lora.r=0"), ["lora.r", "must be >= 1"], 2),
    ("range-learning-rate", train("training.learning_rate=-1"), ["training.learning_rate", "must be > 0"], 2),
    ("range-test-size", train("data.test_size=2"), ["data.test_size", "must be <= 0.9"], 2),
    ("nan-learning-rate", train("training.learning_rate=.nan"), ["training.learning_rate", "a finite number"], 2),
    ("inf-beta", train("training.beta=.inf"), ["training.beta", "expected a finite number, got inf"], 2),
    ("nan-loss-weight", train("training.loss_weights=[.nan]"), ["training.loss_weights", "finite numbers"], 2),
    ("bad-choice", train("training.precision=fp8"), ["training.precision", "one of auto, fp32, bf16, fp16"], 2),
    ("missing-section", ("train-module", "--recipe", "{bad}/no-model.yaml"), ["model: required section"], 2),
    ("yaml-syntax", ("train-module", "--recipe", "{bad}/syntax.yaml"), ["YAML syntax error at line 3, column 11"], 2),
    ("recipe-not-mapping", ("train-module", "--recipe", "{bad}/list.yaml"), ["must be a mapping of sections"], 2),
    ("recipe-missing", ("train-module", "--recipe", "{bad}/nope.yaml"), ["nope.yaml", "neither an existing file"], 2),
    ("recipe-typo", ("train-module", "--recipe", "tiny-jp"), ["Did you mean 'tiny-ja'"], 2),
    ("conflicting-overrides", train("training.beta=0.1", "training.beta=0.2"), ["training.beta", "given twice"], 2),
    ("conflicting-output-dir", train("training.output_dir=elsewhere"), ["training.output_dir", "given twice"], 2),
    ("malformed-set", train("learning_rate=1"), ["expected SECTION.KEY=VALUE"], 2),
    ("recipe-and-from-hub", ("train-module", "--recipe", "tiny-ja", "--from-hub", "a/b"), ["not allowed with"], 2),
    ("no-recipe", ("train-module",), ["one of the arguments --recipe --from-hub is required"], 2),
    ("lora-target", train("lora.target_modules=[c_attn]"), ["c_attn not found", "linear modules are", "q_proj"], 2),
    ("qlora-on-cpu", train("model.load_in_4bit=true"), ["load_in_4bit", "needs a CUDA GPU"], 2),
    ("bf16-without-support", train("training.precision=bf16"), ["precision bf16", "no native bfloat16", "fp32"], 2),
    ("fp16-on-cpu", train("training.precision=fp16"), ["precision fp16 needs a CUDA GPU"], 2),
    (
        "push-without-token",
        train("hub.push=true", "hub.repo_id=alice/x"),
        ["needs a Hugging Face token", "HF_TOKEN"],
        2,
    ),
    ("push-without-repo", train("hub.push=true"), ["hub.repo_id: required when hub.push is true"], 2),
    ("finished-output-dir", train(args=("--output-dir", "{bad}/finished")), ["holds a finished run", "--overwrite"], 2),
    ("interrupted-output-dir", train(args=("--output-dir", "{bad}/interrupted")), ["interrupted run", "--resume"], 2),
    ("users-folder", train(args=("--output-dir", "{bad}/mine")), ["holds no dpo-recipe run (thesis.tex)"], 2),
    (
        "users-folder-overwrite",
        train(args=("--output-dir", "{bad}/mine", "--overwrite")),
        ["holds no dpo-recipe run", "with or without --overwrite"],
        2,
    ),
    ("resume-and-overwrite", train(args=("--resume", "--overwrite")), ["contradict each other"], 2),
    (
        "output-dir-under-file",
        train(args=("--output-dir", "{bad}/a-file/run")),
        ["a-file is a file", "--output-dir"],
        2,
    ),
    # data
    ("data-missing", data("nope.jsonl"), ["nope.jsonl", "does not exist"], 2),
    ("data-empty", data("empty.jsonl"), ["empty.jsonl", "the file is empty"], 2),
    ("data-extension", data("data.txt"), ["data.txt", "unsupported file type '.txt'"], 2),
    ("data-encoding", data("sjis.jsonl"), ["sjis.jsonl, line 1", "not valid UTF-8", "iconv"], 2),
    ("data-bad-json-line", data("bad-line.jsonl"), ["bad-line.jsonl, line 2", "not valid JSON"], 2),
    ("data-line-not-object", data("array-line.jsonl"), ["line 1", "expected a JSON object"], 2),
    ("data-json-not-objects", data("object.json"), ["object.json", "list of objects"], 2),
    ("data-bad-parquet", data("bad.parquet"), ["bad.parquet", "not a readable Parquet file"], 2),
    ("data-missing-columns", data("columns.jsonl"), ["unknown-form", "(question, good, bad)", "data.prompt_column"], 2),
    (
        "data-misnamed-mapping",
        data("good.jsonl", "data.chosen_column=better"),
        ["data.chosen_column 'better'", "no such column", "found: prompt"],
        2,
    ),  # fmt: skip
    ("data-null-field", data("null.jsonl"), ["not-a-string", "in split", "chosen"], 2),
    ("data-non-string", data("number.jsonl"), ["not-a-string", "in split", "prompt"], 2),
    ("data-chosen-equals-rejected", data("same.jsonl"), ["chosen-equals-rejected", "in split"], 2),
    ("data-zero-rows-after-split", data("one.jsonl", "data.test_size=0.5"), ["empty-split", "has no rows"], 2),
    ("data-missing-split", data("good.jsonl", "data.train_split=validation"), ["no split 'validation'"], 2),
    ("data-all-truncated", data("long.jsonl", "training.max_length=32"), ["max_length 32 leaves no room"], 2),
    ("data-mojibake", data("mojibake.jsonl"), ["mojibake", "in split"], 2),
    # models
    ("model-not-a-model", train(model="{bad}/not-a-model"), ["not-a-model", "no tokenizer"], 2),
    ("model-missing-path", train(model="{bad}/nowhere"), ["nowhere", "no tokenizer"], 2),
    ("gguf-corrupt", train("model.gguf_file={bad}/garbage.gguf"), ["garbage.gguf", "truncated or corrupt"], 2),
    ("gguf-truncated", train("model.gguf_file={bad}/truncated.gguf"), ["truncated.gguf", "truncated or corrupt"], 2),
    ("gguf-missing", train("model.gguf_file={bad}/missing.gguf"), ["missing.gguf", "no such file"], 2),
    ("tokenizer-without-eos", train(model="{bad}/no-eos"), ["has no EOS token"], 2),
    (
        "adapter-base-mismatch",
        cli(
            "eval",
            "--adapter",
            "{bad}/adapter",
            "--base",
            "{bad}/other-base",
            "--data",
            "{bad}/good.jsonl",
            "--split",
            "train",
            "--out",
            "{out}/r.json",
        ),
        ["does not fit base model", "--base"],
        2,
    ),  # fmt: skip
    (
        "adapter-pickle",
        cli("eval", "--adapter", "{bad}/pickled", "--base", "{tiny}", "--out", "{out}/r.json"),
        ["adapter_model.bin", "safetensors only", "save_file(torch.load("],
        2,
    ),  # fmt: skip
    (
        "adapter-not-adapter",
        cli("eval", "--adapter", "{bad}/not-a-model", "--out", "{out}/r.json"),
        ["not a LoRA adapter directory"],
        2,
    ),  # fmt: skip
    ("adapter-bad-name", cli("eval", "--adapter", "{bad}/x.bin", "--out", "{out}/r.json"), ["neither a directory"], 2),
    # CLI sub-commands: missing or contradictory options
    ("cli-train-no-source", cli("train"), ["one of the arguments --recipe --from-hub is required"], 2),
    ("cli-train-two-sources", cli("train", "--recipe", "tiny-ja", "--from-hub", "a/b"), ["not allowed with"], 2),
    ("cli-train-resume-overwrite", cli("train", "--recipe", "tiny-ja", "--resume", "--overwrite"), ["contradict"], 2),
    ("cli-train-processes", cli("train", "--recipe", "tiny-ja", "--num-processes", "0"), ["--num-processes"], 2),
    ("cli-train-bad-set", cli("train", "--recipe", "tiny-ja", "--set", "lora.r=0"), ["lora.r: must be >= 1"], 1),
    (
        "cli-train-unknown-loss",
        cli("train", "--recipe", "tiny-ja", "--set", "training.loss_type=dpo"),
        ["training.loss_type: unknown loss 'dpo'", "known: sigmoid, hinge"],
        1,
    ),
    ("cli-push-no-dir", cli("push"), ["Missing argument 'OUTPUT_DIR'"], 2),
    ("cli-push-no-repo", cli("push", "{bad}/adapter"), ["Missing option '--repo-id'"], 2),
    ("cli-push-missing-dir", cli("push", "{bad}/nope", "--repo-id", "alice/x"), ["does not exist"], 2),
    ("cli-push-unfinished", cli("push", "{bad}/adapter", "--repo-id", "alice/x"), ["unfinished run", "resume"], 1),
    ("cli-eval-no-adapter", cli("eval"), ["the following arguments are required: --adapter"], 2),
    ("cli-eval-max-pairs", cli("eval", "--adapter", "{bad}/adapter", "--max-pairs", "0"), ["--max-pairs"], 2),
    ("cli-generate-no-out", cli("data", "generate"), ["Missing option '--out'"], 2),
    ("cli-generate-few", cli("data", "generate", "--out", "{out}", "--num-pairs", "5"), ["--num-pairs"], 2),
    (
        "cli-generate-not-empty",
        cli("data", "generate", "--out", "{bad}/finished", "--num-pairs", "10", "--tokenizer", "none"),
        ["already exists and is not empty", "--overwrite"],
        1,
    ),  # fmt: skip
    ("cli-lint-no-source", cli("data", "lint"), ["Missing argument 'SOURCE'"], 2),
    ("cli-lint-bad-file", cli("data", "lint", "{bad}/bad-line.jsonl"), ["line 2: not valid JSON"], 1),
    ("cli-data-push-no-repo", cli("data", "push", "{bad}/good.jsonl"), ["Missing option '--repo-id'"], 2),
    ("cli-data-push-missing", cli("data", "push", "{bad}/nope", "--repo-id", "alice/x"), ["does not exist"], 2),
    ("cli-recipes-show-none", cli("recipes", "show"), ["Missing argument 'NAME'"], 2),
    (
        "cli-recipes-show-bad",
        cli("recipes", "show", "tiny-ja", "--set", "training.beta=x"),
        ["expected a finite number"],
        1,
    ),
    ("cli-model-tiny-no-out", cli("model", "tiny"), ["Missing option '--out'"], 2),
    ("cli-quickstart-few", cli("quickstart", "--train-pairs", "2"), ["--train-pairs"], 2),
]


def _tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize(("argv", "expected", "status"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_fails_early_and_clearly(
    argv, expected, status, bad: Path, tiny_model: Path, tmp_path: Path, runner, monkeypatch, capsys, record
) -> None:
    """One paragraph naming the file / key / row and the fix, non-zero exit, no weights, nothing half-written."""

    def weights_loaded(*args: object, **kwargs: object) -> None:
        raise AssertionError("model weights were loaded before the input was checked")

    # every module first, then the patch: one imported under the patch would keep the stand-in for good
    modules = [importlib.import_module(m) for m in ("dpo_recipe.models.loading", "dpo_recipe.models.adapters")]
    for module in modules:
        monkeypatch.setattr(module, "load_model", weights_loaded)
    monkeypatch.setattr("dpo_recipe.models.hardware.cpu_has_native_bf16", lambda: False)  # the same on every CI CPU
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    args = [a.format(tiny=tiny_model, bad=bad, out=out) for a in argv[1:]]
    before = _tree(bad)
    with record.case("bad-input"):
        if argv[0] == "cli":
            result = invoke(runner, *args)
            code, output = result.exit_code, result.output
        else:
            from dpo_recipe.train import main

            with pytest.raises(SystemExit) as exit_info:
                main(args)
            captured = capsys.readouterr()
            code, output = exit_info.value.code, captured.out + captured.err
        message = output[output.rfind("rror:") :]
        assert code == status, output
        for words in expected:
            assert words.format(bad=bad) in message, f"{words!r} not in {message!r}"
        assert "Traceback" not in output and "\n\n" not in message.strip()
        assert not out.exists() and _tree(bad) == before  # nothing created, nothing the user had changed


# ---------------------------------------------------------------------------- training faults

# 64 pairs / 4 per step = 16 optimizer steps, a checkpoint every 2; no generations, 4 held-out pairs. That leaves
# room for three kills, each after a newer checkpoint, however fast a step is (on 2 cores a tiny step takes
# ~75 ms, so kills must be placed by checkpoint, not by the clock).
FAULT_SETTINGS = ("training.save_steps=2", "data.max_train_pairs=64", "data.max_eval_pairs=4", "eval.num_generations=0")
FAULT_STEPS = 16
RESUMED = re.compile(r"after step (\d+); its checkpoint is in (\S+)\. Nothing is lost: continue with (.+--resume)")


@pytest.fixture(scope="module")
def uninterrupted(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    run("tiny-ja", tiny_overrides(tiny_model, *FAULT_SETTINGS), output_dir=str(out))
    return out


def start_training(tiny_model: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        train_cmd(tiny_model, out, *FAULT_SETTINGS, extra=extra),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


def wait_for_newer_checkpoint(out: Path, process: subprocess.Popen) -> Path:
    """Block until the run saves a checkpoint newer than the one it started (or resumed) from.

    Called right after ``process`` starts, before it can have trained a step (imports alone take seconds)."""
    start = newest_complete_checkpoint(out)
    target = (checkpoint_step(start) if start else 0) + 2
    deadline = time.monotonic() + 240
    while (newest := newest_complete_checkpoint(out)) is None or checkpoint_step(newest) < target:
        assert process.poll() is None and time.monotonic() < deadline, f"no checkpoint-{target} in {out}"
        time.sleep(0.01)
    return newest


def finish_and_compare(tiny_model: Path, out: Path, reference: Path, record) -> None:
    """The last --resume completes with the uninterrupted run's step count and adapter."""
    subprocess.run(
        train_cmd(tiny_model, out, *FAULT_SETTINGS, extra=("--resume",)), env=subprocess_env(), check=True, timeout=300
    )
    steps = [json.loads((d / "metrics.json").read_text())["train"]["steps"] for d in (out, reference)]
    record.lost(rows=steps[1] - steps[0])
    assert steps[0] == steps[1] == FAULT_STEPS
    resumed, expected = (load_file(d / "adapter_model.safetensors") for d in (out, reference))
    assert resumed.keys() == expected.keys()
    # Resuming restores the optimizer, scheduler and RNG state and replays the same data order, so on CPU
    # fp32 each step recomputes the same numbers; only the thread split of a reduction may differ between
    # processes. Measured: identical (max |diff| 0.0, weights up to ~0.13) on 2 cores; 1e-6 absolute leaves
    # room for other thread counts, while a lost or repeated step (Adam at lr 1e-3 moves weights ~1e-3) fails.
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6)
    assert not (out / "INCOMPLETE").exists()
    # the report is the whole run's, as the uninterrupted run reports it (transformers' own figures cover
    # the last train() call only: the resumed steps' mean loss, or 0.0 and 0 s when nothing was left to train)
    resumed, expected = (json.loads((d / "metrics.json").read_text())["train"] for d in (out, reference))
    assert abs(resumed["loss"] - expected["loss"]) <= 1e-6, (resumed["loss"], expected["loss"])
    assert resumed["rewards/accuracies"] == expected["rewards/accuracies"]
    accuracies = [json.loads((d / "metrics.json").read_text())["eval"]["overall"] for d in (out, reference)]
    assert accuracies[0]["reward_accuracy"] == accuracies[1]["reward_accuracy"]
    parts = resumed["runtime_parts_s"]
    assert len(parts) == len(resumed["resumed_at_steps"]) + 1 and resumed["runtime_s"] == round(sum(parts), 2) > 0
    assert resumed["pairs_per_s"] == round(expected["pairs"] / resumed["runtime_s"], 4)


class _RunsCode:
    """Pickled, this object asks the unpickler to call ``touch`` on a marker: a checkpoint file from a stranger."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_poisoned_checkpoint_on_resume_is_refused_in_one_paragraph(
    uninterrupted: Path, tiny_model: Path, tmp_path: Path, record
) -> None:
    import pickle
    import shutil

    from dpo_recipe.errors import RecipeError

    out, marker = tmp_path / "poisoned", tmp_path / "code-ran"
    shutil.copytree(uninterrupted, out)
    (out / "metrics.json").unlink()
    newest = newest_complete_checkpoint(out)
    (newest / "optimizer.pt").write_bytes(pickle.dumps(_RunsCode(marker)))
    with record.case("security"), pytest.raises(RecipeError) as refused:
        run("tiny-ja", tiny_overrides(tiny_model, *FAULT_SETTINGS), output_dir=str(out), resume=True)
    assert f"--resume: a file in {newest} is not a plain checkpoint and was not loaded" in str(refused.value)
    assert f"Delete {newest} to resume from the checkpoint before it" in str(refused.value)
    assert not marker.exists()


def test_sigkill_three_times_then_resume_matches_uninterrupted(
    uninterrupted: Path, tiny_model: Path, tmp_path: Path, record
) -> None:
    out, rng = tmp_path / "killed", random.Random(7)
    with record.case("fault"):
        for kill in range(3):  # each after a newer checkpoint, at a seeded-random moment; resumes get killed too
            process = start_training(tiny_model, out, *(["--resume"] if kill else []))
            wait_for_newer_checkpoint(out, process)
            time.sleep(rng.uniform(0.0, 0.05))  # under one step: sometimes mid-step, sometimes mid-save
            process.kill()
            process.communicate()
            assert not (out / "metrics.json").exists() and "--resume" in (out / "INCOMPLETE").read_text()
        finish_and_compare(tiny_model, out, uninterrupted, record)


def test_sigint_and_sigterm_save_the_step_and_say_how_to_resume(
    uninterrupted: Path, tiny_model: Path, tmp_path: Path, record
) -> None:
    out = tmp_path / "stopped"
    with record.case("fault"):
        for attempt, (signum, status) in enumerate(((signal.SIGINT, 130), (signal.SIGTERM, 143))):
            process = start_training(tiny_model, out, *(["--resume"] if attempt else []))
            reached = checkpoint_step(wait_for_newer_checkpoint(out, process))
            process.send_signal(signum)
            _, stderr = process.communicate(timeout=240)
            assert process.returncode == status, stderr[-2000:]
            found = RESUMED.search(stderr)
            assert found, stderr[-2000:]
            step, checkpoint, command = int(found[1]), Path(found[2]), found[3]
            assert checkpoint == out / "checkpoints" / f"checkpoint-{step}" and step >= reached
            assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
            assert command.startswith("accelerate launch -m dpo_recipe.train --recipe tiny-ja")
            assert f"--output-dir {out} --resume" in command and command in (out / "INCOMPLETE").read_text()
        finish_and_compare(tiny_model, out, uninterrupted, record)


@pytest.mark.parametrize(
    ("phase", "patched", "signum", "status"),
    [
        (
            "tokenizing and reference pass",
            "dpo_recipe.training.trainer.PackedDPOTrainer._compute_reference",
            "INT",
            130,
        ),
        ("held-out scoring", "dpo_recipe.evaluation.scoring.score_pairs", "TERM", 143),
    ],
)
def test_a_stop_outside_the_steps_says_how_to_continue_and_continue_works(
    tiny_model: Path, tmp_path: Path, monkeypatch, capsys, record, phase: str, patched: str, signum: str, status: int
) -> None:
    """A real SIGINT / SIGTERM delivered in the reference pass or in held-out scoring: exit 130 / 143 with the one
    command that continues, no traceback; that command completes the run."""
    from dpo_recipe.train import main

    out = tmp_path / "stopped"
    argv = train_cmd(tiny_model, out, *FAULT_SETTINGS)[3:]  # the module's own arguments
    monkeypatch.setenv("DPO_RECIPE_CACHE", str(tmp_path / "cache"))  # cold: the reference pass runs
    with record.case("fault"):
        with monkeypatch.context() as patch:
            patch.setattr(patched, lambda *a, **k: os.kill(os.getpid(), getattr(signal, f"SIG{signum}")))
            with pytest.raises(SystemExit) as stopped:
                main(argv)
        stderr = capsys.readouterr().err
        assert stopped.value.code == status and "Traceback" not in stderr
        message = re.search(r"Error: (.*)", stderr)[1]
        assert message.startswith(f"Stopped on SIG{signum} during {phase}; ")
        assert message.endswith(f"--output-dir {out} --resume") and "--resume" in (out / "INCOMPLETE").read_text()
        check_output_dir(out, resume=True, overwrite=False)  # the lock was given back
        main([*argv, "--resume"])
        assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == FAULT_STEPS
        assert not (out / "INCOMPLETE").exists()


def test_two_runs_into_one_folder_one_is_refused_before_writing(tiny_model: Path, tmp_path: Path, record) -> None:
    """Started together: the lock lets one in; the other stops at once, naming it; the folder holds one whole run."""
    import hashlib

    out = tmp_path / "shared"
    with record.case("fault"):
        runs = [
            subprocess.Popen(
                train_cmd(tiny_model, out, *FAULT_SETTINGS, f"training.seed={seed}"),
                env=subprocess_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for seed in (1, 2)
        ]
        errors = [p.communicate(timeout=300)[1] for p in runs]
        codes = sorted(p.returncode for p in runs)
        assert codes == [0, 2], errors
        refused = errors[[p.returncode for p in runs].index(2)]
        assert re.search(rf"Error: {out} is being written by another run \(pid \d+ on ", refused), refused[-2000:]
        metrics = json.loads((out / "metrics.json").read_text())
        weights = load_file(out / "adapter_model.safetensors")
        digest = hashlib.sha256()
        for name in sorted(weights):
            digest.update(name.encode())
            digest.update(weights[name].float().numpy().tobytes())
        assert metrics["distributed"]["adapter_digest_by_rank"] == [digest.hexdigest()[:16]]
        assert not (out / "INCOMPLETE").exists()
        check_output_dir(out, resume=True, overwrite=False)  # the lock was given back


HANG_IN_SCORING = """
import pathlib, sys, time
from dpo_recipe.evaluation import scoring
def hang(*args, **kwargs):
    pathlib.Path(sys.argv[1]).write_text("scoring held-out pairs")
    time.sleep(600)
scoring.score_pairs = hang
from dpo_recipe.train import main
main(sys.argv[2:])
"""


def test_a_kill_in_held_out_scoring_then_resume_reports_the_whole_run(
    uninterrupted: Path, tiny_model: Path, tmp_path: Path, record
) -> None:
    """Killed after the last checkpoint, in held-out scoring: --resume trains nothing and reports the run."""
    out, scoring = tmp_path / "killed-scoring", tmp_path / "scoring"
    with record.case("fault"):
        arguments = train_cmd(tiny_model, out, *FAULT_SETTINGS)[3:]  # after `python -m dpo_recipe.train`
        process = subprocess.Popen(
            [sys.executable, "-c", HANG_IN_SCORING, str(scoring), *arguments], env=subprocess_env(), text=True
        )
        deadline = time.monotonic() + 240
        while not scoring.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the run never reached held-out scoring"
            time.sleep(0.05)
        process.kill()
        process.communicate()
        assert checkpoint_step(newest_complete_checkpoint(out)) == FAULT_STEPS
        finish_and_compare(tiny_model, out, uninterrupted, record)
        assert json.loads((out / "metrics.json").read_text())["train"]["resumed_at_steps"] == [FAULT_STEPS]


def test_disk_full_while_saving_keeps_the_last_checkpoint(tiny_model: Path, tmp_path: Path, record) -> None:
    out = tmp_path / "full"
    with record.case("fault"):
        process = start_training(tiny_model, out)
        good = wait_for_newer_checkpoint(out, process)
        before = _tree(good)
        # From now on no file of the run may grow past 40 kB (writes fail with EFBIG; Python ignores SIGXFSZ):
        # the next checkpoint's tokenizer.json (150 kB) cannot be written, as on a full disk.
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (40_000, 40_000))
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 2, stderr[-2000:]
        message = re.search(r"Error: (.*)", stderr)[1]  # one line, after the progress bar's last redraw
        assert message.startswith(f"Writing to {out} failed: File too large.")
        named = Path(re.search(r"The last complete checkpoint, (\S+), is intact", message)[1])
        assert message.endswith(f"--output-dir {out} --resume")
        changed = [name for name, digest in before.items() if _tree(good).get(name) != digest]
        record.lost(nbytes=sum((good / name).stat().st_size if (good / name).exists() else 1 for name in changed))
        assert not changed and named.name.startswith("checkpoint-")
        assert load_file(named / "adapter_model.safetensors")  # the checkpoint named loads
        assert not (out / "metrics.json").exists() and (out / "INCOMPLETE").exists()


def test_a_failed_file_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, record) -> None:
    """Reports and the reference-log-prob cache are written through write_file_atomically."""
    target = tmp_path / "eval.json"
    target.write_text("old report", encoding="utf-8")

    def write_half_then_fail(staging: Path) -> None:
        staging.write_text("half a new rep", encoding="utf-8")
        raise OSError(28, "No space left on device")

    with record.case("fault"):
        with pytest.raises(OSError, match="No space left"):
            write_file_atomically(target, write_half_then_fail)
        record.lost(nbytes=0 if target.read_text(encoding="utf-8") == "old report" else len("old report"))
        assert target.read_text(encoding="utf-8") == "old report" and sorted(tmp_path.iterdir()) == [target]
        write_file_atomically(target, lambda staging: staging.write_text("new report", encoding="utf-8"))
        assert target.read_text(encoding="utf-8") == "new report" and sorted(tmp_path.iterdir()) == [target]
        assert target.stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------------- Hub faults


@pytest.fixture(scope="module")
def two_runs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two finished runs with different adapters; each card names its seed in the reproduce command."""
    root = tmp_path_factory.mktemp("two-runs")
    settings = ("data.max_train_pairs=8", "data.max_eval_pairs=4", "eval.num_generations=0")
    for seed in (1, 2):
        overrides = tiny_overrides(tiny_model, *settings, f"training.seed={seed}")
        run("tiny-ja", overrides, output_dir=str(root / f"s{seed}"))
    return {"training.seed=1": root / "s1", "training.seed=2": root / "s2"}


def remote_run(repo_id: str, runs: dict[str, Path]) -> str:
    """Which local run the repo's main holds; fails unless adapter, metrics, recipe and card all agree."""
    remote = run_client(f"""
        import hashlib, json
        from huggingface_hub import HfApi, hf_hub_download
        files = sorted(HfApi().list_repo_files({repo_id!r}))
        read = lambda name: open(hf_hub_download({repo_id!r}, name), "rb").read()
        print(json.dumps({{"files": files, "card": read("README.md").decode(),
                          "sha": {{n: hashlib.sha256(read(n)).hexdigest() for n in files if n != "README.md"}}}}))
    """)

    def matches(out: Path) -> bool:
        pushed = {n: d for n, d in remote["sha"].items() if n != ".gitattributes"}
        return all(hashlib.sha256((out / n).read_bytes()).hexdigest() == d for n, d in pushed.items())

    (owner,) = [key for key, out in runs.items() if matches(out)]
    assert f"--set {owner}" in remote["card"] and all(f"--set {k}" not in remote["card"] for k in runs if k != owner)
    return owner


def test_push_survives_hub_faults_and_lands_whole_or_not_at_all(
    hub, runner, two_runs: dict[str, Path], monkeypatch, record
) -> None:
    monkeypatch.setenv("DPO_RECIPE_HUB_BACKOFF", "0.1")
    (seed1, a), (seed2, b) = two_runs.items()
    repo, commit, preupload = "alice/faulty", "/api/models/alice/faulty/commit/", "/api/models/alice/faulty/preupload/"
    assert invoke(runner, "push", a, "--repo-id", repo).exit_code == 0
    assert (hub.faults.hits(preupload), hub.faults.hits(commit)) == (1, 1)

    with record.case("fault"):  # huggingface_hub retries preupload and LFS uploads itself: one commit request
        hub.faults.fail(preupload, status=500, times=2)
        hub.faults.drop("/_lfs/", method="PUT")
        result = invoke(runner, "push", b, "--repo-id", repo)
        assert result.exit_code == 0, result.output
        assert (hub.faults.hits(preupload), hub.faults.hits(commit)) == (1 + 3, 1 + 1)
        assert remote_run(repo, two_runs) == seed2

    with record.case("fault"):  # it does not retry whoami or the commit: dpo-recipe does
        hub.faults.fail("/api/whoami-v2", status=502)
        hub.faults.fail(commit, status=500)
        hub.faults.drop(commit)
        result = invoke(runner, "push", a, "--repo-id", repo)
        assert result.exit_code == 0, result.output
        assert hub.faults.hits(commit) == 1 + 1 + 3
        assert remote_run(repo, two_runs) == seed1

    with record.case("fault"):  # a Hub that stalls past the timeout: the commit lands once
        monkeypatch.setenv("DPO_RECIPE_HUB_TIMEOUT", "1")
        hub.faults.delay(commit, seconds=3)
        result = invoke(runner, "push", b, "--repo-id", repo)
        assert result.exit_code == 0, result.output
        assert remote_run(repo, two_runs) == seed2

    with record.case("fault"):  # down for good: nothing lands, the message says so, a re-run completes it
        head = HfApi().model_info(repo).sha
        hub.faults.fail(commit, status=503, times=100)
        result = invoke(runner, "push", a, "--repo-id", repo)
        assert result.exit_code == 1 and "failed 4 times (last: HTTP 503). Nothing was committed" in result.output
        assert "Re-run the same push command" in result.output
        assert HfApi().model_info(repo).sha == head and remote_run(repo, two_runs) == seed2
        hub.faults.clear()
        assert invoke(runner, "push", a, "--repo-id", repo).exit_code == 0
        assert remote_run(repo, two_runs) == seed1


def test_every_push_failure_ends_in_one_paragraph(
    hub, runner, two_runs: dict[str, Path], monkeypatch, capfd, record
) -> None:
    """LFS uploads that always fail, a Hub that stores a truncated card, HF_HUB_OFFLINE left set: each a message
    that says what happened and what to do, exit 1, no traceback."""
    import functools

    import huggingface_hub.constants
    import huggingface_hub.lfs
    from hub_server import git_blob_oid

    monkeypatch.setenv("DPO_RECIPE_HUB_BACKOFF", "0.01")
    # huggingface_hub retries each LFS upload 5 times, waiting 1-8 s: the same retries, without the waits
    quick = functools.partial(huggingface_hub.lfs.http_backoff, base_wait_time=0.01, max_wait_time=0.01)
    monkeypatch.setattr(huggingface_hub.lfs, "http_backoff", quick)
    (_, out), repo = next(iter(two_runs.items())), "alice/failing"
    with record.case("fault"):
        hub.faults.fail("/_lfs/", status=500, times=10_000, method="PUT")
        result = invoke(runner, "push", out, "--repo-id", repo)
        hub.faults.clear()
        assert result.exit_code == 1, result.output
        assert f"Pushing to '{repo}' failed 4 times (last: HTTP 500). Nothing was committed" in result.output
        assert "Traceback" not in result.output + capfd.readouterr().err

    with record.case("fault"):
        store, apply = hub.store, hub.store.apply

        def truncating(kind: str, repo_id: str, branch: str, title: str, parent, ops: list) -> str:
            def cut(op: tuple) -> tuple:
                if op[0] != "add" or op[1] != "README.md":
                    return op
                data = store.blob_path(op[2]["sha256"]).read_bytes()[:200]
                return (
                    "add",
                    "README.md",
                    {"sha256": store.put_blob(data), "size": len(data), "lfs": False, "oid": git_blob_oid(data)},
                )

            return apply(kind, repo_id, branch, title, parent, [cut(op) for op in ops])

        monkeypatch.setattr(store, "apply", truncating)
        result = invoke(runner, "push", out, "--repo-id", repo)
        monkeypatch.setattr(store, "apply", apply)
        assert result.exit_code == 1 and "did not verify: README.md has 200 bytes, expected" in result.output

    with record.case("bad-input"):
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        result = invoke(runner, "push", out, "--repo-id", repo)
        assert result.exit_code == 1 and "HF_HUB_OFFLINE=1 is set" in result.output
        result = invoke(runner, "push", out, "--repo-id", "not a repo id")
        assert result.exit_code == 1 and "--repo-id 'not a repo id' is not a Hub repo id" in result.output


def test_two_pushes_at_once_leave_one_whole_run(hub, two_runs: dict[str, Path], record) -> None:
    with record.case("fault"):
        pushes = [
            subprocess.Popen(
                [sys.executable, "-m", "dpo_recipe", "push", str(out), "--repo-id", "alice/race"],
                env=subprocess_env(DPO_RECIPE_HUB_BACKOFF="0.2"),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for out in two_runs.values()
        ]
        outputs = [p.communicate(timeout=240)[0] for p in pushes]
        assert [p.returncode for p in pushes] == [0, 0], outputs
        assert remote_run("alice/race", two_runs) in two_runs


# ---------------------------------------------------------------------------- security


def test_the_token_never_leaks(hub, runner, tiny_model: Path, tmp_path: Path, monkeypatch, capfd, record) -> None:
    """generate → train (TensorBoard, offline W&B, trackio, push) → eval from the Hub → push → a refused push:
    grep every byte."""
    import wandb

    monkeypatch.setenv("HF_TOKEN", CANARY)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))  # offline (conftest); trackio: the session's folder
    (tmp_path / "wandb").mkdir()
    wandb.teardown()  # a W&B run of an earlier test kept its folder
    with record.case("security"):
        data = tmp_path / "data"
        outputs = [invoke(runner, "data", "generate", "--out", data, "--num-pairs", 60, "--tokenizer", "none").output]
        settings = tiny_overrides(
            tiny_model,
            f"data.source={data}",
            "data.max_train_pairs=8",
            "data.max_eval_pairs=4",
            "training.tensorboard=true",
            "training.report_to=[wandb, trackio]",
            "hub.push=true",
            "hub.repo_id=alice/canary",
        )
        run("tiny-ja", settings, output_dir=str(tmp_path / "out"))
        report = tmp_path / "eval" / "report.json"
        outputs.append(
            invoke(
                runner,
                "eval",
                "--adapter",
                "alice/canary",
                "--base",
                tiny_model,
                "--data",
                data,
                "--max-pairs",
                4,
                "--out",
                report,
            ).output
        )
        outputs.append(invoke(runner, "push", tmp_path / "out", "--repo-id", "alice/canary-2", "--private").output)
        refused = invoke(runner, "push", tmp_path / "out", "--repo-id", "bob/not-yours")
        assert refused.exit_code == 1 and "cannot write to 'bob/not-yours'" in refused.output
        outputs.append(refused.output)
        captured = capfd.readouterr()
        outputs += [captured.out, captured.err]
        trackio_project = Path(os.environ["TRACKIO_DIR"]) / "dpo-recipe.db"
        files = [p for p in tmp_path.rglob("*") if p.is_file()] + [trackio_project]
        assert any("tfevents" in p.name for p in files) and report.exists()
        assert any(p.suffix == ".wandb" for p in files) and trackio_project.is_file()
        assert (tmp_path / "hub-storage" / "blobs").is_dir()  # what the Hub stored is searched too
        leaks = [str(p) for p in files if CANARY.encode() in p.read_bytes()]
        leaks += [f"output {i}" for i, text in enumerate(outputs) if CANARY in text]
        assert not leaks, leaks
        pickles = [p for p in (tmp_path / "out").rglob("*") if p.suffix in (".bin", ".pt", ".pth")]
        assert all("checkpoints" in p.parts for p in pickles)  # the trainer's own state only; adapters: safetensors


def test_trust_remote_code_is_off_unless_the_recipe_says_and_the_card_tells(record) -> None:
    from dpo_recipe.artifacts.cards import render_model_card
    from dpo_recipe.config.loader import load_recipe, single_run_recipes
    from dpo_recipe.models.loading import _hub_kwargs

    with record.case("security"):
        for name in single_run_recipes():
            assert load_recipe(name).model.trust_remote_code is False
        plain, remote = load_recipe("tiny-ja"), load_recipe("tiny-ja", ["model.trust_remote_code=true"])
        assert _hub_kwargs(plain.model)["trust_remote_code"] is False
        cards = [str(render_model_card(r, {}, recipe_name="tiny-ja", command="c", plots=[])) for r in (plain, remote)]
        assert "trust_remote_code" not in cards[0].split("<details>")[0]
        assert "`model.trust_remote_code: true`" in cards[1] and "read that code" in cards[1]
