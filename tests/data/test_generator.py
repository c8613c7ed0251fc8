import hashlib
import re
from collections import Counter
from pathlib import Path

import datasets
import pytest
from conftest import invoke

from dpo_recipe.data.generator import (
    DOMAINS,
    HARD_NEGATIVE_TYPES,
    QUESTION_FORMS,
    REJECTION_TYPES,
    generate_pairs,
    load_topics,
    to_plain_form,
)
from dpo_recipe.data.lint import JAPANESE_SHARE_MIN, japanese_share, lint

POLITE_END = re.compile(r"(です|ます|ません|でした|ました)。$")


@pytest.fixture(scope="module")
def pairs():
    return generate_pairs(1000, seed=0)


def all_rows(splits):
    return [r for rows in splits.values() for r in rows]


def test_counts_per_domain_and_rejection_type_are_balanced(pairs) -> None:
    rows = all_rows(pairs)
    assert len(rows) == 1000
    domains = Counter(r["domain"] for r in rows)
    assert set(domains) == set(DOMAINS) and all(300 <= n <= 367 for n in domains.values())
    types = Counter(r["rejection_type"] for r in rows)
    assert set(types) == set(REJECTION_TYPES) and len(types) >= 6
    assert max(types.values()) - min(types.values()) <= 1


def test_topics_and_question_forms(pairs) -> None:
    topics = load_topics()
    assert len({t.topic for t in topics}) >= 150
    assert len(QUESTION_FORMS) >= 5
    by_topic = Counter(r["topic"] for r in all_rows(pairs))
    assert len(by_topic) >= 150


def test_test_split_holds_out_whole_topics(pairs) -> None:
    train_topics = {r["topic"] for r in pairs["train"]}
    test_topics = {r["topic"] for r in pairs["test"]}
    assert not train_topics & test_topics
    assert 0.07 <= len(pairs["test"]) / 1000 <= 0.13
    assert {r["domain"] for r in pairs["test"]} == set(DOMAINS)


def test_chosen_is_polite_japanese(pairs) -> None:
    for row in all_rows(pairs):
        assert (
            japanese_share(row["prompt"]) >= JAPANESE_SHARE_MIN and japanese_share(row["chosen"]) >= JAPANESE_SHARE_MIN
        )
        sentences = [s for s in re.split(r"(?<=。)", row["chosen"]) if s]
        assert 2 <= len(sentences) <= 3
        assert all(POLITE_END.search(s) for s in sentences if not s.startswith("例えば")), row["chosen"]


def test_hard_negatives_share_register_and_length_but_not_content(pairs) -> None:
    hard = [r for r in all_rows(pairs) if r["rejection_type"] in HARD_NEGATIVE_TYPES]
    assert len(hard) >= 240
    for row in hard:
        assert abs(len(row["rejected"]) / len(row["chosen"]) - 1) <= 0.25, row
        assert row["rejected"] != row["chosen"]
        assert POLITE_END.search(row["rejected"])
        assert japanese_share(row["rejected"]) > 0.5


def test_other_rejection_types_fail_the_way_they_say(pairs) -> None:
    rows = all_rows(pairs)
    english = [r for r in rows if r["rejection_type"] == "english"]
    assert all(japanese_share(r["rejected"]) == 0 for r in english)
    terse = [r for r in rows if r["rejection_type"] == "too_terse"]
    assert all(len(r["rejected"]) < 0.6 * len(r["chosen"]) for r in terse)
    impolite = [r for r in rows if r["rejection_type"] == "impolite"]
    assert all(not re.search(r"(です|ます)。", r["rejected"]) for r in impolite)
    refusals = [r for r in rows if r["rejection_type"] == "refusal"]
    assert all(re.search("お答え|回答を控え", r["rejected"]) for r in refusals)
    off_topic = [r for r in rows if r["rejection_type"] == "off_topic"]
    assert all(r["topic"] not in r["rejected"] for r in off_topic)


def test_generated_data_passes_its_own_linter(pairs) -> None:
    report = lint(pairs)
    assert report.findings == []


def test_same_seed_same_rows_other_seed_other_sample() -> None:
    assert generate_pairs(200, seed=3) == generate_pairs(200, seed=3)
    a, b = generate_pairs(200, seed=3), generate_pairs(200, seed=4)
    assert [r["prompt"] for r in all_rows(a)] != [r["prompt"] for r in all_rows(b)]


@pytest.mark.parametrize(
    ("polite", "plain"),
    [
        ("これは関数です。", "これは関数だ。"),
        ("値を返します。", "値を返す。"),
        ("精度を計算します。", "精度を計算する。"),
        ("誤差が大きくなります。", "誤差が大きくなる。"),
        ("並列に実行できます。", "並列に実行できる。"),
        ("モデルを使います。", "モデルを使う。"),
        ("データを分けます。", "データを分ける。"),
        ("値を保持しています。", "値を保持している。"),
        ("変更できません。", "変更できない。"),
        ("順序はありません。", "順序はない。"),
    ],
)
def test_plain_form_conversion(polite: str, plain: str) -> None:
    assert to_plain_form(polite) == plain


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_cli_writes_identical_bytes_for_the_same_seed(runner, tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        result = invoke(
            runner,
            "data",
            "generate",
            "--out",
            tmp_path / name,
            "--num-pairs",
            300,
            "--seed",
            seed,
            "--tokenizer",
            "none",
        )
        assert result.exit_code == 0, result.output
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")
    loaded = datasets.load_from_disk(str(tmp_path / "a"))
    via_files = datasets.load_dataset(str(tmp_path / "a"))
    assert loaded["train"].to_list() == via_files["train"].to_list()
    assert loaded["test"].column_names == ["prompt", "chosen", "rejected", "domain", "topic", "rejection_type"]
    assert len(loaded["train"]) + len(loaded["test"]) == 300


def test_dataset_card_metadata_and_tables(runner, tmp_path: Path) -> None:
    from huggingface_hub import DatasetCard

    invoke(runner, "data", "generate", "--out", tmp_path / "d", "--num-pairs", 400, "--tokenizer", "none")
    card = DatasetCard.load(tmp_path / "d" / "README.md")
    meta = card.data.to_dict()
    assert meta["language"] == ["ja"] and meta["license"] == "apache-2.0"
    assert meta["task_categories"] == ["text-generation"] and meta["size_categories"] == ["n<1K"]
    assert {s["split"] for s in meta["configs"][0]["data_files"]} == {"train", "test"}
    assert "| concept_swap | yes | 50 |" in card.text
    assert "| prompt + chosen |" in card.text


def test_generate_refuses_to_overwrite_without_flag(runner, tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke(runner, "data", "generate", "--out", out, "--tokenizer", "none")
    assert result.exit_code == 1 and "already exists and is not empty" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    result = invoke(runner, "data", "generate", "--out", out, "--tokenizer", "none", "--overwrite", "--num-pairs", 50)
    assert result.exit_code == 1 and "holds files 'data generate' did not write (keep.txt)" in result.output
    assert (out / "keep.txt").read_text() == "mine"  # --overwrite replaces a dataset, never a folder of other files
    dataset = tmp_path / "dataset"
    for seed in (0, 1):
        args = ("--out", dataset, "--tokenizer", "none", "--num-pairs", 50, "--seed", seed, "--overwrite")
        assert invoke(runner, "data", "generate", *args).exit_code == 0
