"""dpo_recipe.evaluation.judged: the tuned model's held-out answers judged against the base's. A judge with known
preferences gives the known win rate; a pairwise judge is asked both orders, a tie where they disagree; a judge
that fails half-way keeps its replies, and the run it judged is saved whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_overrides
from fake_openai import TEMPLATE, FakeOpenAI, shown_answers

from dpo_recipe.config.schema import JudgeSection
from dpo_recipe.errors import JudgeError
from dpo_recipe.evaluation.command import run_eval
from dpo_recipe.evaluation.judged import TIE, journal_path, judge_answers, judge_report, judge_runs, outcome
from dpo_recipe.evaluation.report import judged_line
from dpo_recipe.judges import judge_for
from dpo_recipe.judges.base import ScoringJudge, Verdict
from dpo_recipe.train import run
from dpo_recipe.training.run_dir import RUN_ENTRIES

QUICK = ["data.max_train_pairs=8", "data.max_eval_pairs=4", "eval.num_generations=3", "eval.max_new_tokens=6"]


class Scores(ScoringJudge):
    """A scoring judge whose preferences the test sets: an answer's score is ``score(answer)``."""

    def __init__(self, score: Any) -> None:
        self.spec, self.score, self.summary = "scores", score, {"kind": "fake"}

    def verdicts(self, prompts: list[Any], completions: list[str], columns: dict[str, list[Any]]) -> list[Verdict]:
        return [Verdict(self.score(answer), f"{len(answer)} chars") for answer in completions]


