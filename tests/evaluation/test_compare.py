"""dpo-recipe compare: finished runs side by side, exactly the recipe keys that differ, and a refusal naming each
folder or file that is not a finished run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import invoke, tiny_overrides

from dpo_recipe.errors import DpoRecipeError
from dpo_recipe.evaluation.compare import compare_runs, judge_against_first, markdown_table, write_csv
from dpo_recipe.train import run

QUICK = ["data.max_train_pairs=8", "data.max_eval_pairs=4", "eval.num_generations=1", "eval.max_new_tokens=4"]


@pytest.fixture(scope="module")
def two_runs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    run("tiny-ja", tiny_overrides(tiny_model, *QUICK), output_dir=str(root / "base"))
    run("tiny-ja", tiny_overrides(tiny_model, *QUICK, "training.beta=0.3", "lora.r=4"), output_dir=str(root / "beta"))
    return root / "base", root / "beta"


def test_two_runs_list_exactly_the_keys_that_differ_and_what_each_measured(two_runs, tmp_path: Path) -> None:
    comparison = compare_runs(list(two_runs))
    assert comparison.keys == ["lora.r", "training.beta"]  # not the output folders, which always differ
    for row, folder in zip(comparison.rows, two_runs, strict=True):
        metrics = json.loads((folder / "metrics.json").read_text())
        overall, tuned = metrics["eval"]["overall"], metrics["eval"]["answer_checks"]["tuned"]
        assert row["run"] == folder.name and row["held_out"] == 4 and row["steps"] == metrics["train"]["steps"]
        assert (row["reward_accuracy"], [row["ci95_low"], row["ci95_high"]]) == (
            overall["reward_accuracy"],
            overall["reward_accuracy_ci95"],
        )
        assert row["held_out_loss"] == overall["loss"] and row["answers_japanese_share"] == tuned["japanese_share"]
        assert (
            row["train_s"] == metrics["train"]["runtime_s"] and row["peak_rss_mb"] == metrics["memory"]["peak_rss_mb"]
        )
    assert [(r["lora.r"], r["training.beta"]) for r in comparison.rows] == [(8, 0.1), (4, 0.3)]
    table = markdown_table(comparison)
    header, _, first, second = table.splitlines()
    assert header.startswith("| run | lora.r | training.beta | held-out reward acc. (95% CI) | held-out loss |")
    assert first.startswith("| base | 8 | 0.1 | ") and second.startswith("| beta | 4 | 0.3 | ")
    low, high = comparison.rows[0]["ci95_low"], comparison.rows[0]["ci95_high"]
    assert f"({low:.3f}–{high:.3f}) on 4 |" in first
    written = write_csv(comparison, tmp_path / "runs.csv")
    rows = list(csv.DictReader(written.open(encoding="utf-8")))
    assert [(r["run"], r["lora.r"], r["training.beta"]) for r in rows] == [("base", "8", "0.1"), ("beta", "4", "0.3")]
    assert float(rows[1]["reward_accuracy"]) == comparison.rows[1]["reward_accuracy"] and rows[0]["peak_cuda_mb"] == ""


def test_the_same_recipe_twice_differs_in_nothing_and_one_run_is_a_table_too(two_runs, tmp_path: Path) -> None:
    copy = tmp_path / "again"
    shutil.copytree(two_runs[0], copy)
    comparison = compare_runs([two_runs[0], copy])
    assert comparison.keys == [] and "The runs' recipes are the same" in markdown_table(comparison)
    assert len(compare_runs([two_runs[1]]).rows) == 1


def test_every_input_that_is_not_a_finished_run_is_named_at_once(two_runs, tmp_path: Path) -> None:
    good = two_runs[0]
    empty, not_run, unfinished, garbled, listed, binary, chain = (
        tmp_path / n for n in ("empty", "notes", "unfinished", "garbled", "listed", "binary", "chain")
    )
    empty.mkdir()
    not_run.mkdir()
    (not_run / "metrics.json").write_text("{}")  # a metrics.json without its recipe.yaml
    for folder in (unfinished, garbled, listed, binary):
        shutil.copytree(good, folder)
    (unfinished / "metrics.json").unlink()
    (unfinished / "INCOMPLETE").write_text("resume it")
    (garbled / "metrics.json").write_text('{"train": {')  # cut mid-write
    (listed / "metrics.json").write_text("[1, 2]")
    (binary / "metrics.json").write_bytes(b"\xff\xfe\x00")
    shutil.copytree(good, chain / "stage-1")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    given = [good, empty, not_run, unfinished, garbled, listed, binary, chain, a_file, tmp_path / "missing", good]
    with pytest.raises(DpoRecipeError) as refused:
        compare_runs(given)
    message = str(refused.value)
    expected = [
        f"{empty}: not a finished run, it has no recipe.yaml",
        f"{not_run}: not a finished run, it has no recipe.yaml",
        f"{unfinished}: an unfinished run (resume it first), it has no metrics.json",
        f"{garbled / 'metrics.json'}: cannot be read (JSONDecodeError",
        f"{listed / 'metrics.json'}: not a run's metrics (no train and eval sections)",
        f"{binary / 'metrics.json'}: cannot be read (UnicodeDecodeError",
        f"{chain}: not a finished run, it has no recipe.yaml (it holds the stages stage-1 of a --then chain",
        f"{a_file}: not a folder",
        f"{tmp_path / 'missing'}: no such folder",
        f"{good}: given twice (the same folder as {good}); name each run once",
    ]
    for part in expected:
        assert part in message, part
    assert message.startswith("compare: ") and "\n" not in message


def test_a_run_named_twice_by_another_path_is_refused(two_runs, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(two_runs[0], target_is_directory=True)
    with pytest.raises(DpoRecipeError, match=f"{link}: given twice"):
        compare_runs([two_runs[0], link])
    with pytest.raises(DpoRecipeError, match="given twice"):
        compare_runs([two_runs[0], Path(f"{two_runs[0]}/")])


def test_a_broken_recipe_and_values_that_would_break_the_table(two_runs, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(two_runs[0], broken)
    (broken / "recipe.yaml").write_text("training: [1, 2\n")
    with pytest.raises(DpoRecipeError, match=rf"{broken / 'recipe.yaml'}: cannot be read as a recipe \(ParserError"):
        compare_runs([broken])
    (broken / "recipe.yaml").write_text("- a list\n")
    with pytest.raises(DpoRecipeError, match="not a recipe"):
        compare_runs([broken])
    odd = tmp_path / "odd"
    shutil.copytree(two_runs[0], odd)
    recipe = (odd / "recipe.yaml").read_text().replace("license: apache-2.0", 'license: "a|b\\nc"')
    (odd / "recipe.yaml").write_text(recipe)
    table = markdown_table(compare_runs([two_runs[0], odd]))
    assert "| a\\|b c |" in table and all(
        line.count(" | ") == table.splitlines()[0].count(" | ") for line in table.splitlines()[:4]
    )


def test_the_csv_never_lands_in_a_run_or_on_a_folder_or_through_a_link(two_runs, tmp_path: Path) -> None:
    comparison = compare_runs(list(two_runs))
    before = (two_runs[0] / "metrics.json").read_bytes()
    with pytest.raises(DpoRecipeError, match="inside the run .*whose files are the run's"):
        write_csv(comparison, two_runs[0] / "metrics.json")
    assert (two_runs[0] / "metrics.json").read_bytes() == before
    with pytest.raises(DpoRecipeError, match="a folder; give a file name"):
        write_csv(comparison, tmp_path)
    target, link = tmp_path / "precious.txt", tmp_path / "out.csv"
    target.write_text("mine")
    link.symlink_to(target)
    write_csv(comparison, link)
    assert target.read_text() == "mine" and not link.is_symlink() and link.read_text().startswith("run,path,")


def test_the_cli_prints_the_table_and_refuses_in_one_line(two_runs, runner, tmp_path: Path) -> None:
    result = invoke(runner, "compare", *two_runs, "--csv", tmp_path / "c.csv")
    assert result.exit_code == 0, result.output
    assert (
        result.output.startswith("| run | lora.r | training.beta |") and f"CSV: {tmp_path / 'c.csv'}" in result.output
    )
    refused = invoke(runner, "compare", two_runs[0], tmp_path / "nothing")
    assert refused.exit_code == 1 and f"{tmp_path / 'nothing'}: no such folder" in refused.output
    assert "Traceback" not in refused.output


def test_a_run_whose_files_are_links_is_refused(two_runs, tmp_path: Path) -> None:
    """A downloaded folder whose recipe.yaml points at a file of the user's would show that file in the table."""
    secret = tmp_path / "settings.yaml"
    secret.write_text("training:\n  api_key: s3cr3t\n")
    linked = tmp_path / "linked"
    shutil.copytree(two_runs[0], linked)
    (linked / "recipe.yaml").unlink()
    (linked / "recipe.yaml").symlink_to(secret)
    with pytest.raises(DpoRecipeError, match=f"{linked}: its recipe.yaml is a link, not the run's own file") as refused:
        compare_runs([two_runs[0], linked])
    assert "s3cr3t" not in str(refused.value)


