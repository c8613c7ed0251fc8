"""Train a LoRA adapter from a recipe with its objective (``training.objective``: DPO, KTO): setup → train →
evaluate and save.

    accelerate launch [accelerate args] -m dpo_recipe.train --recipe NAME_OR_PATH [--set k=v ...]
    python -m dpo_recipe.train --recipe NAME_OR_PATH --dry-run

Everything that can be wrong with the flags, the recipe, the data or the hardware is checked before
the model's weights load. The output directory's life cycle (INCOMPLETE file, checkpoints, resume)
is in ``run_dir``, the recipe → TRL config mapping in ``trl_args``, each objective's rows, trainer and
held-out report in ``training.objectives``, and what a finished run writes in ``artifacts``; this module
orders those steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpo_recipe.artifacts.outputs import (
    collect_metrics,
    gather_adapter_digests,
    save_artifacts,
    summary_line,
    training_chain,
)
from dpo_recipe.config.schema import Recipe
from dpo_recipe.config.stages import Stage
from dpo_recipe.config.trust import fetched_summary
from dpo_recipe.data.sources import pin_hub_revision, sample_rows
from dpo_recipe.errors import JudgeError, RecipeError, RunInterrupted, exit_on_user_error
from dpo_recipe.models.adapters import load_policy
from dpo_recipe.models.hardware import check_hardware, check_launch
from dpo_recipe.training.launch import first_process
from dpo_recipe.training.objectives import objective_for
from dpo_recipe.training.run_context import RunContext
from dpo_recipe.training.run_dir import (
    CHECKPOINTS,
    Terminated,
    check_output_dir,
    interrupted,
    is_finished,
    newest_complete_checkpoint,
    prepare_output_dir,
    release_lock,
    stops_raise,
    write_failures_explained,
)
from dpo_recipe.training.step_evaluation import (
    early_stopping_sentence,
    held_out_steps_line,
    keep_best_adapter,
    watch_held_out,
    watch_metrics,
)
from dpo_recipe.training.trackers import check_trackers, close_trackers, record_run
from dpo_recipe.utils.files import cache_root
from dpo_recipe.utils.stopwatch import Stopwatch

if TYPE_CHECKING:
    from dpo_recipe.training.base_cache import BaseCache
    from dpo_recipe.training.objectives.base import Objective


def build_parser() -> argparse.ArgumentParser:
    """The training options, declared once: ``python -m dpo_recipe.train`` and ``dpo-recipe train`` parse with it."""
    parser = argparse.ArgumentParser(
        prog="python -m dpo_recipe.train",
        description="Train a LoRA adapter with DPO from a recipe (run under 'accelerate launch' for several "
        "processes). Writes the adapter, tokenizer, recipe.yaml, metrics.json, plots and a model card.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--recipe", help="Packaged recipe name (dpo-recipe recipes list) or YAML path.")
    source.add_argument(
        "--from-hub",
        metavar="USER/NAME[@REVISION]",
        help="Repeat the run behind an adapter pushed by dpo-recipe: its recipe.yaml, dataset commit included. "
        "hub.push is off unless you --set it; the output dir defaults to outputs/NAME.",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="Override a recipe key; repeatable. Validated like the file.",
    )
    parser.add_argument(
        "--then",
        action="append",
        default=[],
        metavar="RECIPE",
        help="Train this recipe next, starting from the adapter just trained (its model.init_adapter), e.g. "
        "--recipe tiny-ja-sft --then tiny-ja; repeatable. Stage N writes OUTPUT_DIR/stage-N; --set items apply "
        "to every stage; --resume keeps finished stages and continues the first unfinished one.",
    )
    parser.add_argument("--output-dir", help="Overrides training.output_dir.")
    parser.add_argument("--resume", action="store_true", help="Continue from the newest checkpoint in the output dir.")
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace a finished or interrupted run in the output dir."
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="Allow the model repo's own Python code (transformers' trust_remote_code). A recipe fetched with "
        "--from-hub cannot turn this on by itself: only this flag (or your own --set) can.",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Check recipe, data, tokenization and LoRA targets; report and exit before training.",
    )
    return parser


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> RunContext:
    """The run ``argv`` asks for; contradictory flags exit with a usage error (status 2) before anything runs.

    ``parser`` defaults to ``build_parser()``; ``dpo-recipe train`` passes one with the launcher's options added."""
    parser = parser or build_parser()
    try:
        return RunContext.from_args(parser.parse_args(argv))
    except RecipeError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> None:
    """``python -m dpo_recipe.train``: a user error exits 2 (130 / 143 after SIGINT / SIGTERM) with one paragraph."""
    exit_on_user_error(recipe_main, parse_args(argv))


