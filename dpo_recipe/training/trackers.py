"""Where a run's curves go besides ``train_log.jsonl``: ``training.report_to`` (TensorBoard, Weights & Biases,
trackio) through transformers' own integrations, which log every line the Trainer logs (the training curves,
``eval.steps``' held-out points).

What those integrations do not know is added here, on the main process: the run is named after its output
directory and logged to the project ``dpo-recipe`` (W&B: unless ``WANDB_PROJECT`` names another); the recipe
goes into the run's config when training begins (TensorBoard: as text); the final held-out report, which is
computed after training, becomes the run's summary (W&B's run summary, trackio's config ``summary`` and a last
logged line, TensorBoard ``final/…`` scalars at the last step) and the W&B run is finished, so the next run of a sweep
starts its own. A tracker whose package is missing is refused before any weights load. trackio logs to its
local project (unless the user's ``TRACKIO_SPACE_ID`` names a Space), and no static Space is made of it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from dpo_recipe.config.schema import Recipe, TrainingSection
from dpo_recipe.config.vocabulary import TRACKERS
from dpo_recipe.errors import RecipeError

PROJECT = "dpo-recipe"  # the W&B / trackio project every run logs to


def reported_to(training: TrainingSection) -> list[str]:
    """The trackers ``training.report_to`` names, ``training.tensorboard: true`` counting as ``tensorboard``."""
    names = [training.report_to] if isinstance(training.report_to, str) else list(training.report_to)
    if training.tensorboard:
        names.append("tensorboard")
    return list(dict.fromkeys(name for name in names if name != "none"))  # each once: one callback a tracker


def check_trackers(training: TrainingSection) -> None:
    """Refuse, before any weights load, a tracker whose package is not installed, naming the extra to install,
    and W&B without a login where it would log online (it would fail when training begins)."""
    names = reported_to(training)
    missing = [name for name in names if importlib.util.find_spec(TRACKERS[name]) is None]
    if missing:
        extras = " ".join(f"'dpo-recipe[{name}]'" for name in missing)
        raise RecipeError(
            f"training.report_to: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: pip "
            f"install {extras} (or remove {', '.join(missing)} from training.report_to"
            f"{'; training.tensorboard: true counts as tensorboard' if training.tensorboard else ''})."
        )
    if "wandb" in names and os.environ.get("WANDB_MODE") not in ("offline", "disabled", "dryrun"):
        import wandb

        try:  # wandb's own check of its key (environment, .netrc, its settings); no network without verify
            wandb.login(verify=False)
        except Exception as exc:
            raise RecipeError(
                f"training.report_to: wandb cannot log in here ({str(exc).splitlines()[0]}). Run 'wandb login' or set "
                "WANDB_API_KEY, or set WANDB_MODE=offline to keep the run in a local folder (wandb sync uploads it "
                "later)."
            ) from None


def run_name(out: Path) -> str:
    """The run's name in every tracker: its output directory's name (a ``--then`` stage's with its parent's)."""
    out = Path(out)
    return f"{out.parent.name}/{out.name}" if out.name.startswith("stage-") and out.parent.name else out.name


def tracker_settings(training: TrainingSection, out: Path) -> dict[str, Any]:
    """The TRL config fields of ``training.report_to``; TensorBoard's directory and W&B's project are read from the
    environment by transformers, so they are set there."""
    names = reported_to(training)
    if "tensorboard" in names:  # transformers 5 reads the TensorBoard directory from the environment only
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(out) / "runs")
    if "wandb" in names:
        os.environ.setdefault("WANDB_PROJECT", PROJECT)
    return {
        "report_to": names,
        "run_name": run_name(out),
        "project": PROJECT,  # trackio's
        "trackio_static_space_id": False,  # trackio: local only, no Space on the Hub after training or on a push
    }


class RunRecord(TrainerCallback):
    """Puts the recipe into each tracker's run config once the integrations have started their runs (they are
    added before this callback, so their ``on_train_begin`` has run)."""

    def __init__(self, recipe: Recipe, trainer: Any) -> None:
        self.trainer = trainer  # whose TensorBoard callback holds the writer
        self.recipe = recipe.to_dict()
        self.recipe_yaml = recipe.to_yaml()
        self.trackio_config: dict[str, Any] = {}  # trackio's run config, given again when the summary reopens it

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        if "wandb" in args.report_to:
            import wandb

            if wandb.run is not None:
                wandb.config.update({"recipe": self.recipe}, allow_val_change=True)
        if "trackio" in args.report_to:
            import trackio

            trackio.config.update({"recipe": self.recipe})
            self.trackio_config = {k: v for k, v in trackio.config.items() if not k.startswith("_")}  # _: trackio's
        for tensorboard in _tensorboard_callbacks(self.trainer):
            if tensorboard.tb_writer is not None:
                tensorboard.tb_writer.add_text("recipe", f"```yaml\n{self.recipe_yaml}```")


def _tensorboard_callbacks(trainer: Any) -> list[Any]:
    from transformers.integrations import TensorBoardCallback

    return [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TensorBoardCallback)]


def record_run(trainer: Any, recipe: Recipe) -> None:
    """Add ``RunRecord`` to ``trainer`` when the recipe reports to a tracker."""
    if reported_to(recipe.training):
        trainer.add_callback(RunRecord(recipe, trainer))


def summary_figures(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of ``metrics.json`` a tracker's summary holds: the held-out report (``held_out/…``, a 95 %
    interval as ``…_low`` / ``…_high``), the answer checks (``answers/base/…``, ``answers/tuned/…``), the
    training figures (``train/…``), peak memory and, with early stopping, the step the adapter comes from."""
    evaluation = metrics.get("eval", {})
    sections = {
        "held_out": evaluation.get("overall", {}),
        "answers/base": evaluation.get("answer_checks", {}).get("base", {}),
        "answers/tuned": evaluation.get("answer_checks", {}).get("tuned", {}),
        "train": metrics.get("train", {}),
        "memory": metrics.get("memory", {}),
        "early_stopping": metrics.get("train", {}).get("early_stopping", {}),
    }
    figures: dict[str, float] = {}
    for prefix, values in sections.items():
        for key, value in values.items():
            if _number(value):
                figures[f"{prefix}/{key}"] = value
            elif isinstance(value, list) and len(value) == 2 and all(_number(v) for v in value):
                figures[f"{prefix}/{key}_low"], figures[f"{prefix}/{key}_high"] = value
    return figures


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def close_trackers(trainer: Any, metrics: dict[str, Any]) -> None:
    """The final report as each tracker's summary, after training (main process only); the W&B run is finished.

    transformers' trackio integration finishes its run when training ends, so the summary reopens it
    (``resume="must"``) with the config it had, ``summary`` added, and logs the figures at the last step."""
    figures = summary_figures(metrics)
    for name in trainer.args.report_to:
        try:
            SUMMARIES[name](trainer, figures)
        except Exception as exc:  # the run's own files are complete: a tracker's failure does not undo them
            print(f"training.report_to: the final report could not be logged to {name} ({type(exc).__name__}: {exc})")


def _wandb_summary(trainer: Any, figures: dict[str, float]) -> None:
    import wandb

    if wandb.run is not None:
        wandb.run.summary.update(figures)
        wandb.finish()


def _trackio_summary(trainer: Any, figures: dict[str, float]) -> None:
    import trackio

    record = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, RunRecord)), None)
    config = {**(record.trackio_config if record else {}), "summary": figures}
    trackio.init(project=trainer.args.project, name=trainer.args.run_name, resume="must", config=config)
    trackio.log({**figures, "train/global_step": trainer.state.global_step})  # trackio counts its own steps
    trackio.finish()


def _tensorboard_summary(trainer: Any, figures: dict[str, float]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    for tensorboard in _tensorboard_callbacks(trainer):  # its writer was closed when training ended
        writer = SummaryWriter(log_dir=tensorboard.logging_dir)
        for key, value in figures.items():
            writer.add_scalar(f"final/{key}", value, trainer.state.global_step)
        writer.close()


SUMMARIES = {"wandb": _wandb_summary, "trackio": _trackio_summary, "tensorboard": _tensorboard_summary}