def test_a_csv_that_cannot_be_written_is_one_line_and_leaves_nothing(two_runs, tmp_path: Path) -> None:
    parent = tmp_path / "a-file"
    parent.write_text("x")
    with pytest.raises(DpoRecipeError, match=rf"compare --csv {parent / 'c.csv'}: cannot be written \("):
        write_csv(compare_runs(list(two_runs)), parent / "c.csv")
    assert parent.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_the_judged_win_rate_column_shows_where_a_run_has_one(two_runs, tmp_path: Path) -> None:
    """A run judged with eval.judge gets its win rate, interval, questions and judge in a column of its own; a run
    without one a dash; a judged entry that is not numbers (a hand-edited file) a dash, never a broken row."""
    assert "judged win rate" not in markdown_table(compare_runs(list(two_runs)))  # no run judged: no column
    judged = tmp_path / "judged"
    shutil.copytree(two_runs[0], judged)
    metrics = json.loads((judged / "metrics.json").read_text())
    metrics["eval"]["judged"] = {
        "judge": "openai:http://127.0.0.1:8080/v1",
        "questions": 4,
        "wins": 2,
        "ties": 1,
        "losses": 1,
        "win_rate": 0.625,
        "win_rate_ci95": [0.2, 0.9],
    }
    (judged / "metrics.json").write_text(json.dumps(metrics))
    comparison = compare_runs([judged, two_runs[1]])
    assert (comparison.rows[0]["judged_win_rate"], comparison.rows[1]["judged_win_rate"]) == (0.625, None)
    header, _, first, second = markdown_table(comparison).splitlines()
    column = header.split(" | ").index("judged win rate vs base (95% CI)")
    assert column == header.split(" | ").index("held-out reward acc. (95% CI)") + 1  # beside reward accuracy
    assert first.split(" | ")[column] == "0.625 (0.200–0.900) on 4, openai:http://127.0.0.1:8080/v1"
    assert second.split(" | ")[column] == "–"
    written = list(csv.DictReader(write_csv(comparison, tmp_path / "runs.csv").open(encoding="utf-8")))
    assert (written[0]["judged_win_rate"], written[0]["judge"], written[1]["judged_win_rate"]) == (
        "0.625",
        "openai:http://127.0.0.1:8080/v1",
        "",
    )
    metrics["eval"]["judged"] = {"judge": ["x"], "win_rate": "NaN", "win_rate_ci95": "wide", "questions": True}
    (judged / "metrics.json").write_text(json.dumps(metrics))
    metrics["eval"]["judged"] = "half"
    other = tmp_path / "other"
    shutil.copytree(judged, other)
    (other / "metrics.json").write_text(json.dumps(metrics))
    rows = compare_runs([judged, other]).rows
    assert [(r["judge"], r["judged_win_rate"], r["judged_ci95_low"], r["judged_questions"]) for r in rows] == [
        (None, None, None, None)
    ] * 2