def run(
    recipe_name: str | None,
    overrides: list[str],
    *,
    from_hub: str | None = None,
    output_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Any] | None:
    """Train from a recipe (or from a pushed run's recipe, ``from_hub``); returns metrics on the main process."""
    context = RunContext(
        recipe=None if from_hub else recipe_name,
        from_hub=from_hub,
        overrides=tuple(overrides),
        output_dir=output_dir,
        resume=resume,
        overwrite=overwrite,
        dry_run=dry_run,
        trust_remote_code=trust_remote_code,
    )
    return recipe_main(context)


def recipe_main(context: RunContext) -> dict[str, Any] | None:
    """setup → train → evaluate and save → cleanup; a dry run stops after setup's checks. A chain (a ``stages:``
    recipe, ``--then``) trains one run a stage (``stages_main``)."""
    chain = context.stages()
    if chain is not None:
        return stages_main(context, *chain)
    started, stopwatch = time.perf_counter(), Stopwatch()
    out = None
    with stops_raise():
        try:
            training = setup(context, stopwatch)
            if training is None:
                print(f"dry run finished in {time.perf_counter() - started:.1f} s")
                return None
            out = training.out
            try:
                train(training)
                metrics = evaluate_and_save(training, started)
            finally:  # finished, failed or stopped: the folder is free for the next run (or --resume)
                release_lock(training.out)
        except (KeyboardInterrupt, Terminated) as stop:  # outside the steps: data, scoring, answers, saving
            resume = context.resume_command(out) if out else ""
            raise interrupted(stop, out, resume, stopwatch.current) from None
    cleanup()
    return metrics


def stages_main(context: RunContext, stages: list[Stage], chain_dir: str | None) -> dict[str, Any] | None:
    """A chain of runs (a ``stages:`` recipe, ``--then``), each from the adapter of the one before it
    (``model.init_adapter``), stage N into ``OUTPUT_DIR/stage-N``; returns the last stage's metrics.

    Every stage's recipe is loaded and checked first, so a mistake in the last stage stops the chain before the
    first trains; then ``chained_runs`` trains them."""
    recipes = stage_recipes(context, stages)
    root = Path(context.output_dir or chain_dir or recipes[0].training.output_dir).expanduser()
    runs = [
        ChainedRun(
            stage.recipe, root / f"stage-{index}", f"stage {index} of {len(stages)}", _start_from, stage.overrides
        )
        for index, stage in enumerate(stages, 1)
    ]
    done = chained_runs(context, runs)
    if context.dry_run:
        print(f"dry run: stage 1 checked; the {len(stages) - 1} stage(s) after it start from its adapter.")
        return None
    return done[-1]


def _start_from(adapter: Path) -> tuple[str, ...]:
    return (f"model.init_adapter={adapter}",)


@dataclass(frozen=True)
class ChainedRun:
    """One run of a chain: its recipe, its folder, its name in messages, the ``--set`` items it takes from the
    adapter the run before it wrote (``after``; not called for a chain's first run without a starting adapter),
    and its own ``--set`` items (None: the command's)."""

    recipe: str
    out: Path
    name: str
    after: Callable[[Path], tuple[str, ...]]
    overrides: tuple[str, ...] | None = None


