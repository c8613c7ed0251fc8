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
        "data.sources=[{source: a.jsonl, weight: 1, fraction: 0.5}, {form: chat, weight: 0}, {source: c.jsonl, mix: 1}]"
    )
    with pytest.raises(RecipeError) as err:
        load_recipe("tiny-ja", [sources])
    message = str(err.value)
    for problem in (
        "data.sources: give every source a weight, or none",
        "data.sources[0]: give weight or fraction, not both",
        "data.sources[1].source: required (a file, a dataset directory or a Hub id)",
        "data.sources[1].weight: must be a finite number > 0",
        "data.sources[1].form: expected one of auto, standard, implicit, hh, ranked, sharegpt, openai, unpaired",
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
