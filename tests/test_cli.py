"""dpo_recipe.cli: `train` and `eval` take their options from the modules' argparse parsers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import invoke, tiny_overrides

from dpo_recipe.training.launch import accelerate_command


class Exec(Exception):
    """Raised instead of replacing the test process."""


@pytest.fixture
def execv(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Commands the CLI would exec (os.execv is replaced by a recorder that stops the command)."""
    calls: list[list[str]] = []

    def record(path: str, argv: list[str]) -> None:
        assert path == sys.executable
        calls.append(list(argv))
        raise Exec

    monkeypatch.setattr("dpo_recipe.cli.os.execv", record)
    return calls


def test_cli_train_dry_run_and_recipe_errors(runner, tiny_model: Path, tmp_path: Path, capsys) -> None:
    args = ["train", "--recipe", "tiny-ja", "--dry-run", "--output-dir", tmp_path / "o"]
    for item in tiny_overrides(tiny_model):
        args += ["--set", item]
    result = invoke(runner, *args)
    assert result.exit_code == 0, result.output
    assert "pairs kept: 64" in capsys.readouterr().out + result.output
    bad = invoke(runner, "train", "--recipe", "tiny-ja", "--set", "training.learnig_rate=1")
    assert bad.exit_code == 1 and "did you mean learning_rate" in bad.output


def test_train_help_is_the_train_parsers_plus_the_launchers(runner) -> None:
    from dpo_recipe.train import build_parser

    result = invoke(runner, "train", "--help")
    assert result.exit_code == 0
    assert result.output.startswith("usage: dpo-recipe train")
    for option in ("--recipe", "--from-hub", "--set", "--output-dir", "--resume", "--overwrite", "--dry-run"):
        assert option in result.output and option in build_parser().format_help()
    assert "--accelerate-config" in result.output and "--num-processes" in result.output
    assert "Override a recipe key; repeatable. Validated like the file." in " ".join(result.output.split())
    assert invoke(runner, "train", "-h").output == result.output


def test_eval_help_is_the_evaluation_parsers(runner) -> None:
    from dpo_recipe.evaluation.command import build_parser

    result = invoke(runner, "eval", "--help")
    assert result.exit_code == 0 and result.output.startswith("usage: dpo-recipe eval")
    for action in build_parser()._actions:
        assert all(flag in result.output for flag in action.option_strings), action.option_strings
    assert "--num-processes" in result.output


def test_resume_with_overwrite_is_a_usage_error_before_any_network(runner, monkeypatch, execv) -> None:
    def network(*args: object) -> None:
        raise AssertionError("the Hub was asked before the flags were checked")

    monkeypatch.setattr("dpo_recipe.training.run_context.recipe_from_hub", network)
    result = invoke(runner, "train", "--from-hub", "alice/run", "--resume", "--overwrite")
    assert result.exit_code == 2 and not execv
    assert "dpo-recipe train: error: --resume and --overwrite contradict each other" in result.output


def test_train_launches_the_module_with_its_own_arguments(runner, execv) -> None:
    from dpo_recipe.cli import cli

    result = runner.invoke(
        cli,
        ["train", "--recipe", "tiny-ja", "--num-processes", "2", "--set", "training.seed=1", "--resume"],
    )
    assert isinstance(result.exception, Exec), result.output
    train_args = ["--recipe", "tiny-ja", "--set", "training.seed=1", "--resume"]
    assert execv == [accelerate_command("dpo_recipe.train", train_args, None, 2)]
    assert "+ -m accelerate.commands.launch --multi_gpu --num_processes 2" in result.output


def test_eval_over_processes_launches_the_evaluation_module(runner, execv, tmp_path: Path) -> None:
    from dpo_recipe.cli import cli

    result = runner.invoke(cli, ["eval", "--adapter", "a", "--num-processes", "2", "--out", str(tmp_path / "r.json")])
    assert isinstance(result.exception, Exec), result.output
    eval_args = ["--adapter", "a", "--out", str(tmp_path / "r.json")]
    assert execv == [accelerate_command("dpo_recipe.evaluation", eval_args, None, 2)]


def test_quickstart_keeps_a_finished_adapter_folder_unless_told(runner, tiny_model: Path, tmp_path: Path) -> None:
    """OUT/adapter follows training's rules: a finished run there stays without --overwrite, files and all."""
    from dpo_recipe.training.run_dir import RUN_MARKER

    adapter = tmp_path / "qs" / "adapter"
    adapter.mkdir(parents=True)
    for name, text in {
        RUN_MARKER: "{}",
        "metrics.json": "{}",
        "adapter_model.safetensors": "weights",
        "notes.txt": "mine",
    }.items():
        (adapter / name).write_text(text)
    settings = ["--set", f"model.name_or_path={tiny_model}", "--set", "eval.num_generations=0"]
    result = invoke(
        runner, "quickstart", "--recipe", "tiny-ja", "--train-pairs", 8, "--out", tmp_path / "qs", *settings
    )
    assert result.exit_code == 1 and "holds a finished run. Pass --overwrite" in result.output, result.output
    assert not (tmp_path / "qs" / "data").exists()  # refused before the dataset was generated
    assert sorted(p.name for p in adapter.iterdir()) == sorted(
        [RUN_MARKER, "metrics.json", "adapter_model.safetensors", "notes.txt"]
    )
    assert (adapter / "notes.txt").read_text() == "mine" and (
        adapter / "adapter_model.safetensors"
    ).read_text() == "weights"


