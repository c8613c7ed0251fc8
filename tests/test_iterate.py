"""dpo-recipe iterate on the tiny model: round 0 and two on-policy rounds with each judge, one run folder a round,
every round scored on round 0's held-out pairs, the rounds table, --resume keeping finished rounds; and every
mistake refused before round 0 trains."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import invoke, tiny_overrides

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.errors import DpoRecipeError, JudgeError, RecipeError
from dpo_recipe.iterate import run_iterate

# the packaged smoke recipe: tiny-ja's round 0 (16 pairs, 8 held out), then 2 rounds of 8 prompts x 4 answers of 4
# tokens (a random tiny model writes broken characters in long ones), rules judge, no gates (its answers never end
# a sentence)
RECIPE = "tiny-ja-onpolicy"


@pytest.fixture(scope="module")
def rules_rounds(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dpo-recipe iterate --recipe tiny-ja-onpolicy``: the rounds and the judge from the recipe."""
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("rounds") / "rules"
    result = invoke(
        CliRunner(), "iterate", "--recipe", RECIPE, "--out", out, "--set", f"model.name_or_path={tiny_model}"
    )
    assert result.exit_code == 0, result.output
    return out


def test_two_rounds_with_the_rules_judge(rules_rounds: Path) -> None:
    out = rules_rounds
    metrics = [json.loads((out / f"round-{k}" / "metrics.json").read_text()) for k in range(3)]
    # every round is scored on round 0's 8 held-out pairs
    assert [m["eval"]["overall"]["pairs"] for m in metrics] == [8, 8, 8]
    for k in (1, 2):
        judged = json.loads((out / "data" / f"round-{k}" / "judge.json").read_text())
        assert judged["judge"] == "rules" and judged["prompts"] == 8 and judged["pairs"] >= 2
        replayed = max(1, round(judged["pairs"] * 0.3 / 0.7))
        assert metrics[k]["train"]["pairs"] == judged["pairs"] + replayed  # the judged pairs and the replayed share
        recipe = load_recipe(str(out / f"round-{k}" / "recipe.yaml"))
        assert recipe.model.init_adapter == str(out / f"round-{k - 1}")
        assert (recipe.lora.train_init_adapter, recipe.lora.init_adapter_reference) == (True, "base")
        sources = [entry["source"] for entry in recipe.data.sources]
        assert sources == [str(out / "data" / f"round-{k}" / "pairs.jsonl"), str(out / "data" / "original")]
    table = (out / "rounds.md").read_text()
    assert "judge `rules`; rounds k >= 1 train against the first model (the bare base, adapters off)" in table
    assert "on round 0's 8 held-out pairs; the answer checks on 2 held-out questions" in table
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert [row["round"] for row in rows] == ["0", "1", "2"] and rows[1]["judge"] == "rules"
    assert rows[0]["win_rate_vs_round_0"] == "" and 0 <= float(rows[2]["win_rate_vs_round_0"]) <= 1
    compared = list(csv.DictReader((out / "compare.csv").open()))  # iterate ends with dpo-recipe compare --judge rules
    assert [row["run"] for row in compared] == ["round-0", "round-1", "round-2"]
    assert [row["versus_first_win_rate"] for row in compared] == [row["win_rate_vs_round_0"] for row in rows]
    assert "model.init_adapter" in compared[0] and compared[2]["versus_first_judge"] == "rules"
    assert (out / "rounds.png").stat().st_size > 1000
    card = (out / "round-2" / "README.md").read_text()
    assert "## On-policy rounds" in card and "| round | judge | pairs kept |" in card
    assert "its reference model was the bare base" in card


def test_resume_keeps_finished_rounds_and_a_second_start_is_refused(rules_rounds: Path, tiny_model: Path) -> None:
    stamps = [(rules_rounds / f"round-{k}" / "metrics.json").stat().st_mtime_ns for k in range(3)]
    settings = tuple(tiny_overrides(tiny_model))
    rows = run_iterate(RECIPE, 2, judge="rules", output_dir=str(rules_rounds), overrides=settings, resume=True)
    assert [(rules_rounds / f"round-{k}" / "metrics.json").stat().st_mtime_ns for k in range(3)] == stamps
    assert [row["round"] for row in rows] == [0, 1, 2]
    with pytest.raises(RecipeError, match="already holds an iterate run. Continue it with --resume"):
        run_iterate(RECIPE, 2, output_dir=str(rules_rounds), overrides=settings)
    with pytest.raises(RecipeError, match="judge 'rules' then, 'implicit' now"):  # its pairs would mix two judges
        run_iterate(RECIPE, 2, judge="implicit", output_dir=str(rules_rounds), overrides=settings, resume=True)


