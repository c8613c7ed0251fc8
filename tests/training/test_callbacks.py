"""dpo_recipe.training.callbacks: the JSONL log, the clean stop on SIGINT / SIGTERM, and reward key names
that are the ones TRL's DPOTrainer really logs under."""

from __future__ import annotations

import inspect
import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

from transformers import TrainerControl

from dpo_recipe.training.callbacks import REWARD_KEYS, JsonlLogger, StopOnSignal, signal_callback


def state(step: int, *, main: bool = True) -> SimpleNamespace:
    return SimpleNamespace(is_world_process_zero=main, global_step=step, epoch=step / 4)


def test_jsonl_logger_writes_one_line_per_log_on_the_main_process_only(tmp_path: Path) -> None:
    log = JsonlLogger(tmp_path / "train_log.jsonl")
    for step in (1, 2, 3):
        log.on_log(None, state(step), None, logs={"loss": 0.7 - step / 100})
    log.on_log(None, state(4, main=False), None, logs={"loss": 0.1})  # another rank: not written
    log.on_log(None, state(4), None, logs={})  # nothing logged: no line
    lines = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert lines == [{"step": s, "epoch": s / 4, "loss": 0.7 - s / 100} for s in (1, 2, 3)]


def test_jsonl_logger_drops_lines_past_the_resumed_step(tmp_path: Path) -> None:
    log = JsonlLogger(tmp_path / "train_log.jsonl")
    for step in (1, 2, 3):
        log.on_log(None, state(step), None, logs={"loss": 0.5})
    log.on_train_begin(None, state(2), None)
    assert [json.loads(line)["step"] for line in log.path.read_text().splitlines()] == [1, 2]
    log.on_log(None, state(3), None, logs={"loss": 0.4})
    assert [json.loads(line)["loss"] for line in log.path.read_text().splitlines()] == [0.5, 0.5, 0.4]


def test_stop_on_signal_saves_and_stops_after_the_step_then_restores_handlers() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    stop, control = StopOnSignal(), TrainerControl()
    stop.on_train_begin(None, state(0), control)
    try:
        stop.on_step_end(None, state(1), control)
        assert (control.should_save, control.should_training_stop) == (False, False)
        os.kill(os.getpid(), signal.SIGTERM)  # handled, not fatal
        assert stop.received == signal.SIGTERM
        stop.on_step_end(None, state(2), control)
        assert (control.should_save, control.should_training_stop) == (True, True)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_signal_callback_finds_the_trainers_stop_callback() -> None:
    stop = StopOnSignal()
    trainer = SimpleNamespace(callback_handler=SimpleNamespace(callbacks=[JsonlLogger(Path("x")), stop]))
    assert signal_callback(trainer) is stop


def test_every_reward_key_is_logged_by_trl_under_that_name() -> None:
    from trl import DPOTrainer

    source = inspect.getsource(DPOTrainer)
    for key in REWARD_KEYS:
        assert f'["{key}"]' in source, key  # self._metrics[mode]["rewards/chosen"].append(...)
    assert len(set(REWARD_KEYS)) == len(REWARD_KEYS) == 6