def answers(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    """Generations as the held-out report writes them: a question, its topic, the base's and the tuned answer."""
    return [{"question": f"質問{i}", "topic": None, "base": b, "tuned": t} for i, (b, t) in enumerate(pairs)]


def test_one_runs_answers_against_anothers_on_the_questions_both_answered() -> None:
    """compare --judge and iterate's rounds table: the later run's tuned answers in the tuned place, the first
    run's in the base's, question by question; a question only one run answered is not judged."""
    first = [{"question": q, "topic": None, "base": "x", "tuned": t} for q, t in (("一", "短い"), ("二", "長い回答"))]
    later = [
        {"question": "二", "topic": None, "base": "y", "tuned": "短"},  # loss (shorter than the first run's)
        {"question": "一", "topic": None, "base": "y", "tuned": "もっと長い"},  # win
        {"question": "三", "topic": None, "base": "y", "tuned": "とても長い回答です"},  # not in the first run
    ]
    judged = judge_runs(Scores(len), first, later)
    assert (judged["wins"], judged["ties"], judged["losses"], judged["win_rate"]) == (1, 0, 1, 0.5)
    assert judged["win_rate_ci95"] == pytest.approx([0.09453, 0.90547], abs=1e-5)  # Wilson, 1 of 2
    assert judge_runs(Scores(len), first, [{"question": "三", "tuned": "a"}]) is None  # nothing shared
    assert judge_runs(Scores(len), first, first)["ties"] == 2  # a run against itself ties throughout


def test_a_judge_that_prefers_longer_answers_gives_the_known_win_rate() -> None:
    generations = answers(
        ("短い。", "もっと長い回答です。"),  # win
        ("ああ", "いいいい"),  # win
        ("a", "abc"),  # win
        ("とても長い回答です。", "短い。"),  # loss
        ("同じ長さ", "別の答え"),  # tie: the same score
    )
    judged = judge_answers(Scores(len), generations, [g["question"] for g in generations])
    assert (judged["wins"], judged["ties"], judged["losses"], judged["questions"]) == (3, 1, 1, 5)
    assert judged["win_rate"] == pytest.approx(0.7)  # (3 + 1/2) / 5
    assert judged["win_rate_ci95"] == pytest.approx([0.29879, 0.92742], abs=1e-5)  # Wilson, z 1.96, of 3.5 in 5
    assert (judged["judge"], judged["judge_figures"]) == ("scores", {"kind": "fake"})
    assert [g["judged"]["outcome"] for g in generations] == ["win", "win", "win", "loss", "tie"]
    assert generations[3]["judged"]["base"] == {"score": 10, "reason": "10 chars"}
    assert generations[3]["judged"]["tuned"] == {"score": 3, "reason": "3 chars"}
    line = judged_line(judged)
    assert line.startswith("Judged win rate of the tuned answers against the base's **70.0%** (95% CI 29.9%–92.7%)")
    assert "on 5 held-out questions, judge scores: won 3, tied 1, lost 1 (a tie counts half)." in line


def test_scores_within_the_tie_margin_tie() -> None:
    base = Verdict(0.5, "")
    assert TIE == 1e-6
    assert outcome(base, Verdict(0.5 + 5e-7, "")) == "tie" and outcome(base, Verdict(0.5 - 5e-7, "")) == "tie"
    assert outcome(base, Verdict(0.500001, "")) == "tie" and outcome(Verdict(0.500001, ""), base) == "tie"  # 1e-6
    assert outcome(base, Verdict(0.5 + 2e-6, "")) == "win" and outcome(base, Verdict(0.5 - 2e-6, "")) == "loss"


def test_the_rules_judge_on_constructed_answers() -> None:
    """Japanese that names its topic and ends a sentence beats a cut-off English loop, and loses the other way."""
    good, bad = "機械学習はデータから規則を学ぶ方法です。", "data data data data data"
    generations = answers((bad, good), (good, bad), (good, good))
    for g in generations:
        g["topic"] = "機械学習"
    judged = judge_answers(
        judge_for("rules", JudgeSection()), generations, [f"{g['topic']}とは何ですか？" for g in generations]
    )
    assert [g["judged"]["outcome"] for g in generations] == ["win", "loss", "tie"]
    assert (judged["judge"], judged["win_rate"]) == ("rules", 0.5)
    assert judged["win_rate_ci95"] == pytest.approx([0.12533, 0.87467], abs=1e-5)
    assert "topic named" in generations[0]["judged"]["tuned"]["reason"]
    assert "cut off" in generations[0]["judged"]["base"]["reason"]


def endpoint(url: str, journal: Path) -> Any:
    return judge_for(f"openai:{url}", JudgeSection(prompt_template=TEMPLATE, retries=0), journal=journal)


def test_a_pairwise_judge_is_asked_both_orders_and_ties_where_they_disagree(tmp_path: Path) -> None:
    generations = answers(
        ("短い。", "ずっと長い回答です。"),  # both orders pick the longer, tuned: a win
        ("ずっと長い回答です。", "短い。"),  # both orders pick the base's: a loss
        ("同じ長さA", "同じ長さB"),  # the fake says "0" on equal lengths: each order picks the first shown, a tie
    )
    with FakeOpenAI("longer") as server:
        judge = endpoint(server.url, tmp_path / "replies.jsonl")
        judged = judge_answers(judge, generations, [f"問{i}" for i in range(3)])
    shown = [shown_answers(r["body"]["messages"][-1]["content"]) for r in server.requests]
    assert shown == [(b, t) for g in generations for b, t in ((g["base"], g["tuned"]), (g["tuned"], g["base"]))]
    assert [r["body"]["messages"][-1]["content"].split("\n")[0] for r in server.requests[::2]] == [
        "Q:問0",
        "Q:問1",
        "Q:問2",
    ]
    assert [g["judged"]["outcome"] for g in generations] == ["win", "loss", "tie"]
    assert (judged["wins"], judged["ties"], judged["losses"], judged["win_rate"]) == (1, 1, 1, 0.5)
    assert judged["judge"] == f"openai:{server.url}" and judged["judge_figures"]["ties"] == 1
    assert "1 ties: orders disagreed" in generations[2]["judged"]["tuned"]["reason"]
    with FakeOpenAI("always_0") as first_shown:  # a judge that only ever picks the first answer it sees
        judged = judge_answers(endpoint(first_shown.url, tmp_path / "r2.jsonl"), generations, ["q"] * 3)
    assert (judged["wins"], judged["ties"], judged["losses"], judged["win_rate"]) == (0, 3, 0, 0.5)


def test_a_judge_that_fails_half_way_keeps_its_replies_and_goes_on_from_there(tmp_path: Path) -> None:
    generations = answers(("短い。", "長い回答です。"), ("長い回答です。", "短い。"), ("a", "abcd"))
    report = {"generations": generations}
    rows = [{"prompt": f"問{i}", "topic": f"t{i}"} for i in range(3)]
    journal = journal_path(tmp_path / "eval_report.json")
    assert journal.name == "eval_report.judge-replies.jsonl" and journal.name in RUN_ENTRIES  # --overwrite's to remove
    with FakeOpenAI("longer", down_after=3) as server:
        with pytest.raises(JudgeError) as failure:
            judge_report(report, rows, endpoint(server.url, journal))
        message = str(failure.value)
        assert "HTTP 503 from the endpoint" in message and "Nothing already judged is lost" in message
        assert "judged" not in report and len(journal.read_text().splitlines()) == 3
        server.down_after = None  # back up
        judged = judge_report(report, rows, endpoint(server.url, journal))
    assert server.answered == 6  # 3 before it went down, the 3 it had not been asked after
    assert (judged["wins"], judged["losses"], judged["ties"]) == (2, 1, 0) and report["judged"] is judged
    assert judged["judge_figures"]["from_journal"] == 3 and judged["judge_figures"]["asked"] == 3
    assert not journal.exists()  # every reply is in the report now


def test_an_implicit_judge_at_the_end_of_training_lands_in_metrics_report_and_card(
    tiny_model: Path, tmp_path: Path, capsys
) -> None:
    """eval.judge: implicit scores with the adapter just trained (in memory, not loaded again)."""
    out = tmp_path / "run"
    metrics = run("tiny-ja", tiny_overrides(tiny_model, *QUICK, "eval.judge=implicit"), output_dir=str(out))
    judged, generations = metrics["eval"]["judged"], metrics["eval"]["generations"]
    assert judged["judge"] == "implicit" and judged["questions"] == len(generations) == 3
    assert judged["judge_figures"]["adapter"] == str(out) and judged["judge_figures"]["beta"] == 0.1
    for g in generations:
        verdicts = g["judged"]
        assert verdicts["outcome"] == outcome(Verdict(**verdicts["base"]), Verdict(**verdicts["tuned"]))
    counts = [sum(g["judged"]["outcome"] == o for g in generations) for o in ("win", "tie", "loss")]
    assert [judged["wins"], judged["ties"], judged["losses"]] == counts
    assert judged["win_rate"] == pytest.approx((counts[0] + counts[1] / 2) / 3)
    saved = json.loads((out / "metrics.json").read_text())["eval"]["judged"]
    assert saved == judged == json.loads((out / "eval_report.json").read_text())["judged"]
    line = judged_line(judged)
    card = (out / "README.md").read_text()
    assert line in card and card.index("Held-out reward accuracy") < card.index(line)  # beside reward accuracy
    assert line in capsys.readouterr().out and not journal_path(out / "eval_report.json").exists()


def test_a_judge_that_fails_at_the_end_of_training_leaves_the_run_saved(tiny_model: Path, tmp_path: Path) -> None:
    """The endpoint goes down after one reply: the run is saved (adapter, metrics, card) without the judged
    figure, the reply is kept, and the command the error names judges the rest, asking only what it had not."""
    out = tmp_path / "run"
    with FakeOpenAI("longer", down_after=1) as server:
        settings = [
            *QUICK,
            f"eval.judge=openai:{server.url}",
            "training.learning_rate=5e-2",  # tuned answers that differ from the base's
            "judge.retries=0",
            f"judge.prompt_template={json.dumps(TEMPLATE)}",
        ]
        with pytest.raises(JudgeError) as failure:
            run("tiny-ja", tiny_overrides(tiny_model, *settings), output_dir=str(out))
        message = str(failure.value)
        assert f"The run itself is saved in {out} (adapter, metrics.json, card), without the judged win rate" in message
        command = f"--adapter {out} --max-pairs 4 --judge openai:{server.url} --judge-recipe {out / 'recipe.yaml'}"
        assert f"dpo-recipe eval {command} --out {out / 'eval_report.json'}" in message
        metrics = json.loads((out / "metrics.json").read_text())
        assert "judged" not in metrics["eval"] and metrics["eval"]["overall"]["pairs"] == 4
        assert (out / "adapter_model.safetensors").is_file() and "Judged win rate" not in (
            out / "README.md"
        ).read_text()
        journal = journal_path(out / "eval_report.json")
        assert len(journal.read_text().splitlines()) == 1
        server.down_after = None  # back up: the command the error gave
        before, kept = len(server.requests), server.requests[0]["body"]["messages"][-1]["content"]
        report = run_eval(
            str(out),
            max_pairs=4,
            judge=f"openai:{server.url}",
            judge_recipe=str(out / "recipe.yaml"),
            out=out / "eval_report.json",
        )
    assert report is not None and report["judged"]["questions"] == 3
    asked = [r["body"]["messages"][-1]["content"] for r in server.requests[before:]]
    assert kept not in asked and server.answered == 1 + len(asked) == 1 + report["judged"]["judge_figures"]["asked"]
    assert json.loads((out / "eval_report.json").read_text())["judged"] == report["judged"] and not journal.exists()


def test_a_file_where_the_journal_goes_is_the_judges_only_when_it_wrote_it(tmp_path: Path) -> None:
    """A judge that keeps no journal (rules) leaves a file of that name alone; an endpoint never writes through a
    link there, and the file the link names is untouched."""
    generations = answers(("短い。", "長い回答です。"))
    journal = journal_path(tmp_path / "eval_report.json")
    journal.write_text("the user's own\n")
    judge_report({"generations": generations}, [{"prompt": "問"}], judge_for("rules", JudgeSection()))
    assert journal.read_text() == "the user's own\n"
    journal.unlink()
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep\n")
    journal.symlink_to(target)
    with FakeOpenAI("longer") as server, pytest.raises(JudgeError, match="is a symbolic link; the judge's journal is"):
        judge_report({"generations": generations}, [{"prompt": "問"}], endpoint(server.url, journal))
    assert target.read_text() == "keep\n" and journal.is_symlink()
