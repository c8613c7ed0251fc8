"""The Python API (dpo_recipe.api) and `dpo-recipe chat`, on one tiny training run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from conftest import REPO, invoke, tiny_overrides

from dpo_recipe import api
from dpo_recipe.errors import ModelError


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api")


@pytest.fixture(scope="module")
def counts(workdir: Path) -> dict[str, int]:
    return api.generate_dataset(workdir / "data", num_pairs=200, seed=3, tokenizer="none")


@pytest.fixture(scope="module")
def finished(tiny_model: Path, workdir: Path, counts: dict[str, int]) -> Path:
    out = workdir / "adapter"
    overrides = tiny_overrides(tiny_model, f"data.source={workdir / 'data'}", "data.max_train_pairs=16")
    metrics = api.train("tiny-ja", [*overrides, "data.max_eval_pairs=8"], output_dir=out)
    assert metrics is not None and metrics["train"]["pairs"] == 16
    return out


@pytest.fixture(scope="module")
def loaded(finished: Path) -> tuple:
    return api.load_adapter(finished)


def test_generate_dataset_writes_the_splits_it_reports(workdir: Path, counts: dict[str, int]) -> None:
    on_disk = datasets.load_from_disk(str(workdir / "data"))
    assert counts == {name: len(split) for name, split in on_disk.items()}
    assert sum(counts.values()) == 200 and counts["test"] > 0
    assert (workdir / "data" / "README.md").exists()


def test_evaluate_reproduces_the_training_runs_held_out_numbers(finished: Path, tmp_path: Path) -> None:
    report = api.evaluate(finished, max_pairs=8, out=tmp_path / "report.json")
    held_out = json.loads((finished / "metrics.json").read_text())["eval"]
    assert report is not None and report["overall"]["pairs"] == held_out["overall"]["pairs"] == 8
    assert report["overall"]["reward_accuracy"] == held_out["overall"]["reward_accuracy"]
    assert report["overall"]["reward_margin"] == pytest.approx(held_out["overall"]["reward_margin"], abs=1e-5)
    by_type = {name: (m["pairs"], m["reward_accuracy"]) for name, m in report["by_rejection_type"].items()}
    assert by_type == {name: (m["pairs"], m["reward_accuracy"]) for name, m in held_out["by_rejection_type"].items()}
    assert json.loads((tmp_path / "report.json").read_text())["overall"] == report["overall"]
    assert (tmp_path / "report_plots" / "accuracy_by_rejection_type.png").stat().st_size > 0


def test_chat_is_deterministic_and_matches_the_training_runs_generation(finished: Path, loaded: tuple) -> None:
    model, tokenizer = loaded
    generation = json.loads((finished / "metrics.json").read_text())["eval"]["generations"][0]
    first = api.chat(model, tokenizer, generation["prompt"], max_new_tokens=8)  # tiny-ja: eval.max_new_tokens 8
    assert first == api.chat(model, tokenizer, generation["prompt"], max_new_tokens=8)
    assert first == generation["tuned"] and first


def test_cli_chat_answers_one_prompt(runner, finished: Path, loaded: tuple) -> None:
    expected = api.chat(*loaded, "AIとは何ですか？", max_new_tokens=12)
    result = invoke(runner, "chat", "--adapter", finished, "--prompt", "AIとは何ですか？", "--max-new-tokens", 12)
    assert result.exit_code == 0, result.output
    assert result.stdout == expected + "\n"  # stderr shows loading progress


def test_cli_chat_reads_stdin_until_an_empty_line_or_exit(runner, finished: Path, loaded: tuple) -> None:
    from dpo_recipe.cli import cli

    questions = ["AIとは何ですか？", "Pythonの使いどころを教えてください。"]
    answers = [api.chat(*loaded, q, max_new_tokens=6) + "\n" for q in questions]
    args = ["chat", "--adapter", str(finished), "--max-new-tokens", "6"]
    result = runner.invoke(cli, args, input="\n".join(questions) + "\n\n機械学習とは何ですか？\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "".join(answers)
    stopped = runner.invoke(cli, args, input=f"{questions[0]}\nexit\n{questions[1]}\n")
    assert stopped.exit_code == 0 and stopped.stdout == answers[0]
    assert runner.invoke(cli, args, input=questions[1]).stdout == answers[1]  # end of input without a newline


def test_a_missing_adapter_fails_with_its_path(runner, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-run"
    result = invoke(runner, "chat", "--adapter", missing, "--prompt", "AIとは何ですか？")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"Error: Adapter '{missing}' is neither a directory nor a Hub id" in result.output
    with pytest.raises(ModelError, match="no adapter_config.json"):
        api.load_adapter(tmp_path)
    with pytest.raises(ModelError, match=r"'outputs/missing' is not a local directory .*could not be downloaded"):
        api.load_adapter("outputs/missing")  # one slash: read as a Hub id, and the Hub is offline here
    assert invoke(runner, "chat", "--adapter", missing, "--prompt", " ").exit_code == 2


def test_importing_the_package_does_not_import_torch() -> None:
    code = (
        "import sys, dpo_recipe, dpo_recipe.api\n"
        "assert dpo_recipe.train is dpo_recipe.api.train and 'chat' in dir(dpo_recipe)\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_chat_as_conversation_renders_a_string_as_one_user_turn(loaded: tuple) -> None:
    question = "AIとは何ですか？"
    as_turn = api.chat(*loaded, question, max_new_tokens=8, as_conversation=True)
    assert as_turn == api.chat(*loaded, [{"role": "user", "content": question}], max_new_tokens=8)
    penalised = api.chat(*loaded, question, max_new_tokens=8, repetition_penalty=1.5, no_repeat_ngram_size=2)
    from dpo_recipe.evaluation.answers import greedy_answer

    assert penalised == greedy_answer(*loaded, question, 8, repetition_penalty=1.5, no_repeat_ngram_size=2)


# the on-policy steps at their smallest: 8 prompts, 4 answers of 4 tokens, no gates (the tiny model's answers
# never end a sentence), a seed that gives the rules judge pairs
ON_POLICY = dict(n=4, max_new_tokens=4, max_prompts=8, temperature=1.0, seed=0)
NO_GATES = ["judge.gates=[]"]


def test_sample_and_judge_write_what_the_cli_writes(runner, finished: Path, tmp_path: Path) -> None:
    result = api.sample(tmp_path / "samples.jsonl", adapter=finished, **ON_POLICY)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert (result.out, result.prompts, result.answers, result.resumed_from) == (tmp_path / "samples.jsonl", 8, 32, 0)
    assert [len(row["completions"]) for row in rows] == [4] * 8
    assert rows[0]["sampled_from"]["adapter"] == str(finished.resolve()) and rows[0]["sampled_from"]["seed"] == 0
    options = [item for key, value in ON_POLICY.items() for item in (f"--{key.replace('_', '-')}", value)]
    cli = invoke(runner, "pairs", "sample", "--adapter", finished, *options, "--out", tmp_path / "cli.jsonl")
    assert cli.exit_code == 0, cli.output
    assert (tmp_path / "cli.jsonl").read_text() == (tmp_path / "samples.jsonl").read_text()

    summary = api.judge(tmp_path / "samples.jsonl", tmp_path / "pairs.jsonl", kind="rules", overrides=NO_GATES)
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert (summary.judge, summary.prompts, summary.answers) == ("rules", 8, 32) and summary.pairs == len(pairs) >= 1
    assert all(row["responses"][0]["score"] > row["responses"][1]["score"] for row in pairs)
    args = ["pairs", "judge", tmp_path / "samples.jsonl", "--judge", "rules", "--set", NO_GATES[0]]
    cli = invoke(runner, *args, "--out", tmp_path / "cli-pairs.jsonl")
    assert cli.exit_code == 0 and summary.line() in cli.output
    assert (tmp_path / "cli-pairs.jsonl").read_text() == (tmp_path / "pairs.jsonl").read_text()


def test_iterate_trains_a_round_from_a_finished_run(tiny_model: Path, finished: Path, workdir: Path, tmp_path: Path):
    settings = tiny_overrides(
        tiny_model,
        f"data.source={workdir / 'data'}",
        "data.max_train_pairs=16",
        "data.max_eval_pairs=8",
        *NO_GATES,
        *(f"iterate.{key}={value}" for key, value in [("max_prompts", 8), ("max_completion_length", 4)]),
        "iterate.temperature=1.0",
    )
    rows = api.iterate("tiny-ja", 1, judge="rules", start=finished, output_dir=tmp_path / "rounds", overrides=settings)
    judged = json.loads((tmp_path / "rounds" / "data" / "round-1" / "judge.json").read_text())
    metrics = json.loads((tmp_path / "rounds" / "round-1" / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1] and rows[0]["output_dir"] == str(finished)
    assert rows[1]["pairs"] == judged["pairs"] >= 1 and rows[1]["training_pairs"] == metrics["train"]["pairs"]
    assert metrics["eval"]["overall"]["pairs"] == 8  # round 0's held-out pairs
    assert "| round | judge | pairs kept |" in (tmp_path / "rounds" / "rounds.md").read_text()


def test_a_string_of_overrides_and_an_empty_out_are_named(runner, tmp_path: Path) -> None:
    """Two slips a notebook makes: one --set item as a string (read a character at a time, it said "--set 'i'"),
    and an out from an unset variable (a ValueError about PosixPath('.') from deep inside)."""
    from dpo_recipe.errors import DataError, RecipeError

    for call in (
        lambda: api.iterate("tiny-ja", overrides="iterate.replay=0.5", output_dir=tmp_path / "rounds"),
        lambda: api.train("tiny-ja", "iterate.replay=0.5", output_dir=tmp_path / "run"),
    ):
        with pytest.raises(RecipeError, match=r"not one string: pass \['iterate.replay=0.5'\]"):
            call()
    for call in (lambda: api.sample("", recipe="tiny-ja"), lambda: api.judge(tmp_path / "s.jsonl", "")):
        with pytest.raises(DataError, match=r"--out '\.' names no file \(empty, '\.' or a root\)"):
            call()
    result = invoke(runner, "pairs", "sample", "--recipe", "tiny-ja", "--out", "")
    assert result.exit_code == 1 and "Error: --out '.' names no file" in result.output
    assert list(tmp_path.iterdir()) == []


API_CALLS = {  # each documented name, called the cheapest way that reaches its own checks: (call, what it says)
    "generate_dataset": ("generate_dataset(OUT, num_pairs=5)", "num_pairs must be at least 10"),
    "train": ("train('no-such-recipe')", "no-such-recipe"),
    "evaluate": ("evaluate(OUT)", "adapter_config.json"),
    "push": ("push(OUT, 'alice/run')", "no adapter_model.safetensors"),
    "load_adapter": ("load_adapter(OUT)", "adapter_config.json"),
    "chat": ("chat(None, None, ' ')", "the prompt is empty"),
    "export": ("export(OUT, OUT / 'export')", "adapter_config.json"),
    "sample": ("sample(OUT / 'samples.jsonl')", "Give the policy to sample: --adapter RUN"),
    "judge": ("judge(OUT / 'samples.jsonl', OUT / 'pairs.jsonl')", "samples.jsonl: no such samples file"),
    "iterate": ("iterate('no-such-recipe')", "no-such-recipe"),
    "compare": ("compare([OUT / 'nothing'])", "nothing: no such folder"),
}


@pytest.mark.parametrize(
    "imported_first", ["", "import dpo_recipe.train, dpo_recipe.iterate, dpo_recipe.deploy.export, dpo_recipe.api"]
)
def test_every_documented_name_is_its_function(imported_first: str, tmp_path: Path) -> None:
    """In a fresh interpreter, and after the modules named like the functions were imported (a notebook cell
    run twice): ``from dpo_recipe import NAME`` is ``api.NAME``, a function that runs its own checks."""
    code = [
        "import inspect, json, pathlib",
        imported_first,
        f"from dpo_recipe import {', '.join(API_CALLS)}",
        "import dpo_recipe.api as api",
        f"OUT = pathlib.Path({str(tmp_path)!r})",
        "said = {}",
    ]
    for name, (call, _) in API_CALLS.items():
        code += [
            f"assert inspect.isfunction({name}) and {name} is api.{name}, {name}",
            "try:",
            f"    {call}",
            f"    said[{name!r}] = 'returned'",
            "except Exception as exc:",
            f"    said[{name!r}] = str(exc)",
        ]
    code.append("print(json.dumps(said))")
    done = subprocess.run([sys.executable, "-c", "\n".join(code)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (_, expected) in API_CALLS.items():
        assert expected in said[name], (name, said[name])
    assert sorted(API_CALLS) == sorted(api.__all__)
    import dpo_recipe

    assert sorted(dpo_recipe._API) == sorted(api.__all__)  # the lazy re-export list and the API's are one list twice


def test_api_train_defaults_to_the_quickstarts_recipe() -> None:
    import inspect

    from dpo_recipe.cli import quickstart

    option = next(param for param in quickstart.params if param.name == "recipe")
    assert inspect.signature(api.train).parameters["recipe"].default == option.default == "gemma3-270m-ja"