@pytest.mark.parametrize("judge", ["implicit", "reward-model", "openai"])
def test_two_rounds_from_a_finished_run_with_each_other_judge(
    judge: str, rules_rounds: Path, tiny_model: Path, tmp_path: Path
) -> None:
    import contextlib

    from fake_openai import TEMPLATE, FakeOpenAI
    from judges.test_reward_model import tiny_reward_model

    extra: tuple[str, ...] = ()
    server = FakeOpenAI("longer") if judge == "openai" else contextlib.nullcontext()
    with server:
        spec = judge
        if judge == "reward-model":
            spec = f"reward-model:{tiny_reward_model(tiny_model, tmp_path / 'rm')}"
        if judge == "openai":
            spec, extra = f"openai:{server.url}", (f"judge.prompt_template={json.dumps(TEMPLATE)}",)
        settings = (*tiny_overrides(tiny_model, *extra), "iterate.reference=last_policy")
        out = tmp_path / "rounds"
        start = str(rules_rounds / "round-0")
        rows = run_iterate(RECIPE, 2, judge=spec, start=start, output_dir=str(out), overrides=settings)
    assert [row["round"] for row in rows] == [0, 1, 2] and rows[0]["output_dir"] == start
    assert not (out / "round-0").exists() and (out / "round-2" / "metrics.json").is_file()
    assert [row["judge"] for row in rows[1:]] == [spec, spec] and all(row["pairs"] >= 1 for row in rows[1:])
    recipe = load_recipe(str(out / "round-1" / "recipe.yaml"))
    assert recipe.model.init_adapter == start and recipe.lora.init_adapter_reference == "start"
    assert "each round's starting policy (the round before it)" in (out / "rounds.md").read_text()
    if judge == "implicit":
        figures = json.loads((out / "data" / "round-1" / "judge.json").read_text())["judge_figures"]
        assert figures["beta"] == 0.1 and figures["length_penalty_alpha"] >= 0
        assert figures["adapter"] == start  # round 1 scores with the adapter that sampled it


