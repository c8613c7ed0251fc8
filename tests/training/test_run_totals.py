"""dpo_recipe.training.run_totals: the loss and time of a whole run, carried through checkpoints."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import TrainerControl

from dpo_recipe.training.run_totals import RunTotals, whole_run_loss


def test_the_loss_is_weighted_by_the_steps_each_log_covers() -> None:
    history = [
        {"step": 1, "loss": 0.7},  # logging_first_step
        {"step": 2, "loss": 0.6},  # a checkpoint
        {"step": 5, "loss": 0.5},  # steps 3-5
        {"step": 5, "train_runtime": 3.0},  # the end of a train() call: no loss
    ]
    assert whole_run_loss(history) == pytest.approx((0.7 + 0.6 + 3 * 0.5) / 5)
    assert whole_run_loss([]) is None


def test_every_checkpoint_and_the_last_step_are_logged() -> None:
    totals = RunTotals()
    for saving, step, logged in ((True, 2, True), (False, 3, False), (False, 8, True)):
        control = TrainerControl(should_save=saving)
        totals.on_step_end(None, SimpleNamespace(global_step=step, max_steps=8), control)
        assert control.should_log is logged, step


def test_the_parts_are_carried_through_a_checkpoint() -> None:
    first = RunTotals()
    first.on_train_begin(None, SimpleNamespace(global_step=0), None)
    saved = first.state()  # what the checkpoint at step 4 holds, as transformers stores it
    assert len(saved["args"]["parts_s"]) == 1 and saved["args"]["resumed_at"] == []
    resumed = RunTotals()  # a new process: --resume
    resumed.on_train_begin(None, SimpleNamespace(global_step=4, stateful_callbacks={"RunTotals": saved}), None)
    resumed.on_train_end(None, None, None)
    totals = resumed.totals()
    assert totals["resumed_at_steps"] == [4] and len(totals["runtime_parts_s"]) == 2
    assert totals["runtime_s"] == round(sum(totals["runtime_parts_s"]), 2)
    assert RunTotals(parts_s=[8.0]).totals() == {"runtime_s": 8.0}
