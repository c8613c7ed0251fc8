"""answer_checks against values computed by hand."""

import pytest

from dpo_recipe.evaluation.answer_checks import check_answer, distinct_2, japanese_share, repetition, summarise_checks


def test_japanese_share_counts_letters_and_digits_only():
    # 「AIとは、人工知能です。」: letters/digits A, I, と, は, 人, 工, 知, 能, で, す = 10; Japanese 8
    assert japanese_share("AIとは、人工知能です。") == pytest.approx(0.8)
    assert japanese_share("It is a model.") == 0.0
    assert japanese_share("。、！") == 0.0  # punctuation only: nothing to count


def test_repetition_marks_characters_inside_repeated_ngrams():
    assert repetition("abcdefghij", n=3) == 0.0
    # "abcabcabc": every 3-gram "abc", "bca", "cab" occurs more than once, so all 9 characters are covered
    assert repetition("abcabcabc", n=3) == 1.0
    # "abcXabc": "abc" twice covers 6 of 7 characters
    assert repetition("abcXabc", n=3) == pytest.approx(6 / 7)
    assert repetition("ab", n=3) == 0.0


def test_distinct_2():
    assert distinct_2("abab") == pytest.approx(2 / 3)  # ab, ba, ab
    assert distinct_2("a") == 0.0


def test_check_answer_on_a_good_and_a_looping_answer():
    good = check_answer("主成分分析とは、多数の変数を少数にまとめる手法です。", "主成分分析")
    assert good["japanese_share"] == 1.0
    assert good["names_topic"] is True
    assert good["repetition"] == 0.0
    assert good["ends_sentence"] is True
    assert good["length"] == 26

    loop = check_answer("＋＋＋＋＋＋＋＋＋＋＋＋＋＋＋＋", "メモリリーク")
    assert loop["japanese_share"] == 0.0
    assert loop["names_topic"] is False
    assert loop["repetition"] == 1.0
    assert loop["ends_sentence"] is False


def test_topic_is_matched_after_nfkc_and_case_folding():
    assert check_answer("ＧＡＮは生成モデルです。", "gan")["names_topic"] is True
    assert check_answer("回答です。", None)["names_topic"] is None


def test_summary_means_and_loop_share():
    checks = [
        check_answer("主成分分析とは、手法です。", "主成分分析"),
        check_answer("abcdefghabcdefghabcdefgh", "k平均法"),
    ]
    summary = summarise_checks(checks)
    assert summary["answers"] == 2
    assert summary["names_topic"] == 0.5
    assert summary["mostly_loop"] == 0.5
    assert summary["japanese_share"] == 0.5
    assert summary["ends_sentence"] == 0.5
    assert summarise_checks([]) == {}