def test_a_judge_ranks_each_runs_answers_against_the_first_runs(two_runs, runner, tmp_path: Path) -> None:
    """compare --judge rules: the second run's answers judged against the first's, the same outcome as the rules
    judge's own scores of the two answers; the first run's cell is blank (itself)."""
    from dpo_recipe.config.schema import JudgeSection
    from dpo_recipe.judges.rules import RulesJudge

    judge = RulesJudge(JudgeSection())
    comparison = judge_against_first(compare_runs(list(two_runs)), judge)
    first, second = (json.loads((run / "metrics.json").read_text())["eval"]["generations"] for run in two_runs)
    assert len(first) == len(second) == 1 and first[0]["question"] == second[0]["question"]
    old, new = judge.verdicts(["q", "q"], [first[0]["tuned"], second[0]["tuned"]], {"topic": [first[0]["topic"]] * 2})
    expected = 1.0 if new.score - old.score > 1e-6 else 0.0 if old.score - new.score > 1e-6 else 0.5
    assert comparison.rows[0]["versus_first_win_rate"] is None and comparison.rows[0]["versus_first_judge"] == "rules"
    assert (comparison.rows[1]["versus_first_win_rate"], comparison.rows[1]["versus_first_questions"]) == (expected, 1)
    header, _, top, bottom = markdown_table(comparison).splitlines()
    column = header.split(" | ").index("win rate vs base (95% CI), rules")
    assert top.split(" | ")[column] == "–" and bottom.split(" | ")[column].startswith(f"{expected:.3f} (")
    result = invoke(runner, "compare", *two_runs, "--judge", "rules", "--set", "judge.max_chars=300")
    assert result.exit_code == 0 and "win rate vs base (95% CI), rules |" in result.output, result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--judge", "implicit"), "compare --judge implicit: the implicit reward is one adapter's own"),
        (("--set", "judge.max_chars=300"), "--set judge.max_chars=300 sets the judge of --judge, and no --judge"),
        (("--judge", "oracle"), "--judge: "),
        (("--judge", "rules", "--set", "judge.max_chars=-1"), "judge.max_chars"),
        (("--judge", "rules", "--set", "training.beta=2"), "--set takes judge.KEY=VALUE only"),
    ],
)
def test_a_judge_that_cannot_compare_is_refused_in_one_line(two_runs, runner, arguments, message) -> None:
    result = invoke(runner, "compare", *two_runs, *arguments)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output, result.output


