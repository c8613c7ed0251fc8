"""The figures of a whole run, however many ``--resume`` parts it took.

transformers' ``train()`` reports the loss, time and throughput of its own call: after a resume, the
mean over the resumed steps only; after a kill during the final save or held-out scoring (nothing is
left to train), a loss of 0.0 and 0 s. The report must describe the run, so what it needs is kept in
the checkpoints themselves: ``RunTotals`` makes the Trainer log at every checkpoint (the restored log
history then holds every step's loss) and records each part's training time in ``trainer_state.json``.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState


class RunTotals(TrainerCallback, ExportableState):
    """Each part's training seconds and the steps the run was resumed at, carried across checkpoints.

    transformers saves ``state()`` into every checkpoint's ``trainer_state.json``; a resumed call finds
    it in the restored ``state.stateful_callbacks`` when training begins."""

    def __init__(self, parts_s: list[float] | None = None, resumed_at: list[int] | None = None) -> None:
        self.parts_s = list(parts_s or [])  # finished parts; a killed one counts up to its last checkpoint
        self.resumed_at = list(resumed_at or [])
        self._started: float | None = None  # while a part trains

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step > 0:  # resumed: the checkpoint's record of the parts before it
            stored = state.stateful_callbacks.get(type(self).__name__, {}).get("args", {})
            self.parts_s = list(stored.get("parts_s", []))
            self.resumed_at = [*stored.get("resumed_at", []), state.global_step]
        self._started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True  # every step a checkpoint holds is in its log history

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.parts_s = self._parts()
        self._started = None

    def state(self) -> dict[str, Any]:
        return {"args": {"parts_s": self._parts(), "resumed_at": self.resumed_at}, "attributes": {}}

    def totals(self) -> dict[str, Any]:
        """Training seconds summed over the parts (and each part's, where there were several), resume steps."""
        parts = [round(s, 2) for s in self._parts()]
        if len(parts) <= 1:
            return {"runtime_s": sum(parts)}
        return {"runtime_s": round(sum(parts), 2), "runtime_parts_s": parts, "resumed_at_steps": self.resumed_at}

    def _parts(self) -> list[float]:
        running = [] if self._started is None else [time.perf_counter() - self._started]
        return [*self.parts_s, *running]


def whole_run_loss(history: list[dict[str, Any]]) -> float | None:
    """The mean training loss over every step in ``history``: each logged loss is the mean of the steps
    since the previous log, so it is weighted by them (``RunTotals`` logs at every checkpoint)."""
    total, previous = 0.0, 0
    for entry in history:
        if "loss" in entry:
            total += entry["loss"] * (entry["step"] - previous)
            previous = entry["step"]
    return total / previous if previous else None


def run_totals(trainer: Any) -> RunTotals:
    """The trainer's ``RunTotals`` (resuming replaces callbacks: look it up after training)."""
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, RunTotals))
