"""The linter on a corpus of bad files: each finding is asserted with its check, split and rows."""

import json
from pathlib import Path

import pytest
from conftest import invoke, write_jsonl

from dpo_recipe.data.lint import lint
from dpo_recipe.data.sources import read_source

GOOD = {"prompt": "過学習とは何ですか？", "chosen": "訓練データに適合しすぎる現象です。", "rejected": "知りません。"}


def row(**changes):
    return {**GOOD, **changes}


def jsonl(tmp_path: Path, rows, name="data.jsonl") -> Path:
    return write_jsonl(tmp_path / name, rows)


def findings(path: Path):
    return {(f.check, f.split, tuple(f.rows), f.severity) for f in lint(read_source(str(path))).findings}


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([row(), row(chosen=None)], ("not-a-string", "train", (2,), "error")),
        ([row(), row(prompt=3)], ("not-a-string", "train", (2,), "error")),
        ([row(rejected="  ")], ("empty-field", "train", (1,), "error")),
        (
            [row(prompt="a"), row(prompt="b", rejected="訓練データに適合しすぎる現象です。")],
            ("chosen-equals-rejected", "train", (2,), "error"),
        ),
        ([row(chosen="ＡＢＣです。", rejected="ABCです。")], ("chosen-equals-rejected", "train", (1,), "error")),
        ([row(), row(), row(prompt="x")], ("duplicate-pair", "train", (2,), "warning")),
        (
            [row(), row(prompt="過学習とは何ですか？ ", chosen="訓練データに適合しすぎる現象です。")],
            ("near-duplicate-pair", "train", (2,), "warning"),
        ),
        ([row(), row(prompt="x", chosen="データ".encode().decode("cp1252"))], ("mojibake", "train", (2,), "error")),
        (
            [row(), row(prompt="x", chosen="日本語です".encode().decode("latin-1"))],
            ("mojibake", "train", (2,), "error"),
        ),
        ([row(), row(prompt="y", rejected="文字化け\ufffdです")], ("mojibake", "train", (2,), "error")),
        (
            [row(), row(prompt="What is overfitting?"), row(prompt="未学習とは？")],
            ("non-japanese", "train", (2,), "warning"),
        ),
    ],
)
def test_each_row_finding(tmp_path: Path, rows, expected) -> None:
    assert expected in findings(jsonl(tmp_path, rows))


def test_invisible_format_characters_do_not_make_a_pair_different(tmp_path: Path) -> None:
    """Unicode category Cf (zero-width space and joiner, BOM, direction marks) is dropped before comparing."""
    rows = [row(prompt=f"質問{i}", rejected=GOOD["chosen"] + "\u200b") for i in range(20)]
    rows.append(row(prompt="\ufeff質問0\u200e", rejected=GOOD["chosen"].replace("データ", "デ\u200dータ") + "\u200b"))
    found = findings(jsonl(tmp_path, rows))
    assert ("chosen-equals-rejected", "train", tuple(range(1, 22)), "error") in found
    assert ("near-duplicate-pair", "train", (21,), "warning") in found


def test_conversational_rows_are_text(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "過学習とは？"}]
    rows = [
        {
            "prompt": messages,
            "chosen": [{"role": "assistant", "content": "現象です。"}],
            "rejected": [{"role": "assistant", "content": "知りません。"}],
        }
    ]
    assert findings(jsonl(tmp_path, rows)) == set()


def test_missing_columns_name_what_was_found(tmp_path: Path) -> None:
    report = lint(read_source(str(jsonl(tmp_path, [{"question": "q", "chosen": "a", "rejected": "b"}]))))
    (finding,) = report.findings
    assert finding.check == "missing-column" and "prompt" in finding.message and "question" in finding.message
    assert "data.prompt_column" in finding.message


def test_length_bias_and_cross_split_leak() -> None:
    rows = [row(prompt=f"質問{i}", chosen="とても丁寧で長い回答です。" * 3, rejected="短い。") for i in range(30)]
    report = lint({"train": rows, "test": rows[:3]})
    checks = {(f.check, f.split, tuple(f.rows)) for f in report.findings}
    assert ("length-bias", "train", ()) in checks
    assert ("prompt-in-both-splits", "test", (1, 2, 3)) in checks
    assert not report.errors


def test_csv_and_parquet_sources(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("prompt,chosen,rejected\nq,a,a\n", encoding="utf-8")
    assert ("chosen-equals-rejected", "train", (1,), "error") in findings(tmp_path / "d.csv")
    pq.write_table(pa.Table.from_pylist([GOOD, GOOD]), tmp_path / "d.parquet")
    assert ("duplicate-pair", "train", (2,), "warning") in findings(tmp_path / "d.parquet")


def test_cli_exit_status_errors_vs_warnings(runner, tmp_path: Path) -> None:
    bad = jsonl(tmp_path, [row(), row(chosen="")], "bad.jsonl")
    result = invoke(runner, "data", "lint", bad)
    assert result.exit_code == 1
    assert "error | empty-field | train | 2 | chosen is empty" in result.output
    warn = jsonl(tmp_path, [row(), row()], "warn.jsonl")
    result = invoke(runner, "data", "lint", warn)
    assert result.exit_code == 0 and "warning | duplicate-pair | train | 2 |" in result.output
    renamed = jsonl(tmp_path, [{"q": "質問です", "good": "良い回答です。", "bad": "悪い。"}], "renamed.jsonl")
    result = invoke(
        runner,
        "data",
        "lint",
        renamed,
        "--prompt-column",
        "q",
        "--chosen-column",
        "good",
        "--rejected-column",
        "bad",
        "--json",
    )
    assert result.exit_code == 0 and json.loads(result.output)["findings"] == []


def test_cli_lints_a_generated_directory(runner, tmp_path: Path) -> None:
    invoke(runner, "data", "generate", "--out", tmp_path / "d", "--num-pairs", 200, "--tokenizer", "none")
    result = invoke(runner, "data", "lint", tmp_path / "d")
    assert result.exit_code == 0 and "No findings." in result.output


def test_an_answer_of_invisible_characters_is_empty_and_convert_writes_nothing(runner, tmp_path: Path) -> None:
    """U+200B survives str.strip(): without this check such a chosen passed and was written."""
    rows = [row(), row(prompt="x", chosen="\u200b"), row(prompt="y", rejected=" \u200d\ufeff\u3000")]
    source = jsonl(tmp_path, rows, "zw.jsonl")
    found = {(f.check, tuple(f.rows)): f.message for f in lint(read_source(str(source))).findings}
    assert found[("empty-after-normalise", (2,))].startswith("chosen is empty once invisible format characters")
    assert ("empty-after-normalise", (3,)) in found and len(found) == 2
    out = tmp_path / "out.jsonl"
    result = invoke(runner, "data", "convert", source, "--out", out)
    assert result.exit_code == 1 and "error | empty-after-normalise | train | 2 | chosen is empty once" in result.output
    assert not out.exists()
