"""dpo_recipe.evaluation.command: what `dpo-recipe eval` scores, and `--judge`: the held-out answers judged tuned
against base, every bad judge refused before any weights load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import invoke, tiny_overrides

from dpo_recipe.config.schema import DataSection, JudgeSection
from dpo_recipe.evaluation.command import held_out_data
from dpo_recipe.evaluation.judged import journal_path, outcome
from dpo_recipe.evaluation.report import judged_line
from dpo_recipe.judges.rules import RulesJudge, length_fit
from dpo_recipe.train import run


def test_data_replaces_the_recorded_source_or_mixture_whole() -> None:
    recorded = DataSection(sources=[{"source": "builtin:ja-preferences"}], revision="abc123", max_train_pairs=8)
    mine = held_out_data(recorded, "my.jsonl", "test", 4)
    assert (mine.source, mine.sources, mine.revision) == ("my.jsonl", [], None)
    assert (mine.test_split, mine.max_train_pairs, mine.max_eval_pairs) == ("test", None, 4)
    kept = held_out_data(recorded, None, "validation", None)
    assert (kept.sources, kept.revision, kept.test_split) == (
        [{"source": "builtin:ja-preferences"}],
        "abc123",
        "validation",
    )


QUICK = ["data.max_train_pairs=8", "data.max_eval_pairs=4", "eval.num_generations=2", "eval.max_new_tokens=6"]


@pytest.fixture(scope="module")
def quick_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("judged") / "run"
    run("tiny-ja", tiny_overrides(tiny_model, *QUICK), output_dir=str(out))
    return out


def test_eval_judge_rules_on_a_trained_run(quick_run: Path, runner, tmp_path: Path) -> None:
    """dpo-recipe eval --judge rules judges the answers its evaluation wrote, with the rules judge's verdicts."""
    out = tmp_path / "report.json"
    result = invoke(runner, "eval", "--adapter", quick_run, "--judge", "rules", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    judged, generations = report["judged"], report["generations"]
    assert judged["judge"] == "rules" and judged["questions"] == len(generations) == 2
    judge = RulesJudge(JudgeSection())
    for g in generations:
        base, tuned = judge.verdicts([g["question"]] * 2, [g["base"], g["tuned"]], {"topic": [g["topic"]] * 2})
        assert g["judged"]["base"]["score"] == base.score and g["judged"]["tuned"]["score"] == tuned.score
        assert g["judged"]["outcome"] == outcome(base, tuned)
    won = sum(g["judged"]["outcome"] == "win" for g in generations)
    tied = sum(g["judged"]["outcome"] == "tie" for g in generations)
    assert judged["win_rate"] == pytest.approx((won + tied / 2) / 2)
    assert judged_line(judged) in result.output and "judging" in result.output  # the report and the Time: line
    assert not journal_path(out).exists()
    weighed = tmp_path / "weighed.json"  # the judge keys from --judge-recipe and --set, not the adapter's recipe
    recipe = ["--judge-recipe", quick_run / "recipe.yaml", "--set", "judge.rules={length: 1.0}"]
    result = invoke(runner, "eval", "--adapter", quick_run, "--judge", "rules", *recipe, "--out", weighed)
    assert result.exit_code == 0, result.output
    again = json.loads(weighed.read_text())
    assert again["judged"]["judge_figures"] == {"weights": {"length": 1.0}}
    assert [g["judged"]["base"]["score"] for g in again["generations"]] == [
        length_fit(g["base_checks"]["length"], JudgeSection()) for g in generations
    ]


def test_eval_judge_refusals_come_before_any_weights_load(quick_run: Path, runner, tmp_path: Path, monkeypatch) -> None:
    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights loaded")

    monkeypatch.setattr("dpo_recipe.models.adapters.load_adapter_model", no_weights)
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    silent = tmp_path / "silent"
    shutil.copytree(quick_run, silent)
    recorded = (silent / "recipe.yaml").read_text().replace("num_generations: 2", "num_generations: 0")
    (silent / "recipe.yaml").write_text(recorded)
    out = tmp_path / "r.json"
    cases = [
        ((quick_run, "--judge", "gpt4"), "--judge: unknown judge 'gpt4'; known: rules, implicit"),
        ((quick_run, "--judge", "rule"), "did you mean rules?"),
        ((quick_run, "--judge-recipe", "tiny-ja"), "--judge-recipe sets the judge of --judge, and no --judge is given"),
        ((quick_run, "--set", "judge.min_chars=3"), "--set judge.min_chars=3 sets the judge of --judge"),
        ((quick_run, "--judge", "rules", "--set", "training.beta=1"), "without a recipe, --set takes judge.KEY=VALUE"),
        ((quick_run, "--judge", "rules", "--set", "judge.gates=[loud]"), "judge.gates: unknown gate 'loud'"),
        (
            (quick_run, "--judge", "openai:http://127.0.0.1:9/v1", "--set", "judge.api_key_env=NO_SUCH_KEY_VAR"),
            "judge.api_key_env names NO_SUCH_KEY_VAR, but that environment variable is not set",
        ),
        ((quick_run, "--judge", "openai:http://u:sk-1@h/v1"), "carries credentials or a query"),
        ((silent, "--judge", "rules"), "this adapter's recipe recorded eval.num_generations 0"),
    ]
    for args, message in cases:
        result = invoke(runner, "eval", "--adapter", *args, "--out", out)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert "sk-1" not in result.output and "Traceback" not in result.output
    assert not out.exists()
