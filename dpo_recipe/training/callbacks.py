"""Trainer callbacks: a progress bar that shows DPO's numbers, a JSONL log of every logged step, and a clean
stop (checkpoint first) on SIGINT / SIGTERM.

The names TRL's DPOTrainer logs its reward metrics under are written down once here: the packed trainer
logs under them so that its logs read like TRL's, and the progress bar, the charts and ``metrics.json``
read them back. A typo in any one of those places would not fail, the metric would just be missing;
importing the names makes it an error.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from dpo_recipe.utils.files import write_file_atomically

REWARD_CHOSEN = "rewards/chosen"  # beta * (policy - reference) log-prob of chosen (simpo/orpo: mean log-prob)


REWARD_REJECTED = "rewards/rejected"


REWARD_ACCURACY = "rewards/accuracies"  # share of pairs whose chosen reward is strictly higher


REWARD_MARGIN = "rewards/margins"  # chosen reward - rejected reward, batch mean


LOGPS_CHOSEN = "logps/chosen"  # summed completion log-prob under the policy, batch mean


LOGPS_REJECTED = "logps/rejected"


REWARD_KEYS = (REWARD_ACCURACY, REWARD_MARGIN, REWARD_CHOSEN, REWARD_REJECTED, LOGPS_CHOSEN, LOGPS_REJECTED)


EVAL_PREFIX = "eval_"  # the Trainer's prefix for held-out metrics: "eval_rewards/accuracies"


# a held-out report's overall figures -> the names they are logged under, beside the training curves
HELD_OUT_LOGGED = {
    "loss": EVAL_PREFIX + "loss",
    "reward_accuracy": EVAL_PREFIX + REWARD_ACCURACY,
    "reward_margin": EVAL_PREFIX + REWARD_MARGIN,
}


def held_out_logs(overall: dict[str, Any]) -> dict[str, float]:
    """``overall``'s figures under their logged names (``HELD_OUT_LOGGED``); an SFT report has only a loss."""
    return {logged: overall[key] for key, logged in HELD_OUT_LOGGED.items() if key in overall}


LIVE_KEYS = {
    "loss": "loss",
    REWARD_ACCURACY: "acc",
    REWARD_MARGIN: "margin",
    HELD_OUT_LOGGED["loss"]: "held-out loss",
    HELD_OUT_LOGGED["reward_accuracy"]: "held-out acc",
}


class LiveMetricsProgress(ProgressCallback):
    """tqdm bar with live loss / reward accuracy / margin instead of a printed dict per log; the last held-out
    numbers (``eval.steps``) stay beside them until the next evaluation."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: dict[str, str] = {}

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.training_bar is not None and logs:
            shown = {short: f"{logs[key]:.4f}" for key, short in LIVE_KEYS.items() if key in logs}
            if shown:
                self.shown.update(shown)
                self.training_bar.set_postfix(self.shown, refresh=True)


class JsonlLogger(TrainerCallback):
    """Appends each log to ``train_log.jsonl``; on resume, drops lines past the resumed step."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= state.global_step
        ]
        text = "".join(line + "\n" for line in kept)
        write_file_atomically(self.path, lambda staging: staging.write_text(text, encoding="utf-8"))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            # O_NOFOLLOW: a link put in the run folder never makes the log land in the file it points to
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(self.path, flags, 0o644), "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


class StopOnSignal(TrainerCallback):
    """SIGINT / SIGTERM finish the current optimizer step, save a checkpoint there, and stop training.

    Why: Ctrl-C or a scheduler's SIGTERM used to throw away everything since the last periodic
    checkpoint. The handlers are installed for the duration of ``train()`` only; ``received`` tells
    the caller which signal stopped the run, so it can say how to resume and exit 128 + signal.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:  # the first one says why: a terminal's SIGINT, not the launcher's SIGTERM after it
            self.received = signum

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True

    def restore(self) -> None:
        """Put the previous handlers back (also after training raised)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def signal_callback(trainer: Any) -> StopOnSignal:
    """The trainer's ``StopOnSignal`` callback (``training.objectives.base.with_run_callbacks`` installs one)."""
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StopOnSignal))