def chained_runs(context: RunContext, runs: Sequence[ChainedRun], adapter: Path | None = None) -> list[dict[str, Any]]:
    """Train ``runs`` in order, each from the adapter before it (``adapter``: where the first starts, if
    anywhere); the metrics of each, in order. Stage chains (``stages_main``) and ``dpo-recipe iterate``'s rounds
    both run here.

    A run's items from ``after`` replace its ``--set`` items of the same keys: the adapter it starts from, and
    for iterate its data. Each run is a whole run (its own lock, checkpoints, card, resume command). With
    ``--resume`` a finished run is kept and read, so a stopped chain continues where it stopped. A dry run
    checks the first run (the next ones start from an adapter that does not exist yet) and returns no metrics."""
    done = []
    for run in runs:
        if context.resume and is_finished(run.out):
            print(f"--resume: {run.name} ({run.recipe}) finished in {run.out}; kept.")
            metrics = json.loads((run.out / "metrics.json").read_text(encoding="utf-8"))
        else:
            start = run.after(adapter) if adapter else ()
            taken = {item.partition("=")[0].strip() for item in start}  # the run's own settings win over --set
            given = context.overrides if run.overrides is None else run.overrides
            kept = tuple(item for item in given if item.partition("=")[0].strip() not in taken)
            if first_process():
                print(f"{run.name[0].upper()}{run.name[1:]}: {run.recipe} -> {run.out}")
            step = dataclasses.replace(context, recipe=run.recipe, then=(), overrides=(*kept, *start))
            metrics = recipe_main(dataclasses.replace(step, output_dir=str(run.out)))
        if context.dry_run:
            return []
        done.append(metrics)
        adapter = run.out
    return done


def stage_recipes(context: RunContext, stages: list[Stage]) -> list[Recipe]:
    """Every stage's recipe, loaded and checked (``model.init_adapter`` is the stage before's, set when it runs)."""
    recipes = []
    for index, stage in enumerate(stages, 1):
        try:
            recipes.append(dataclasses.replace(context, recipe=stage.recipe, overrides=stage.overrides).load_recipe())
        except RecipeError as exc:
            raise RecipeError(f"Stage {index} of {len(stages)} ({stage.recipe}): {exc}") from None
    return recipes


def cleanup() -> None:
    """Every process leaves together.

    A rank that exits while the main one still answers prompts or saves tears the process group
    down under it (seen with two CPU processes: "terminate called without an active exception",
    exit status -6). The group stays open: a sweep runs its next configuration in it."""
    from accelerate import PartialState

    PartialState().wait_for_everyone()


@dataclass
class TrainingRun:
    """What setup hands to training and saving."""

    context: RunContext
    recipe: Recipe
    objective: Objective  # what training.objective names: its rows, trainer, report and words
    out: Path
    train_rows: list[dict]
    eval_rows: list[dict]
    tokenizer: Any
    trainer: Any
    is_main_process: bool
    stopwatch: Stopwatch
    cache: BaseCache  # the base's reference log-probs and answers, shared by every run on that base
    data_sources: list[dict]  # each source's form and row counts (``data.sources.provenance``): the card's table
    early_stopping: dict[str, Any] | None = None  # after training with it: the step the adapter comes from


def setup(context: RunContext, stopwatch: Stopwatch | None = None) -> TrainingRun | None:
    """Check, then prepare, cheapest first, so that a mistake costs seconds rather than a training run.

    1. ``checked_recipe``: the recipe, hardware, output directory and Hub token (no data read yet);
    2. the objective (``training.objectives``, picked here once) reads its data: rows, tokenizer and
       the model's architecture, without weights; a dry run reports here and returns None;
    3. its ``trainer_args`` start accelerate's process state, so only after them does the main
       process alone touch the output directory (the others wait);
    4. the weights load and the trainer is built, last because they cost the most.
    """
    stopwatch = stopwatch or Stopwatch()
    with stopwatch.phase("checks and data"):
        recipe = checked_recipe(context)
        objective = objective_for(recipe)
        inputs = objective.load_inputs(recipe, report=context.dry_run)
        train_rows, eval_rows, tokenizer, data_notes, data_sources = inputs
    if context.dry_run:
        return None
    out = Path(recipe.training.output_dir)
    args = objective.trainer_args(recipe, out)
    if args.process_index == 0:
        print("\n".join(data_notes))  # the form the rows were read in, detected or named
    from dpo_recipe.training.base_cache import default_cache

    cache = default_cache()
    try:
        is_main_process = claim_output_dir(context, out)
        with stopwatch.phase("model"):
            model = load_policy(recipe)  # the base, or base + model.init_adapter
        with stopwatch.phase("tokenizing and reference pass"):
            trainer = objective.build_trainer(recipe, args, model, tokenizer, train_rows, out, cache)
        if recipe.eval.steps is not None:  # the same held-out rows at every evaluation
            rows = sample_rows(eval_rows, recipe.eval.subset, recipe.data.seed)
            evaluate = objective.step_evaluator(trainer, tokenizer, rows, recipe, cache)
            watch_held_out(trainer, evaluate, recipe, len(rows))
        record_run(trainer, recipe)  # the recipe as the trackers' run config
    except (KeyboardInterrupt, Terminated) as stop:  # in the reference pass: the folder is claimed, say how to go on
        release_lock(out)
        raise interrupted(stop, out, context.resume_command(out), stopwatch.current) from None
    except BaseException:  # the folder is the next run's (or --resume's) again
        release_lock(out)
        raise
    return TrainingRun(
        context,
        recipe,
        objective,
        out,
        train_rows,
        eval_rows,
        tokenizer,
        trainer,
        is_main_process,
        stopwatch,
        cache,
        data_sources,
    )


