"""Phases add up, keep their order, and print with the highlighted share."""

from __future__ import annotations

import time

import pytest

from dpo_recipe.utils.stopwatch import Stopwatch


def test_phases_add_up_in_order_and_print_a_share() -> None:
    watch = Stopwatch()
    watch.seconds.update({"load": 1.0, "training": 3.0})
    with watch.phase("load"):
        time.sleep(0.01)
    assert list(watch.seconds) == ["load", "training"] and watch.seconds["load"] >= 1.01
    watch.seconds["load"] = 1.0
    assert watch.line("training") == "Time: load 1 s, training 3 s (75%); 4 s in all."
    assert watch.rounded() == {"load": 1.0, "training": 3.0}


def test_a_phase_that_raises_is_still_counted() -> None:
    watch = Stopwatch()
    with pytest.raises(KeyError), watch.phase("saving"):
        raise KeyError("x")
    assert "saving" in watch.seconds
