"""Held-out numbers while training runs (``eval.steps``), and early stopping on them (``training.early_stopping``).

A run that reports its held-out numbers once, at the end, cannot say that it stopped improving after a third
of its steps, or got worse. Here the objective's scorer (``Objective.step_evaluator``: DPO scores the
``eval.subset`` pairs as ``dpo-recipe eval`` scores them, the base's half once) runs every N optimizer steps
and at the last one, and its figures are logged as the training curves are: through transformers'
``Trainer.log``, so the progress bar, ``train_log.jsonl``, the trackers (``training.report_to``) and the
plots get them, under ``eval_loss``, ``eval_rewards/accuracies`` and ``eval_rewards/margins``.

Early stopping keeps the adapter of the best evaluation. The best step is saved as a checkpoint when it is
measured and recorded where transformers records it (``state.best_metric`` / ``best_global_step``), so the
checkpoint rotation keeps it and a resumed run knows it; after training its weights are loaded back before
the final evaluation and the save. (transformers' own ``EarlyStoppingCallback`` needs its evaluation loop
and ``load_best_model_at_end``, which tie every evaluation to a checkpoint save; this saves the best only.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from dpo_recipe.config.schema import Recipe
from dpo_recipe.config.vocabulary import EARLY_STOPPING_METRICS
from dpo_recipe.training.callbacks import HELD_OUT_LOGGED, held_out_logs
from dpo_recipe.utils.files import write_file_atomically

POINT_KEYS = tuple(HELD_OUT_LOGGED)  # what one evaluation point keeps: loss, reward_accuracy, reward_margin


class HeldOutSteps(TrainerCallback, ExportableState):
    """Scores the held-out rows every ``every`` optimizer steps and at the last step; with ``patience``, stops
    after that many evaluations in a row without a better ``metric`` (a tie is no improvement).

    ``trainer`` is the one this callback is added to (its ``log`` reaches every other callback);
    ``evaluate`` returns the held-out report's ``overall`` for the adapter as it is, on every process."""

    def __init__(
        self,
        trainer: Any,
        evaluate: Callable[[], dict[str, Any]],
        every: int,
        pairs: int,
        stopping: dict[str, Any] | None = None,
        recipe_yaml: str = "",
    ) -> None:
        self.trainer, self.evaluate, self.every, self.pairs = trainer, evaluate, every, pairs
        self.recipe_yaml = recipe_yaml  # written into each checkpoint, so dpo-recipe eval can score it
        self.patience: int | None = (stopping or {}).get("patience")
        self.metric: str = (stopping or {}).get("metric", "loss")
        self.seconds = 0.0  # spent evaluating, over every part of a resumed run
        self.waited = 0  # evaluations since the best one
        self.stopped_at: int | None = None  # the step early stopping ended training at

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step > 0:  # resumed: the checkpoint's record (``state()``)
            stored = state.stateful_callbacks.get(type(self).__name__, {}).get("attributes", {})
            self.seconds, self.waited = stored.get("seconds", 0.0), stored.get("waited", 0)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        last = state.global_step >= state.max_steps
        if state.global_step % self.every and not last:  # a stop signal's step is still measured: a resumed run
            return  # then goes on exactly as one never stopped
        started = time.perf_counter()
        overall = self.evaluate()
        self.seconds += time.perf_counter() - started
        from transformers import Trainer

        should_log = control.should_log  # logging resets it, and this step's training line is still to come
        Trainer.log(self.trainer, held_out_logs(overall))  # TRL's own log would fold its batch metrics in
        control.should_log = should_log
        if self.patience is not None:
            self._watch(overall[self.metric], state, control, last)

    def _watch(self, value: float, state: Any, control: Any, last: bool) -> None:
        best = state.best_metric
        higher = EARLY_STOPPING_METRICS[self.metric]
        improved = not math.isnan(value) and (best is None or (value > best if higher else value < best))
        if improved:
            state.best_metric, state.best_global_step, self.waited = value, state.global_step, 0
            control.should_save = True  # the best adapter on disk, kept by the checkpoint rotation
            control.should_log = True  # a checkpoint's log history holds every step (training.run_totals)
            return
        self.waited += 1
        if self.waited >= self.patience and not last:
            self.stopped_at = state.global_step
            control.should_training_stop = True
            control.should_log = True  # the steps since the last log line are in the run's loss

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """``recipe.yaml`` in the checkpoint just saved: ``dpo-recipe eval --adapter .../checkpoint-N`` then
        scores that step's adapter as training did (a point of the curve, checked by hand)."""
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and self.recipe_yaml and folder.is_dir():
            write_file_atomically(folder / "recipe.yaml", lambda staging: staging.write_text(self.recipe_yaml, "utf-8"))

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"seconds": self.seconds, "waited": self.waited}}


