"""pairs judge's rule: gates, best against worst, ties and small margins dropped and counted, lengths reported;
the ranked file training and the linter read back as exactly these pairs; a judge that ties everything is an
error with nothing written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import write_jsonl
from fake_openai import TEMPLATE, FakeOpenAI

from dpo_recipe.config.schema import DataSection, JudgeSection
from dpo_recipe.data.sources import read_source, standard_splits
from dpo_recipe.errors import DataError, JudgeError
from dpo_recipe.judges.rules import RulesJudge
from dpo_recipe.onpolicy.pairing import groups_of, make_pairs, run_judge
from dpo_recipe.onpolicy.sampling import partial_path

GOOD = "機械学習とは、データから規則を学ぶ方法です。"
SHORTER = "機械学習は学習の方法です。"
LOOP = "機械学習機械学習機械学習機械学習機械学習機械学習機械学習"
ENGLISH = "Machine learning learns from data, and"  # cut off
ORIGIN = {"adapter": None, "base": "builtin:tiny"}
ROWS = [
    {
        "prompt": "機械学習とは何ですか？",
        "topic": "機械学習",
        "completions": [LOOP, GOOD, SHORTER],
        "sampled_from": ORIGIN,
    },
    {"prompt": "機械学習とは何ですか？", "topic": "機械学習", "completions": [LOOP, ENGLISH], "sampled_from": ORIGIN},
    {"prompt": "AIとは？", "topic": "AI", "completions": [GOOD, GOOD], "sampled_from": ORIGIN},
]


def test_best_passing_answer_against_the_worst_and_the_drops_counted() -> None:
    settings = JudgeSection()
    judge = RulesJudge(settings)
    pairs, summary = make_pairs(ROWS, judge.judge_groups(groups_of(ROWS)), judge, settings)
    assert len(pairs) == 1 and pairs[0]["responses"][0]["text"] == GOOD and pairs[0]["responses"][1]["text"] == LOOP
    assert pairs[0]["responses"][1]["gates_failed"] == ["no_loop", "ends_sentence"]
    assert [a["text"] for a in pairs[0]["judged"]] == [LOOP, GOOD, SHORTER] and pairs[0]["topic"] == "機械学習"
    # row 2: no answer passes the gates (a loop, English); row 3: two equal answers tie
    assert (summary.pairs, summary.no_answer_passes, summary.ties, summary.under_margin) == (1, 1, 1, 0)
    assert (summary.chosen_chars, summary.rejected_chars) == (len(GOOD), len(LOOP))
    assert summary.line() == (
        "rules: 3 prompts, 7 answers -> 1 pairs; dropped: 1 ties, 0 under judge.min_margin, 1 with no answer passing "
        "the gates, 0 with fewer than 2 readable answers (0 answers empty or holding broken characters); mean length "
        "chosen 22 / rejected 28 chars"
    )
    strict = dataclasses.replace(settings, min_margin=5.0)  # GOOD beats LOOP by 2 points (repetition, sentence end)
    pairs, summary = make_pairs(ROWS, judge.judge_groups(groups_of(ROWS)), judge, strict)
    assert (summary.pairs, summary.under_margin) == (0, 1) and pairs == []


def test_the_pairs_file_reads_back_as_these_pairs(tmp_path: Path) -> None:
    samples = write_jsonl(tmp_path / "samples.jsonl", ROWS)
    out = tmp_path / "pairs.jsonl"
    summary = run_judge(samples, out, JudgeSection(gates=["japanese"]), "rules")
    assert summary.pairs == 2 and not partial_path(out).exists()
    splits, report = standard_splits(read_source(str(out)), DataSection())
    assert report.errors == [] and report.form == "ranked"
    train = splits["train"]
    assert [(r["chosen"], r["rejected"]) for r in train] == [(GOOD, LOOP), (LOOP, ENGLISH)]
    assert train[0]["chosen_score"] > train[0]["rejected_score"] and train[0]["judge"] == "rules"
    with pytest.raises(DataError, match="already exists"):
        run_judge(samples, out, JudgeSection(), "rules")


def test_a_judge_that_ties_everything_makes_no_pairs_and_no_file(tmp_path: Path) -> None:
    samples = write_jsonl(tmp_path / "samples.jsonl", ROWS[:2])
    settings = JudgeSection(gates=[], prompt_template=TEMPLATE, retries=0)
    out = tmp_path / "pairs.jsonl"
    with FakeOpenAI("always_0") as server, pytest.raises(JudgeError) as err:
        run_judge(samples, out, settings, f"openai:{server.url}")
    message = str(err.value)
    assert f"{samples}: no pairs; nothing to train. openai:{server.url}: 2 prompts, 5 answers -> 0 pairs" in message
    assert "Every judged prompt's answers tied" in message and not out.exists()
    with FakeOpenAI("longer") as server:  # the same endpoint with an opinion: the longer answer wins
        summary = run_judge(samples, out, settings, f"openai:{server.url}", overwrite=True)
    train = standard_splits(read_source(str(out)), DataSection())[0]["train"]
    assert [len(r["chosen"]) > len(r["rejected"]) for r in train] == [True, True] and summary.ties == 0


def test_samples_a_judge_cannot_rank(tmp_path: Path) -> None:
    one = write_jsonl(tmp_path / "one.jsonl", [{**ROWS[0], "completions": [GOOD]}])
    with pytest.raises(JudgeError, match="rows 1 hold fewer than 2 answers; a judge ranks"):
        run_judge(one, tmp_path / "p.jsonl", JudgeSection())
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [ROWS[0], {**ROWS[1], "sampled_from": {"adapter": "/other"}}])
    with pytest.raises(JudgeError, match="its answers come from 2 different policies"):
        run_judge(mixed, tmp_path / "p.jsonl", JudgeSection())
