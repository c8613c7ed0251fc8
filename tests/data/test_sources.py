"""Reading preference data, mapping its columns, and holding out a test split."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FORM_FIXTURES, PUBLISHED_FORMS, invoke, write_jsonl

from dpo_recipe.config.schema import DataSection
from dpo_recipe.data.sources import hold_out, load_preference_splits, pin_hub_revision, read_file, read_source
from dpo_recipe.errors import DataError


def numbered(count: int) -> list[dict]:
    return [{"prompt": f"質問{i}", "chosen": "はい、そうです。", "rejected": "いいえ。", "n": i} for i in range(count)]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", "the file is empty"),
        ("data.txt", b"prompt,chosen,rejected\n", "unsupported file type '.txt'"),
        ("sjis.jsonl", '{"prompt": "日本語"}\n'.encode("shift_jis"), "line 1: not valid UTF-8"),
        ("bad.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": \n', "line 2: not valid JSON"),
        ("list.jsonl", b"[1, 2]\n", "line 1: expected a JSON object"),
        ("bad.parquet", b"not parquet", "not a readable Parquet file"),
    ],
)
def test_unreadable_files_name_file_and_line(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_source(str(path))
    assert str(path) in str(err.value) and message in str(err.value)


def test_hold_out_sizes_and_determinism() -> None:
    rows = numbered(50)
    train, test = hold_out(rows, 0.1, seed=3)
    assert (len(train), len(test)) == (45, 5)
    assert sorted(r["n"] for r in train + test) == list(range(50))  # a partition: nothing lost, nothing twice
    assert [r["n"] for r in train] == sorted(r["n"] for r in train)  # both sides keep the data's order
    assert hold_out(rows, 0.1, seed=3) == (train, test)
    assert hold_out(rows, 0.1, seed=4)[1] != test
    assert [len(side) for side in hold_out(numbered(5), 0.01, seed=0)] == [4, 1]  # at least one held out


def test_hold_out_keeps_each_topic_on_one_side() -> None:
    rows = [{**row, "topic": f"t{row['n'] % 10}"} for row in numbered(100)]
    train, test = hold_out(rows, 0.2, seed=0)
    held = {r["topic"] for r in test}
    assert len(held) == 2 and len(test) == 20  # round(10 topics * 0.2), ten rows each
    assert not held & {r["topic"] for r in train}


def test_recipe_split_without_a_test_split_is_held_out_and_sliced(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "pairs.jsonl", numbered(40))
    data = DataSection(source=str(source), test_size=0.25, seed=1, max_train_pairs=7, max_eval_pairs=3)
    train, test, report = load_preference_splits(data)
    assert (len(train), len(test)) == (7, 3)
    expected_train, expected_test = hold_out(numbered(40), 0.25, seed=1)
    for kept, rows in ((train, expected_train), (test, expected_test)):  # a seeded sample of each side, in order
        assert kept == [row for row in rows if row in kept] and kept != rows[: len(kept)]
    assert load_preference_splits(data)[:2] == (train, test)  # the same seed, the same rows
    assert not report.errors
    assert "data.max_train_pairs 7: 7 of 30 training rows, chosen after a shuffle seeded by data.seed 1" in report.notes


def test_an_unreadable_hub_dataset_names_the_http_status(hub) -> None:
    with pytest.raises(DataError) as err:
        pin_hub_revision(DataSection(source="alice/no-such-data"))
    assert str(err.value).startswith("data.source 'alice/no-such-data' (revision main) cannot be read from the Hub")
    assert "(HTTP 404)" in str(err.value)


def test_as_conversation_wraps_plain_pairs_in_turns(tmp_path: Path) -> None:
    rows = [{"prompt": "AIとは何ですか？", "chosen": "AIとは人工知能です。", "rejected": "知らない。"}] * 12
    train, test, _ = load_preference_splits(
        DataSection(source=str(write_jsonl(tmp_path / "p.jsonl", rows)), test_size=0.25, as_conversation=True)
    )
    assert len(train) == 9 and len(test) == 3
    assert train[0] == {
        "prompt": [{"role": "user", "content": "AIとは何ですか？"}],
        "chosen": [{"role": "assistant", "content": "AIとは人工知能です。"}],
        "rejected": [{"role": "assistant", "content": "知らない。"}],
    }


def test_convert_writes_the_standard_form_and_refuses_to_overwrite(runner, tmp_path: Path) -> None:
    out = tmp_path / "hh.jsonl"
    result = invoke(runner, "data", "convert", FORM_FIXTURES / "hh.jsonl", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith(PUBLISHED_FORMS["hh"][1])
    assert result.output.splitlines()[1] == f"Wrote 6 pairs of split 'train' in the standard form to {out} (jsonl)"
    assert out.read_bytes() == (FORM_FIXTURES / "hh.standard.jsonl").read_bytes()
    again = invoke(runner, "data", "convert", FORM_FIXTURES / "implicit_text.jsonl", "--out", out)
    assert again.exit_code == 1 and f"{out} already exists. Choose another --out or pass --overwrite." in again.output
    assert out.read_bytes() == (FORM_FIXTURES / "hh.standard.jsonl").read_bytes()
    assert (
        invoke(runner, "data", "convert", FORM_FIXTURES / "implicit_text.jsonl", "--out", out, "--overwrite").exit_code
        == 0
    )
    assert out.read_bytes() == (FORM_FIXTURES / "implicit_text.standard.jsonl").read_bytes()
    wrong = invoke(runner, "data", "convert", FORM_FIXTURES / "hh.jsonl", "--out", out, "--format", "parquet")
    assert wrong.exit_code == 2 and "parquet does not fit --out hh.jsonl; name the file *.parquet" in wrong.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hh.jsonl"]  # no temporary file left behind


def test_convert_to_parquet_with_recipe_keys_and_a_chosen_split(runner, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    keys = [arg for setting in PUBLISHED_FORMS["ranked_rows"][0] for arg in ("--set", setting)]
    out = tmp_path / "ranked.parquet"
    result = invoke(runner, "data", "convert", FORM_FIXTURES / "ranked_rows.jsonl", "--out", out, *keys)
    assert result.exit_code == 0, result.output
    assert PUBLISHED_FORMS["ranked_rows"][1] in result.output
    assert pq.read_table(out).to_pylist() == read_file(FORM_FIXTURES / "ranked_rows.standard.jsonl")
    data = tmp_path / "data"
    invoke(runner, "data", "generate", "--out", data, "--num-pairs", 40, "--tokenizer", "none")
    result = invoke(runner, "data", "convert", data, "--out", tmp_path / "train.jsonl")
    assert "Wrote 36 pairs of split 'train' in the standard form" in result.output
    assert "; other splits: test (--split NAME)" in result.output
    result = invoke(runner, "data", "convert", data, "--out", tmp_path / "test.jsonl", "--split", "test")
    assert read_file(tmp_path / "test.jsonl") == read_source(str(data))["test"]
    result = invoke(runner, "data", "convert", data, "--out", tmp_path / "x.jsonl", "--split", "dev")
    assert result.exit_code == 2 and "no split 'dev' in" in result.output and not (tmp_path / "x.jsonl").exists()


# ---------------------------------------------------------------------------- mixtures (data.sources)


def mixture(*entries: dict, **keys) -> DataSection:
    return DataSection(sources=list(entries), **keys)


SHAREGPT = {"source": str(FORM_FIXTURES / "sharegpt.jsonl")}
ORCA = {"source": str(FORM_FIXTURES / "orca_system.jsonl"), "prompt_column": "question"}


def standard_rows(name: str, source: dict) -> list[dict]:
    return [{**row, "data_source": source["source"]} for row in read_file(FORM_FIXTURES / f"{name}.standard.jsonl")]


def test_a_mixture_reads_each_source_in_its_own_form_and_keeps_each_rows_source() -> None:
    from dpo_recipe.data.sources import converted_source

    weighted = converted_source(mixture({**SHAREGPT, "weight": 2}, {**ORCA, "weight": 1}, seed=3))
    assert not weighted.findings and list(weighted.splits) == ["train"]
    rows = weighted.splits["train"]
    by_source = {s["source"]: [r for r in rows if r["data_source"] == s["source"]] for s in (SHAREGPT, ORCA)}
    expected = {
        SHAREGPT["source"]: standard_rows("sharegpt", SHAREGPT),
        ORCA["source"]: standard_rows("orca_system", ORCA),
    }
    for source, taken in by_source.items():  # each source's rows in its own order, converted as alone, id or None
        assert [{k: v for k, v in r.items() if v is not None} for r in taken] == expected[source][: len(taken)]
    assert len(by_source[SHAREGPT["source"]]) == 6  # interleaving stops when the first source runs out
    assert converted_source(mixture({**SHAREGPT, "weight": 2}, {**ORCA, "weight": 1}, seed=3)).splits == weighted.splits
    assert weighted.notes[-1] == (
        f"mixture: {len(rows)} training rows ({SHAREGPT['source']} 6, {ORCA['source']} {len(rows) - 6}), interleaved "
        "with probabilities 0.67, 0.33 (seed 3) until a source ran out; each row's source is in column data_source"
    )
    assert f"data.sources[1] {ORCA['source']}: columns: prompt <- question" in weighted.notes

    halves = converted_source(mixture({**SHAREGPT, "fraction": 0.5}, ORCA, seed=0)).splits["train"]
    assert (
        len(halves) == 3 + 6 and [r["data_source"] for r in halves] == [SHAREGPT["source"]] * 3 + [ORCA["source"]] * 6
    )
    first = [{k: v for k, v in r.items() if v is not None} for r in halves[:3]]
    assert all(row in standard_rows("sharegpt", SHAREGPT) for row in first)


def test_a_mixture_refuses_text_with_messages_and_names_bad_sources(tmp_path: Path) -> None:
    from dpo_recipe.config.loader import load_recipe
    from dpo_recipe.data.sources import converted_source
    from dpo_recipe.errors import RecipeError

    text = {"source": str(FORM_FIXTURES / "implicit_text.jsonl")}
    with pytest.raises(DataError, match=r"implicit_text.jsonl hold text pairs and the others chat messages; .* Set "):
        converted_source(mixture(SHAREGPT, text))
    both = converted_source(mixture(SHAREGPT, text, as_conversation=True)).splits["train"]
    assert both[6]["prompt"] == [{"role": "user", "content": "質問：機械学習とは何ですか？\n回答："}]

    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"conversations": [{"from": "narrator", "value": "x"}], "chosen": "a", "rejected": "b"}],
    )
    found = converted_source(mixture(SHAREGPT, {"source": str(bad)})).findings
    assert [(f.check, f.split, f.rows) for f in found] == [("unknown-role", f"{bad}:train", [1])]
    with pytest.raises(DataError, match=r"data.sources\[0\] .*sharegpt.jsonl: no split 'dev' \(found: train\)"):
        converted_source(mixture({**SHAREGPT, "split": "dev"}))

    sources = (
        "data.sources=[{source: a.jsonl, weight: 1, fraction: 0.5}, {form: dialogue, weight: 0}, "
        "{source: c.jsonl, mix: 1}]"
    )
    with pytest.raises(RecipeError) as err:
        load_recipe("tiny-ja", [sources])
    message = str(err.value)
    for problem in (
        "data.sources: give every source a weight, or none",
        "data.sources[0]: give weight or fraction, not both",
        "data.sources[1].source: required (a file, a dataset directory or a Hub id)",
        "data.sources[1].weight: must be a finite number > 0",
        "data.sources[1].form: expected one of auto, standard, implicit, hh, ranked, sharegpt, openai, unpaired, "
        "completion, chat, got 'dialogue'",
        "data.sources[2].mix: not a per-source key",
    ):
        assert problem in message, problem
    assert "\n" not in message


def test_a_mixture_trains_and_the_model_card_lists_its_sources(tiny_model: Path, tmp_path: Path) -> None:
    """Three differently shaped files (ShareGPT, OpenAI preference JSONL, a system column under another prompt
    name) train as one set; the card lists each source with the form it was read in and its row counts."""
    from conftest import tiny_overrides

    from dpo_recipe.train import run

    openai = str(FORM_FIXTURES / "openai.jsonl")
    orca = ORCA["source"]
    settings = [
        f"data.sources=[{{source: {SHAREGPT['source']}, fraction: 0.5}}, {{source: {openai}}}, "
        f"{{source: {orca}, prompt_column: question}}]",
        "data.test_size=0.25",
        "data.max_train_pairs=null",
        "data.max_eval_pairs=null",
        "training.per_device_batch_size=2",
        "training.max_length=256",
        "eval.num_generations=0",
    ]
    out = tmp_path / "run"
    metrics = run("tiny-ja", tiny_overrides(tiny_model, *settings), output_dir=str(out))
    sources = metrics["data"]["sources"]
    assert [(s["source"], s["form"], s["share"]) for s in sources] == [
        (SHAREGPT["source"], "sharegpt", "fraction 0.5"),
        (openai, "openai", "all rows"),
        (orca, "standard", "all rows"),
    ]
    given = [3, 6, 6]  # half of ShareGPT's six rows, all of the others
    assert [s["training_rows"] + s["held_out_rows"] for s in sources] == given
    assert sum(s["training_rows"] for s in sources) == metrics["train"]["pairs"]
    assert sum(s["held_out_rows"] for s in sources) == metrics["eval"]["overall"]["pairs"] > 0
    card = (out / "README.md").read_text(encoding="utf-8")
    table = card.split("## Training data")[1].split("##")[0]
    for s in sources:
        row = f"| {s['source']} | {s['form']} | train | {s['share']} | {s['training_rows']} | {s['held_out_rows']} |"
        assert row in table, table
    assert "each row keeps its source in the `data_source` column" in table


# ---------------------------------------------------------------------------- issue 38: rows exactly as meant


def test_a_csv_row_with_an_unquoted_comma_is_refused_naming_its_line(tmp_path: Path) -> None:
    shifted = tmp_path / "pairs.csv"
    shifted.write_text(
        "prompt,chosen,rejected\n過学習とは？,合わせすぎる現象です。,学習不足です。\n"
        "正則化とは？,重みに罰則を加えます, 例えばL2です。,データを増やすことです。\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError) as err:
        read_file(shifted)
    assert str(err.value) == (
        f"{shifted}, line 3: 4 fields, but the header has 3 (prompt, chosen, rejected). Quote fields that hold "
        'commas or line breaks ("like, this"), or fix the row.'
    )
    short = tmp_path / "short.csv"
    short.write_text("prompt,chosen,rejected\n過学習とは？,合わせすぎる現象です。\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"short.csv, line 2: 2 fields, but the header has 3"):
        read_file(short)
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('prompt,chosen,rejected\n正則化とは？,"重みに罰則を加えます, 例えば",不足\n', encoding="utf-8")
    assert read_file(quoted) == [
        {"prompt": "正則化とは？", "chosen": "重みに罰則を加えます, 例えば", "rejected": "不足"}
    ]


SEPARATORS = "\u2028\u2029\u0085\x1c\x1d\x1e\x0b\x0c"  # str.splitlines() breaks on each; JSON strings may hold them


def test_line_separators_inside_json_strings_are_read_and_convert_round_trips(runner, tmp_path: Path) -> None:
    rows = [
        {"prompt": f"過学習{sep}とは？", "chosen": f"合わせすぎ{sep}です。", "rejected": "不足です。"}
        for sep in SEPARATORS
    ]
    source = write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert "\u2028" in source.read_text(encoding="utf-8")  # written raw, as data convert writes them
    assert read_file(source) == rows
    out = tmp_path / "converted.jsonl"
    assert invoke(runner, "data", "convert", source, "--out", out).exit_code == 0
    linted = invoke(runner, "data", "lint", out)
    assert linted.exit_code == 0 and "train: 8 pairs" in linted.output
    assert read_file(out) == rows


def test_a_lone_surrogate_is_a_clear_error_naming_the_line(runner, tmp_path: Path) -> None:
    source = tmp_path / "pairs.jsonl"
    source.write_text(
        '{"prompt": "質問", "chosen": "はい", "rejected": "いいえ"}\n'
        '{"prompt": "質問\\ud83d", "chosen": "はい", "rejected": "いいえ"}\n',
        encoding="utf-8",
    )
    result = invoke(runner, "data", "convert", source, "--out", tmp_path / "out.jsonl")
    assert result.exit_code == 1 and not (tmp_path / "out.jsonl").exists()
    assert result.output == (
        f"Error: {source}, line 2: holds a lone surrogate escape (\\ud83d), half of a character that is not text. "
        "Re-export the file from its source, or fix the escape.\n"
    )
    pair = tmp_path / "pair.jsonl"  # a whole surrogate pair, escaped, is one character and reads fine
    pair.write_text('{"prompt": "\\ud83d\\ude00", "chosen": "はい", "rejected": "いいえ"}\n', encoding="utf-8")
    assert read_file(pair)[0]["prompt"] == "\U0001f600"


def test_a_misspelt_local_folder_is_named_not_fetched_from_the_hub(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "data" / "ja-preferences").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        read_source("data/ja-preferencs")
    assert str(err.value).startswith(
        "Data source 'data/ja-preferencs' does not exist. Did you mean 'data/ja-preferences'? Give a JSONL"
    )


def test_a_hub_dataset_that_cannot_be_read_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        read_source("nobody-here/no-such-set")
    assert str(err.value).startswith(
        "'nobody-here/no-such-set' (read as a Hub dataset id, revision main) cannot be read ("
    )
    assert "If it is a local folder, check its name" in str(err.value)


def test_a_topic_column_that_some_rows_lack_splits_whole_topics_and_single_rows() -> None:
    rows = [{**row, "topic": f"t{row['n'] % 4}"} if row["n"] < 20 else row for row in numbered(30)]
    train, test = hold_out(rows, 0.25, seed=0)
    assert len(train) + len(test) == 30 and train and test
    held_topics = {row.get("topic") for row in test} - {None}
    assert not held_topics & {row.get("topic") for row in train}  # a topic is on one side only


def test_convert_refuses_its_own_source_and_an_out_it_cannot_write(runner, tmp_path: Path, monkeypatch) -> None:
    source = FORM_FIXTURES / "ranked.jsonl"
    copy = tmp_path / "ranked.jsonl"
    copy.write_bytes(source.read_bytes())
    result = invoke(runner, "data", "convert", copy, "--out", copy, "--overwrite")
    assert result.exit_code == 1 and copy.read_bytes() == source.read_bytes()
    assert f"--out {copy} is the source itself; converting it in place would replace the data" in result.output

    blocker = tmp_path / "a-file"
    blocker.write_text("mine", encoding="utf-8")
    result = invoke(runner, "data", "convert", copy, "--out", blocker / "pairs.jsonl")
    assert result.exit_code == 1 and blocker.read_text(encoding="utf-8") == "mine"
    assert f"{blocker} is a file, not a folder. Choose an --out in a folder." in result.output

    import dpo_recipe.utils.files as files

    def read_only(target: Path, write) -> Path:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(files, "write_file_atomically", read_only)
    out = tmp_path / "pairs.jsonl"
    result = invoke(runner, "data", "convert", copy, "--out", out)
    assert result.exit_code == 1 and not out.exists()
    assert f"--out {out} could not be written (Read-only file system); nothing was written." in result.output


def test_a_mixture_without_weights_samples_max_train_pairs_from_every_source() -> None:
    data = mixture(SHAREGPT, ORCA, max_train_pairs=6, test_size=0.25)  # 12 rows: 9 train, 3 held out
    train, test, report = load_preference_splits(data)
    sources = [row["data_source"] for row in train]
    assert (len(train), len(test)) == (6, 3) and set(sources) == {SHAREGPT["source"], ORCA["source"]}
    counts = (
        f"{SHAREGPT['source']} {sources.count(SHAREGPT['source'])}, {ORCA['source']} {sources.count(ORCA['source'])}"
    )
    assert (
        f"data.max_train_pairs 6: 6 of 9 training rows ({counts}), chosen after a shuffle seeded by data.seed 0"
        in report.notes
    )


def test_a_builtin_source_in_a_mixture_is_generated_with_num_pairs_and_seed() -> None:
    from dpo_recipe.data.generator import generate_pairs
    from dpo_recipe.data.sources import BUILTIN_SOURCE, converted_source

    mixed = converted_source(mixture({"source": BUILTIN_SOURCE}, num_pairs=40, seed=7)).splits
    alone = generate_pairs(num_pairs=40, seed=7)
    assert [{k: v for k, v in row.items() if k != "data_source"} for row in mixed["train"]] == alone["train"]
    assert len(mixed["train"]) + len(mixed["test"]) == 40


def test_a_mixture_source_that_gives_no_rows_is_named(tmp_path: Path) -> None:
    from dpo_recipe.data.sources import converted_source

    ties = write_jsonl(tmp_path / "ties.jsonl", [{"prompt": "質問", "responses": [{"text": "a", "score": 1}]}])
    with pytest.raises(DataError) as err:
        converted_source(mixture(SHAREGPT, {"source": str(ties)}))
    assert str(err.value) == (
        f"data.sources[1] {ties}: no training rows in split 'train' (read as ranked). Remove the source from "
        "data.sources, or give it rows."
    )


@pytest.mark.parametrize(
    ("weights", "problem"),
    [
        ("[.inf, 1]", "data.sources[0].weight: must be a finite number > 0"),
        ("[.nan, 1]", "data.sources[0].weight: must be a finite number > 0"),
        ("[-1, 1]", "data.sources[0].weight: must be a finite number > 0"),
        ("[0, 1]", "data.sources[0].weight: must be a finite number > 0"),
        ("[1.0e+308, 1.0e+308]", "data.sources: the weights add up past the largest number"),
    ],
)
def test_mixture_weights_must_be_finite_and_positive(weights: str, problem: str) -> None:
    from dpo_recipe.config.loader import load_recipe
    from dpo_recipe.errors import RecipeError

    first, second = weights.strip("[]").split(", ")
    entries = f"[{{source: {SHAREGPT['source']}, weight: {first}}}, {{source: {ORCA['source']}, weight: {second}}}]"
    with pytest.raises(RecipeError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        load_recipe("tiny-ja", [f"data.sources={entries}"])


def test_the_same_source_listed_twice_is_refused(tmp_path: Path, monkeypatch) -> None:
    from dpo_recipe.config.loader import load_recipe
    from dpo_recipe.errors import RecipeError

    monkeypatch.chdir(FORM_FIXTURES)
    entries = f"[{{source: {SHAREGPT['source']}}}, {{source: ./sharegpt.jsonl}}]"  # one file, two spellings
    with pytest.raises(RecipeError) as err:
        load_recipe("tiny-ja", [f"data.sources={entries}"])
    assert (
        "data.sources[1]: the same source as data.sources[0] (./sharegpt.jsonl); listed twice, its rows would train "
        "twice and its held-out pairs would train too" in str(err.value)
    )
    other_split = f"[{{source: {SHAREGPT['source']}}}, {{source: ./sharegpt.jsonl, split: test}}]"
    assert load_recipe("tiny-ja", [f"data.sources={other_split}"]).data.sources[1]["split"] == "test"


def test_lint_warnings_are_printed_by_the_dry_run_with_kind_count_and_rows(tiny_model: Path, tmp_path: Path, capsys):
    from conftest import tiny_overrides

    from dpo_recipe.train import run

    source = write_jsonl(tmp_path / "pairs.jsonl", numbered(40))  # chosen is the longer answer in every pair
    settings = (f"data.source={source}", "data.test_size=0.25", "data.max_train_pairs=null")
    run("tiny-ja", tiny_overrides(tiny_model, *settings), output_dir=str(tmp_path / "dry"), dry_run=True)
    printed = capsys.readouterr().out
    assert (
        "lint warning: length-bias, split 'train': chosen is longer than rejected in 100% of pairs: a model can win "
        "by length alone; add rejected answers of similar length that are wrong in content\npairs kept: 30 (lint "
        "warnings: 1)" in printed
    )
    from dpo_recipe.train import setup
    from dpo_recipe.training.run_context import RunContext

    context = RunContext("tiny-ja", None, tuple(tiny_overrides(tiny_model, *settings)), str(tmp_path / "real"))
    assert setup(context) is not None  # a real run prints them before the weights load
    assert "lint warning: length-bias, split 'train': chosen is longer" in capsys.readouterr().out


def test_a_row_nested_thousands_of_levels_deep_is_a_clear_error(tmp_path: Path) -> None:
    source = tmp_path / "deep.jsonl"
    deep = "[" * 100_000 + "]" * 100_000
    source.write_text('{"prompt": "質問", "chosen": "a", "rejected": "b", "x": ' + deep + "}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"deep.jsonl, line 1: nested too deeply to read"):
        read_file(source)