def watch_held_out(trainer: Any, evaluate: Callable[[], dict[str, Any]], recipe: Recipe, pairs: int) -> HeldOutSteps:
    """Add ``HeldOutSteps`` for ``recipe.eval.steps`` (and ``training.early_stopping``) to ``trainer``, after the
    run's own callbacks (``objectives.base.with_run_callbacks``): it reads the saves they asked for."""
    stopping = recipe.training.early_stopping
    callback = HeldOutSteps(trainer, evaluate, recipe.eval.steps, pairs, stopping, recipe_yaml=recipe.to_yaml())
    trainer.add_callback(callback)
    return callback


def held_out_steps(trainer: Any) -> HeldOutSteps | None:
    """The trainer's ``HeldOutSteps``, or None without ``eval.steps``."""
    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, HeldOutSteps)), None)


def keep_best_adapter(trainer: Any) -> dict[str, Any] | None:
    """After training with early stopping: load the best evaluation's adapter back into the model (from its
    checkpoint) and return where the adapter comes from, for ``metrics.json``; None without early stopping.

    The checkpoint holds the weights as they were at that step, so the final evaluation, the saved adapter and
    a ``dpo-recipe eval`` of the checkpoint all see the same adapter."""
    watch = held_out_steps(trainer)
    if watch is None or watch.patience is None:
        return None
    state = trainer.state
    best, last = state.best_global_step, state.global_step
    info = {"metric": watch.metric, "patience": watch.patience, "last_step": last, "stopped_at_step": watch.stopped_at}
    if best is None:  # no evaluation gave a number (NaN): the last step's adapter stays
        return {**info, "adapter_step": last, "value": None}
    weights = Path(trainer.args.output_dir) / f"checkpoint-{best}" / "adapter_model.safetensors"
    if best != last and not weights.is_file():  # removed by hand since: the last step's adapter is what there is
        print(f"Early stopping: {weights} is gone, so the adapter is the last step's ({last}), not the best ({best}).")
        return {**info, "adapter_step": last, "value": None}
    if best != last:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        model = trainer.accelerator.unwrap_model(trainer.model)
        loaded = set_peft_model_state_dict(model, load_file(weights), adapter_name=model.active_adapter)
        if loaded.unexpected_keys:
            raise RuntimeError(f"{weights} holds weights this adapter lacks: {loaded.unexpected_keys[:3]}")
    return {**info, "adapter_step": best, "value": state.best_metric}


def watch_metrics(trainer: Any) -> dict[str, Any] | None:
    """``metrics.json``'s ``eval_steps``: every evaluation point (step, loss, reward accuracy, margin, from the
    log history, so a resumed run's earlier points are there too), the pairs scored and the seconds it took."""
    watch = held_out_steps(trainer)
    if watch is None:
        return None
    prefix = {logged: key for key, logged in HELD_OUT_LOGGED.items()}
    points = [
        {"step": entry["step"], **{prefix[k]: v for k, v in entry.items() if k in prefix}}
        for entry in trainer.state.log_history
        if HELD_OUT_LOGGED["loss"] in entry
    ]
    return {"every": watch.every, "pairs": watch.pairs, "points": points, "seconds": round(watch.seconds, 2)}


def held_out_steps_line(watched: dict[str, Any], training_s: float, unit: str) -> str:
    """``Held-out every 10 steps: 5 points on 109 pairs, 21 s (8% of training).``: what ``eval.steps`` cost."""
    share = f" ({watched['seconds'] / training_s:.0%} of training)" if training_s else ""
    every = "step" if watched["every"] == 1 else f"{watched['every']} steps"
    return (
        f"Held-out every {every}: {len(watched['points'])} points on {watched['pairs']} {unit}, "
        f"{watched['seconds']:.0f} s{share}."
    )


def early_stopping_sentence(stopping: dict[str, Any]) -> str:
    """One sentence on where the adapter comes from: the printed line's and the card's."""
    metric = stopping["metric"].replace("_", " ")
    if stopping["value"] is None:
        kept = f"the adapter is the last step's ({stopping['adapter_step']}), no best step's checkpoint to take"
    else:
        kept = f"the adapter is step {stopping['adapter_step']}'s (held-out {metric} {stopping['value']:.4f}, the best)"
    if stopping["stopped_at_step"] is not None:
        stopped, patience = stopping["stopped_at_step"], stopping["patience"]
        ended = f"training stopped at step {stopped}, {patience} evaluations without a better one"
    else:
        ended = f"training ran to its last step ({stopping['last_step']})"
    return f"Early stopping on held-out {metric}: {kept}; {ended}."