def checked_recipe(context: RunContext) -> Recipe:
    """The recipe, after every check that needs neither data nor weights. Past reading the recipe (a
    download with ``--from-hub``), the network calls (the Hub token, pinning the dataset commit) come
    after the local checks."""
    recipe = context.load_recipe()
    # one folder: transformers would expand "~" for the checkpoints while the artifacts went to a literal "./~"
    recipe.training.output_dir = str(Path(recipe.training.output_dir).expanduser())
    if context.from_hub and first_process():  # what a stranger's recipe will load, before it loads
        print(fetched_summary(recipe, f"--from-hub {context.from_hub}"))
    check_hardware(recipe.model, recipe.training.precision)
    check_launch()
    cache_root()  # an empty DPO_RECIPE_CACHE, or one naming a file, is refused before anything runs
    check_trackers(recipe.training)  # a tracker's missing package, before anything loads
    if recipe.eval.judge:  # an endpoint's unset key variable, a reward model that is a classifier
        from dpo_recipe.judges import check_judge

        check_judge(recipe.eval.judge, recipe.judge)
    if not context.dry_run:
        out = Path(recipe.training.output_dir)
        check_output_dir(out, resume=context.resume, overwrite=context.overwrite, first=first_process())
    if recipe.hub.push and not context.dry_run:  # a missing or read-only token must not cost a training run
        from dpo_recipe.utils.hub import writable_token

        writable_token(recipe.hub.repo_id)
    recipe.data = pin_hub_revision(recipe.data)
    return recipe


