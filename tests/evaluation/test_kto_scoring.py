"""KTO's held-out numbers from scored rows, against hand-computed values, and their Markdown. Scoring through
KTOTrainer itself is checked against ``KTOTrainer.evaluate`` in tests/training/test_kto.py."""

from __future__ import annotations

import pytest

from dpo_recipe.evaluation.kto_scoring import REWARD, summarise
from dpo_recipe.evaluation.report import kto_lines, markdown_summary


def scored(batch: int, label: bool, reward: float, kl: float, loss: float, **extra: object) -> dict:
    adjusted = reward - 0.1 * kl
    correct = adjusted > 0 if label else adjusted < 0
    return {"batch": batch, "label": label, "reward": reward, "kl": kl, "loss": loss, "correct": correct, **extra}


ROWS = [
    scored(0, True, 0.3, 1.0, 0.4),  # adjusted 0.2 > 0: right
    scored(0, False, 0.1, 1.0, 0.5, rejection_type="off_topic"),  # adjusted 0.0, not < 0: a tie counts wrong
    scored(1, True, -0.2, 0.0, 0.6),  # wrong
    scored(1, False, -0.4, 0.0, 0.2, rejection_type="off_topic"),  # right
    scored(1, False, -0.1, 0.0, 0.3, rejection_type="english"),  # right
]


def test_summary_against_hand_computed_values() -> None:
    report = summarise(ROWS, beta=0.1)
    overall = report["overall"]
    assert (report["objective"], report["beta"], report["reward"]) == ("kto", 0.1, REWARD)
    assert (overall["rows"], overall["desirable_rows"], overall["undesirable_rows"]) == (5, 2, 3)
    assert overall["reward_accuracy"] == pytest.approx(3 / 5)
    assert (overall["desirable_accuracy"], overall["undesirable_accuracy"]) == pytest.approx((1 / 2, 2 / 3))
    # KTOTrainer.evaluate's loss and KL: the mean over batches of each batch's mean (its KL is one per batch)
    assert overall["loss"] == pytest.approx(((0.4 + 0.5) / 2 + (0.6 + 0.2 + 0.3) / 3) / 2)
    assert overall["kl"] == pytest.approx(0.5)
    assert overall["chosen_reward"] == pytest.approx(0.05) and overall["rejected_reward"] == pytest.approx(-0.4 / 3)
    assert overall["reward_margin"] == pytest.approx(0.05 + 0.4 / 3)
    assert report["undesirable_by_rejection_type"] == {
        "english": {"rows": 1, "accuracy": 1.0},
        "off_topic": {"rows": 2, "accuracy": 0.5},
    }


def test_a_held_out_split_of_one_label_has_no_margin_and_says_n_a() -> None:
    report = summarise([row for row in ROWS if row["label"]], beta=0.1)
    overall = report["overall"]
    assert overall["undesirable_accuracy"] is None and overall["reward_margin"] is None
    assert "undesirable_by_rejection_type" not in report
    text = markdown_summary(report, kto_lines(report))
    assert "undesirable n/a of 0 (reward < 0)" in text and "(margin n/a)" in text and "| rejection_type" not in text


def test_markdown_of_a_kto_report() -> None:
    report = summarise(ROWS, beta=0.1)
    report["generations"] = [{"prompt": "AIとは？", "base": "a|b", "tuned": "line\nbreak"}]
    lines = markdown_summary(report, kto_lines(report)).splitlines()
    assert lines[0] == (
        "Held-out KL-adjusted reward accuracy **60.0%** on 5 rows: desirable 50.0% of 2 (reward > 0), "
        "undesirable 66.7% of 3 (reward < 0)."
    )
    assert lines[1].startswith("Mean reward desirable 0.0500, undesirable -0.1333 (margin 0.1833); KL estimate 0.5000")
    assert "| off_topic | 2 | 50.0% |" in lines and "| english | 1 | 100.0% |" in lines
    assert lines[-1] == "| AIとは？ | a\\|b | line break |"  # the answers table of the DPO report