def test_quickstart_with_a_kto_recipe_ends_with_kto_numbers(runner, tiny_model: Path, tmp_path: Path) -> None:
    """The quickstart's last line reads the report it got: a KTO run has rows and KL-adjusted accuracy, no pairs
    (it once failed there with a KeyError after training the Gemma KTO recipe for 21 minutes)."""
    import json

    settings = [item for s in tiny_overrides(tiny_model, "eval.num_generations=0") for item in ("--set", s)]
    out = tmp_path / "quick"
    result = invoke(runner, "quickstart", "--recipe", "tiny-ja-kto", "--train-pairs", "8", "--out", str(out), *settings)
    assert result.exit_code == 0, result.output
    overall = json.loads((out / "adapter" / "eval_report.json").read_text())["overall"]
    expected = f"held-out KL-adjusted reward accuracy: {overall['reward_accuracy']:.3f} on {overall['rows']} rows"
    assert expected in result.output


# ---------------------------------------------------------------------------- on-policy pairs


@pytest.fixture(scope="module")
def tiny_samples(tiny_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny adapter's answers, 4 to each of 8 training prompts, written by `pairs sample`."""
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("samples") / "samples.jsonl"
    # a random tiny model writes broken characters often: short answers, so that enough of them are readable
    args = ["pairs", "sample", "--adapter", tiny_adapter, "--n", "6", "--out", out]
    result = invoke(CliRunner(), *args, "--max-new-tokens", "4", "--seed", "3", "--temperature", "1")
    assert result.exit_code == 0, result.output
    assert f"Wrote 96 answers to 16 prompts to {out}" in result.output
    assert "prompts: 16 unique training prompts of builtin:ja-preferences" in result.output
    return out


@pytest.mark.parametrize("judge", ["rules", "implicit", "reward-model", "openai"])
def test_pairs_sample_judge_and_train_with_each_judge(
    judge: str, runner, tiny_samples: Path, tiny_adapter: Path, tiny_model: Path, tmp_path: Path
) -> None:
    import contextlib
    import json

    from fake_openai import TEMPLATE, FakeOpenAI

    from dpo_recipe.train import run

    server = FakeOpenAI("longer") if judge == "openai" else contextlib.nullcontext()
    settings = ["--set", "judge.gates=[]"]  # the tiny model's answers never end a sentence
    with server:
        spec = {"openai": f"openai:{getattr(server, 'url', '')}", "reward-model": "reward-model:RM"}.get(judge, judge)
        if judge == "reward-model":
            from judges.test_reward_model import tiny_reward_model

            spec = f"reward-model:{tiny_reward_model(tiny_model, tmp_path / 'rm')}"
        if judge == "openai":
            settings += ["--set", f"judge.prompt_template={json.dumps(TEMPLATE)}"]  # YAML reads JSON's escapes
        pairs = tmp_path / "pairs.jsonl"
        result = invoke(runner, "pairs", "judge", tiny_samples, "--judge", spec, "--out", pairs, *settings)
    assert result.exit_code == 0, result.output
    assert f"{spec}: 16 prompts, 96 answers -> " in result.output and f"pairs (ranked form) to {pairs}" in result.output
    linted = invoke(runner, "data", "lint", pairs)
    assert linted.exit_code == 0 and "form: ranked" in linted.output, linted.output
    if judge != "rules":  # tests/test_iterate.py trains on every judge's pairs, round after round
        return
    metrics = run(
        "tiny-ja",
        tiny_overrides(
            tiny_model,
            f"model.init_adapter={tiny_adapter}",
            f"data.source={pairs}",
            "data.test_size=0.25",
            "eval.num_generations=0",
        ),
        output_dir=str(tmp_path / "trained"),
    )
    assert metrics["train"]["pairs"] >= 3 and metrics["data"]["sources"][0]["form"] == "ranked"


def test_pairs_commands_refuse_bad_input(runner, tiny_adapter: Path, tiny_samples: Path, tmp_path: Path) -> None:
    one = invoke(runner, "pairs", "sample", "--adapter", tiny_adapter, "--n", "1", "--out", tmp_path / "s.jsonl")
    assert one.exit_code == 1 and "--n 1: a judge ranks a prompt's answers against each other" in one.output
    neither = invoke(runner, "pairs", "sample", "--out", tmp_path / "s.jsonl")
    assert neither.exit_code == 1 and "Give the policy to sample: --adapter RUN" in neither.output
    base = tmp_path / "base.jsonl"
    sampled = invoke(runner, "pairs", "sample", "--recipe", "tiny-ja", "--n", "2", "--max-prompts", "2", "--out", base)
    assert sampled.exit_code == 0, sampled.output
    implicit = invoke(runner, "pairs", "judge", base, "--judge", "implicit", "--out", tmp_path / "p.jsonl")
    assert implicit.exit_code == 1 and "sampled from a base model" in implicit.output
    unknown = invoke(runner, "pairs", "judge", tiny_samples, "--judge", "gpt4", "--out", tmp_path / "p.jsonl")
    assert unknown.exit_code == 1 and "--judge: unknown judge 'gpt4'" in unknown.output
    keys = invoke(runner, "pairs", "judge", tiny_samples, "--out", tmp_path / "p.jsonl", "--set", "training.beta=1")
    assert keys.exit_code == 1 and "without a recipe, --set takes judge.KEY=VALUE only" in keys.output