def test_mistakes_are_refused_before_round_0_trains(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    training = importlib.import_module("dpo_recipe.train")
    monkeypatch.setattr(training, "load_policy", lambda *a: pytest.fail("weights loaded"))
    settings = tuple(tiny_overrides(tiny_model))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my notes")
    local = "openai:http://127.0.0.1:9/v1"
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    earlier = tmp_path / "earlier"  # an earlier iterate's folder whose data is a link to the user's folder
    earlier.mkdir()
    (earlier / "iterate.json").write_text("{}")
    (earlier / "data").symlink_to(foreign)
    cases = [
        (dict(output_dir=str(foreign)), "holds files iterate did not write"),
        (dict(output_dir=str(tmp_path / "a-file")), r"iterate --out .*a-file is a file, not a directory"),
        (dict(output_dir=str(tmp_path / "link")), r"iterate --out .*link is a symbolic link"),
        (dict(output_dir=str(earlier), overwrite=True), r"earlier holds symbolic links \(data\); a run never writes"),
        (dict(judge="gpt4"), "--judge: unknown judge 'gpt4'"),
        (dict(judge=f"reward-model:{tmp_path}"), "no model config could be read"),
        (dict(start=str(tmp_path)), "not a finished training run"),
        (dict(overrides=("training.objective=kto", "training.per_device_batch_size=2")), "objective kto does not"),
        (dict(overrides=(f"model.init_adapter={tmp_path}",)), "this recipe merges model.init_adapter"),
        (dict(overrides=("iterate.replay=0",)), r"iterate.replay: must be > 0.0"),
        (dict(overrides=("iterate.replay=1",)), r"iterate.replay: must be < 1.0"),
        (dict(overrides=("iterate.replay=most",)), r"iterate.replay: expected a finite number, got 'most'"),
        (dict(overrides=("judge.rules={}",)), r"judge.rules: no weight above 0"),
        (dict(output_dir=" "), "--out is empty"),
        (dict(judge=local, overrides=("judge.api_key_env=NO_SUCH_KEY",)), "judge.api_key_env names NO_SUCH_KEY"),
        (
            dict(judge="openai:http://judge.example.com/v1", overrides=("judge.api_key_env=JUDGE_KEY",)),
            "is plain http:// to judge.example.com, which is not this machine",
        ),
    ]
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    monkeypatch.setenv("JUDGE_KEY", "sk-not-over-http")
    for given, message in cases:
        options: dict = {"output_dir": str(tmp_path / "out"), **given}
        options["overrides"] = (*settings, *given.get("overrides", ()))
        with pytest.raises(DpoRecipeError, match=message):
            run_iterate(RECIPE, 2, **options)
    assert not (tmp_path / "out" / "round-0").exists() and not (tmp_path / "nowhere").exists()
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"] and (tmp_path / "a-file").read_text() == "mine"


def test_a_judge_that_ties_everything_stops_the_rounds_with_nothing_trained(
    rules_rounds: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from fake_openai import TEMPLATE, FakeOpenAI

    settings = (*tiny_overrides(tiny_model), f"judge.prompt_template={json.dumps(TEMPLATE)}")
    out = tmp_path / "rounds"
    with FakeOpenAI("always_0") as server, pytest.raises(JudgeError) as err:
        run_iterate(
            RECIPE,
            1,
            judge=f"openai:{server.url}",
            start=str(rules_rounds / "round-0"),
            output_dir=str(out),
            overrides=settings,
        )
    assert "no pairs; nothing to train" in str(err.value) and "Every judged prompt's answers tied" in str(err.value)
    assert not (out / "round-1").exists() and not (out / "data" / "round-1" / "pairs.jsonl").exists()


def test_the_gemma_recipe_is_the_quickstarts_job_and_two_rules_rounds(tmp_path: Path) -> None:
    """gemma3-270m-ja-onpolicy: round 0 trains what `dpo-recipe quickstart` trains (and answers 36 held-out
    questions), then 2 rules rounds of at most as many pairs; checked as iterate checks it, with nothing loaded."""
    from dpo_recipe.cli import quickstart
    from dpo_recipe.iterate import checked_plan

    slice_ = next(param for param in quickstart.params if param.name == "train_pairs").default
    quick = load_recipe("gemma3-270m-ja", [f"data.max_train_pairs={slice_}"]).to_dict()
    onpolicy = load_recipe("gemma3-270m-ja-onpolicy").to_dict()
    differing = {
        f"{section}.{key}" for section, keys in onpolicy.items() for key in keys if keys[key] != quick[section][key]
    }
    # the judge and round keys are the defaults; 36 questions for the rounds table, answers as long as eval's
    assert differing == {
        "training.output_dir",
        "iterate.max_prompts",
        "iterate.max_completion_length",
        "eval.num_generations",
    }
    assert onpolicy["iterate"]["max_completion_length"] == onpolicy["eval"]["max_new_tokens"]
    plan = checked_plan(
        "gemma3-270m-ja-onpolicy", None, None, None, str(tmp_path / "out"), (), resume=False, overwrite=False
    )
    assert (plan.rounds, plan.judge, plan.recipe.iterate.reference) == (2, "rules", "first_model")
    prompts, replay = plan.recipe.iterate.max_prompts, plan.recipe.iterate.replay
    assert prompts + round(prompts * replay / (1 - replay)) <= slice_ == 192  # a round trains no more than round 0
    assert not (tmp_path / "out").exists()


def test_the_second_judge_benchmark_judges_each_round_against_round_0(rules_rounds: Path) -> None:
    """benchmarks/rounds_second_judge.py: one line a later round, its counts adding up to the questions both rounds
    answered, the win rate counting a tie half."""
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "rounds_second_judge.py"
    run = subprocess.run(
        [sys.executable, str(script), str(rules_rounds), "--judge", "rules"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if " over round-0, " in line]  # not a library's own notes
    assert [line.split(" over ")[0] for line in lines] == ["round-1", "round-2"]
    for line in lines:
        won, tied, lost, questions = (
            int(n) for n in re.findall(r"won (\d+), tied (\d+), lost (\d+) of (\d+)", line)[0]
        )
        assert won + tied + lost == questions == 2  # tiny-ja-onpolicy answers 2 held-out questions
        assert float(re.search(r"win rate ([\d.]+)", line).group(1)) == pytest.approx((won + tied / 2) / questions)