def claim_output_dir(context: RunContext, out: Path) -> bool:
    """Prepare ``out`` on the main process while the others wait; True on the main process."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        prepare_output_dir(out, context.resume_command(out), overwrite=context.overwrite)
    state.wait_for_everyone()
    return state.is_main_process


def train(training: TrainingRun) -> None:
    """Run the trainer (from the newest complete checkpoint with ``--resume``); SIGINT / SIGTERM save a
    checkpoint and raise ``RunInterrupted``, a failed write raises ``SaveError``; both say how to resume."""
    from dpo_recipe.training.callbacks import signal_callback

    trainer, out = training.trainer, training.out
    resume_command = training.context.resume_command(out)
    checkpoint = newest_complete_checkpoint(out) if training.context.resume else None
    if training.context.resume and checkpoint is None and training.is_main_process:
        print(f"--resume: no complete checkpoint in {out / CHECKPOINTS} yet; training from the first step.")
    stop = signal_callback(trainer)
    try:
        with write_failures_explained(out, resume_command), training.stopwatch.phase("training"):
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused a file that would run code
        raise RecipeError(
            f"--resume: a file in {checkpoint} is not a plain checkpoint and was not loaded, because unpickling it "
            f"could run code ({str(exc).splitlines()[0]}). Delete {checkpoint} to resume from the checkpoint "
            "before it, or start over with --overwrite."
        ) from None
    finally:
        stop.restore()
    if stop.received is not None:
        raise RunInterrupted(
            f"Training stopped on {signal.Signals(stop.received).name} after step {trainer.state.global_step}; "
            f"its checkpoint is in {newest_complete_checkpoint(out)}. Nothing is lost: continue with {resume_command}",
            stop.received,
        )
    training.early_stopping = keep_best_adapter(trainer)  # the best evaluation's adapter is the run's


def judge_held_out(training: TrainingRun, report: dict[str, Any] | None) -> JudgeError | None:
    """``eval.judge``: the held-out answers judged tuned against base into ``report["judged"]`` (main process,
    inside the trainer's autocast, as the answers were written). A judge that fails (an endpoint down) is
    returned, not raised: the run is saved first, and its replies so far stay in the journal beside the report."""
    from dpo_recipe.evaluation.judged import answer_judge, journal_path, judge_report

    recipe, trainer = training.recipe, training.trainer
    if not (recipe.eval.judge and report and report.get("generations")):
        return None
    try:
        with training.stopwatch.phase("judging"), trainer.accelerator.autocast():
            judge = answer_judge(
                recipe.eval.judge,
                recipe.judge,
                model=trainer.accelerator.unwrap_model(trainer.model),
                tokenizer=training.tokenizer,
                beta=recipe.training.beta,
                max_length=recipe.training.max_length,
                cache=training.cache,
                journal=journal_path(training.out / "eval_report.json"),
                adapter=str(training.out),
            )
            judge_report(report, training.eval_rows, judge)
    except JudgeError as failure:
        return failure
    return None


def evaluate_and_save(training: TrainingRun, started: float) -> dict[str, Any] | None:
    """Score the held-out pairs (every rank scores a shard), then save, print and push on the main process."""
    recipe, trainer, out, context = training.recipe, training.trainer, training.out, training.context
    training.cache.hold_writes()  # the held-out entries go to disk after the run's artifacts
    objective = training.objective
    report = None  # off the main process, or without held-out rows
    if training.eval_rows:
        rows, cache = training.eval_rows, training.cache
        report = objective.held_out_report(trainer, training.tokenizer, rows, recipe, cache, training.stopwatch)
    digests = gather_adapter_digests(trainer)  # every rank reports its adapter digest before the others return
    if not training.is_main_process:
        training.cache.write_held()
        return None
    judge_failure = judge_held_out(training, report)
    metrics = collect_metrics(recipe, trainer, report, len(training.train_rows), digests)  # the whole run's
    metrics["train"].update(objective.training_metrics(training.train_rows, trainer.state.log_history))
    if training.early_stopping:
        metrics["train"]["early_stopping"] = training.early_stopping
    watched = watch_metrics(trainer)
    if watched:
        metrics["eval_steps"] = watched
    metrics["data"] = {"sources": training.data_sources}
    metrics["train"]["end_to_end_s"] = round(time.perf_counter() - started, 2)
    metrics["timings_s"] = training.stopwatch.rounded()  # saving, timed below, is not in its own file
    overall = metrics["eval"].get("overall")
    held_out = objective.summary_numbers(overall) if overall else None
    metrics["chain"] = training_chain(recipe, metrics, context.recipe_name, objective.unit, held_out)
    with write_failures_explained(out, context.resume_command(out)), training.stopwatch.phase("saving"):
        save_artifacts(
            recipe,
            trainer,
            training.tokenizer,
            metrics,
            report,
            out,
            recipe_name=context.recipe_name,
            command=context.rerun_command(),
        )
    training.cache.write_held()
    close_trackers(trainer, metrics)  # the final report as the trackers' run summary
    print(summary_line(metrics, out, objective.unit, held_out))
    if report and report.get("judged"):
        from dpo_recipe.evaluation.report import judged_line

        print(judged_line(report["judged"]))
    if watched:
        print(held_out_steps_line(watched, metrics["train"]["runtime_s"], objective.unit))
    if training.early_stopping:
        print(early_stopping_sentence(training.early_stopping))
    print(training.stopwatch.line(highlight="training"), training.cache.summary())
    if judge_failure is not None:  # the run is saved; what the judge said stops it before a push
        held_out = f" --max-pairs {recipe.data.max_eval_pairs}" if recipe.data.max_eval_pairs else ""
        raise JudgeError(
            f"{judge_failure} The run itself is saved in {out} (adapter, metrics.json, card), without the judged win "
            f"rate; judge its answers with: dpo-recipe eval --adapter {out}{held_out} --judge {recipe.eval.judge} "
            f"--judge-recipe {out / 'recipe.yaml'} --out {out / 'eval_report.json'}"
        )
    if recipe.hub.push:
        from dpo_recipe.hub.publish import push_dir

        pushed = push_dir(out, recipe.hub.repo_id, private=recipe.hub.private, revision=recipe.hub.revision)
        print(f"Pushed and verified {pushed.files} files: {pushed.url} (commit {pushed.commit})")
    return metrics


if __name__ == "__main__":
    main()