def test_unfinished_runs_are_refused_before_the_judge_is_asked(two_runs, tmp_path: Path) -> None:
    """An endpoint judge is never asked about runs the comparison would refuse (a wrong folder costs no call)."""
    from fake_openai import TEMPLATE, FakeOpenAI

    from dpo_recipe.api import compare

    template = f"judge.prompt_template={json.dumps(TEMPLATE)}"
    with FakeOpenAI("longer") as server:
        with pytest.raises(DpoRecipeError, match="no such folder"):
            compare([two_runs[0], tmp_path / "missing"], judge=f"openai:{server.url}", overrides=[template])
        assert server.requests == []
        comparison = compare(list(two_runs), judge=f"openai:{server.url}", overrides=[template])
        assert 1 <= len(server.requests) <= 2  # one question, in both orders (once where both answers are the same)
    first, second = (json.loads((run / "metrics.json").read_text())["eval"]["generations"][0] for run in two_runs)
    longer = len(second["tuned"]) - len(first["tuned"])
    assert comparison.rows[1]["versus_first_win_rate"] == (1.0 if longer > 0 else 0.0 if longer < 0 else 0.5)


def test_hand_edited_answers_are_left_out_of_the_judged_column_never_a_crash(two_runs, tmp_path: Path) -> None:
    """A metrics.json whose generations are not answers (not a list, an entry without text) is judged on what
    answers it holds, and a run with none gets a dash."""
    from dpo_recipe.config.schema import JudgeSection
    from dpo_recipe.judges.rules import RulesJudge

    edited = []
    for name, generations in (("not-a-list", "many"), ("no-text", [{"question": 3, "tuned": None}, "answer"])):
        folder = tmp_path / name
        shutil.copytree(two_runs[1], folder)
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["eval"]["generations"] = generations
        (folder / "metrics.json").write_text(json.dumps(metrics))
        edited.append(folder)
    comparison = judge_against_first(compare_runs([two_runs[0], *edited, two_runs[1]]), RulesJudge(JudgeSection()))
    assert [row["versus_first_questions"] for row in comparison.rows] == [None, None, None, 1]
    assert [line.count(" – ") >= 1 for line in markdown_table(comparison).splitlines()[3:5]] == [True, True]


def test_an_endpoint_down_says_so_and_promises_no_kept_replies(two_runs) -> None:
    """compare keeps no journal of an endpoint's replies, so its error does not say the replies were kept."""
    from fake_openai import TEMPLATE, FakeOpenAI

    from dpo_recipe.api import compare
    from dpo_recipe.errors import JudgeError

    settings = [f"judge.prompt_template={json.dumps(TEMPLATE)}", "judge.retries=0"]
    with FakeOpenAI("longer", fail_first=100) as server, pytest.raises(JudgeError) as down:
        compare(list(two_runs), judge=f"openai:{server.url}", overrides=settings)
    assert "HTTP 503 from the endpoint" in str(down.value) and "replies so far are kept" not in str(down.value)
