"""``dpo-recipe compare RUN_DIR...``: finished runs side by side, from the files they left.

A sweep, an SFT → DPO chain or a few hand-made variants end as folders with a ``recipe.yaml`` and a
``metrics.json`` each; to say which did better one needs what differed between their recipes next to
what each measured. ``compare_runs`` reads both files of every run (nothing is loaded or recomputed) and
gives one row a run: the recipe keys whose values are not the same in all of them (the output folder
aside: it always differs), held-out reward accuracy with its 95 % interval (KTO's on rows; an SFT run has
none) and loss, the judged win rate of its answers against the base's where it has one (``eval.judge``), the
tuned model's answer checks, training and whole-run seconds, and peak memory. Given a judge
(``compare --judge``), every run's held-out answers are also judged against the first run's, question by
question (``evaluation.judged.judge_runs``: the outcomes and Wilson interval of a judged eval), so runs are ranked
by what they answer as well as by how they separate given answers. ``markdown_table`` and ``write_csv`` render
it. A folder that is not a finished run, an unreadable file
or the same run given twice is refused in one paragraph that names each.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dpo_recipe.config.schema import Recipe
from dpo_recipe.errors import DpoRecipeError, JudgeError
from dpo_recipe.judges.base import Judge
from dpo_recipe.utils.files import write_file_atomically

ALWAYS_DIFFERENT = ("training.output_dir",)  # each run's own folder: the run column names it
ANSWER_CHECKS = ("japanese_share", "names_topic", "mostly_loop", "ends_sentence")  # of the tuned model's answers


@dataclass
class Comparison:
    """One row a run, in the order given; ``keys`` are the recipe keys that differ between them."""

    runs: list[Path]
    keys: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    answers: list[Any] = field(default_factory=list)  # each run's held-out ``generations``, for judge_against_first


def compare_runs(run_dirs: list[Path]) -> Comparison:
    """Read every run's ``recipe.yaml`` and ``metrics.json``; refuse what is not a finished run (all problems at
    once, each naming its folder or file) or a folder given twice."""
    problems, seen, recipes, metrics = [], {}, [], []
    for given in run_dirs:
        run = Path(given).expanduser()
        where = run.resolve() if run.exists() else run
        if where in seen:
            problems.append(f"{given}: given twice (the same folder as {seen[where]}); name each run once")
            continue
        seen[where] = given
        try:
            recipes.append(_recipe_keys(run))
            metrics.append(_metrics(run))
        except DpoRecipeError as exc:
            problems.append(str(exc))
    if not run_dirs:
        problems.append("no run given; name training output folders")
    if problems:
        raise DpoRecipeError(f"compare: {'; '.join(problems)}.")
    keys = [key for key in recipes[0] if key not in ALWAYS_DIFFERENT and len({_shown(r.get(key)) for r in recipes}) > 1]
    keys += sorted({k for r in recipes for k in r} - set(recipes[0]) - set(ALWAYS_DIFFERENT))  # newer keys
    comparison = Comparison([Path(r) for r in run_dirs], keys)
    for run, recipe, measured in zip(comparison.runs, recipes, metrics, strict=True):
        comparison.rows.append(_row(run, recipe, measured, keys))
        comparison.answers.append(measured["eval"].get("generations"))
    return comparison


def check_compare_judge(spec: str) -> None:
    """``implicit`` is no judge between runs: each adapter's own reward favours its own answers (measured in
    docs/evaluation.md, "On-policy rounds"), so whose reward would rank them decides the ranking."""
    if spec.strip() == "implicit":
        raise JudgeError(
            "compare --judge implicit: the implicit reward is one adapter's own, and an adapter rates its own "
            "answers above other runs' whatever they say, so the ranking would follow the adapter chosen. Compare "
            "with rules, reward-model:PATH_OR_ID or openai:URL; 'dpo-recipe eval --adapter RUN --judge implicit' "
            "judges one run against its base."
        )


def judge_against_first(comparison: Comparison, judge: Judge) -> Comparison:
    """Each run's ``versus_first_*`` columns: its held-out answers judged against the first run's
    (``judged.judge_runs``); blank for the first run, and for a run that shares no held-out question with it.
    A step after ``compare_runs``, so runs it refuses never cost a judge's loading or an endpoint's call."""
    from dpo_recipe.evaluation.judged import judge_runs

    first = comparison.answers[0] if comparison.answers else None
    for number, (row, answers) in enumerate(zip(comparison.rows, comparison.answers, strict=True)):
        judged = judge_runs(judge, first, answers) if number else None
        ci = _interval((judged or {}).get("win_rate_ci95"))
        row.update(
            versus_first_judge=judge.spec,
            versus_first_questions=(judged or {}).get("questions"),
            versus_first_win_rate=(judged or {}).get("win_rate"),
            versus_first_ci95_low=ci[0],
            versus_first_ci95_high=ci[1],
        )
    return comparison


def _recipe_keys(run: Path) -> dict[str, Any]:
    """``SECTION.KEY`` → value of the run's ``recipe.yaml``, a key it lacks (written before that key existed)
    at its default: what the run trained with."""
    if not run.is_dir():
        raise DpoRecipeError(f"{run}: {'no such folder' if not run.exists() else 'not a folder'}")
    path = run / "recipe.yaml"
    links = [f.name for f in (path, run / "metrics.json") if f.is_symlink()]
    if links:  # a downloaded folder's link would show the file it points to (a key, a config) in the table
        raise DpoRecipeError(
            f"{run}: its {' and '.join(links)} {'is a link' if len(links) == 1 else 'are links'}, not the run's "
            "own file"
        )
    if not (run / "metrics.json").is_file() or not path.is_file():
        stages = sorted(p.name for p in run.glob("stage-*") if (p / "metrics.json").is_file())
        hint = f" (it holds the stages {', '.join(stages)} of a --then chain: compare those)" if stages else ""
        unfinished = " an unfinished run (resume it first)" if (run / "INCOMPLETE").exists() else " not a finished run"
        raise DpoRecipeError(
            f"{run}:{unfinished}, it has no {'metrics.json' if path.is_file() else 'recipe.yaml'}{hint}"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DpoRecipeError(f"{path}: cannot be read as a recipe ({_reason(exc)})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values() if v is not None):
        raise DpoRecipeError(f"{path}: not a recipe (a mapping of sections)")
    flat = {f"{section}.{key}": value for section, keys in Recipe().to_dict().items() for key, value in keys.items()}
    for section, keys in raw.items():
        flat.update({f"{section}.{key}": value for key, value in (keys or {}).items()})
    return flat


def _metrics(run: Path) -> dict[str, Any]:
    path = run / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DpoRecipeError(f"{path}: cannot be read ({_reason(exc)})") from None
    sections = isinstance(metrics, dict) and all(isinstance(metrics.get(k), dict) for k in ("train", "eval"))
    if not sections:
        raise DpoRecipeError(f"{path}: not a run's metrics (no train and eval sections)")
    return metrics


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def _interval(value: Any) -> list[float | None]:
    """A ``[low, high]`` the metrics hold, or two blanks where it is not one."""
    whole = isinstance(value, list) and len(value) == 2 and all(_number(v) is not None for v in value)
    return value if whole else [None, None]


def _row(run: Path, recipe: dict[str, Any], metrics: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    overall = metrics["eval"].get("overall") or {}
    ci = _interval(overall.get("reward_accuracy_ci95"))
    judged = metrics["eval"].get("judged") if isinstance(metrics["eval"].get("judged"), dict) else {}
    judged_ci = _interval(judged.get("win_rate_ci95"))
    tuned = (metrics["eval"].get("answer_checks") or {}).get("tuned") or {}
    train, memory = metrics["train"], metrics.get("memory") or {}
    stopping = train.get("early_stopping") if isinstance(train.get("early_stopping"), dict) else {}
    return {
        "run": run.name or str(run),
        "path": str(run),
        **{key: recipe.get(key) for key in keys},
        "objective": train.get("objective", "dpo"),
        "held_out": _number(overall.get("pairs", overall.get("rows"))),
        "reward_accuracy": _number(overall.get("reward_accuracy")),
        "ci95_low": ci[0],
        "ci95_high": ci[1],
        "held_out_loss": _number(overall.get("loss")),
        **{f"answers_{check}": _number(tuned.get(check)) for check in ANSWER_CHECKS},
        "judge": judged.get("judge") if isinstance(judged.get("judge"), str) else None,
        "judged_questions": _number(judged.get("questions")),
        "judged_win_rate": _number(judged.get("win_rate")),
        "judged_ci95_low": judged_ci[0],
        "judged_ci95_high": judged_ci[1],
        "steps": _number(train.get("steps")),
        "adapter_step": _number(stopping.get("adapter_step")),
        "train_s": _number(train.get("runtime_s")),
        "run_s": _number(train.get("end_to_end_s")),
        "peak_rss_mb": _number(memory.get("peak_rss_mb")),
        "peak_cuda_mb": _number(memory.get("peak_cuda_mb")),
    }


def _shown(value: Any) -> str:
    """A recipe value as one line: YAML's flow style (``[q_proj, v_proj]``, ``null``)."""
    if isinstance(value, str):
        return value
    return (
        yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=math.inf)
        .strip()
        .removesuffix("...")
        .strip()
    )


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: no pipe or line break breaks the row."""
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split())


def _format(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def markdown_table(comparison: Comparison) -> str:
    """The comparison as a Markdown table: recipe keys that differ, then the measured columns; the judged win rate
    against the base's answers where a run has one (``eval.judge``), and against the first run's where the
    comparison was judged (``judge_against_first``)."""
    judged = any(row["judged_win_rate"] is not None for row in comparison.rows)
    versus = "versus_first_judge" in comparison.rows[0] if comparison.rows else False
    header = [
        "run",
        *comparison.keys,
        "held-out reward acc. (95% CI)",
        *(["judged win rate vs base (95% CI)"] if judged else []),
        *(
            [f"win rate vs {comparison.rows[0]['run']} (95% CI), {comparison.rows[0]['versus_first_judge']}"]
            if versus
            else []
        ),
        "held-out loss",
        "answers: Japanese / topic / mostly a loop / ends a sentence",
        "steps",
        "train s",
        "run s",
        "peak RSS MB",
    ]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + " --- |" * len(header)]
    for row in comparison.rows:
        accuracy = _share(row["reward_accuracy"], row["ci95_low"], row["ci95_high"], row["held_out"])
        answers = " / ".join(_format(row[f"answers_{c}"], ".0%") for c in ANSWER_CHECKS)
        steps = _format(row["steps"], ".0f")
        if row["adapter_step"] is not None:
            steps += f" (adapter: step {row['adapter_step']:.0f})"
        memory = _format(row["peak_rss_mb"], ".0f")
        if row["peak_cuda_mb"] is not None:
            memory += f" (CUDA {row['peak_cuda_mb']:.0f})"
        cells = [
            row["run"],
            *(_shown(row[key]) for key in comparison.keys),
            accuracy,
            *([_judged(row)] if judged else []),
            *([_versus_first(row)] if versus else []),
            _format(row["held_out_loss"], ".4f"),
            answers,
            steps,
            _format(row["train_s"], ".0f"),
            _format(row["run_s"], ".0f"),
            memory,
        ]
        lines.append("| " + " | ".join(_cell(str(c)) for c in cells) + " |")
    if not comparison.keys:
        lines.append("\nThe runs' recipes are the same (but for their output folders).")
    return "\n".join(lines) + "\n"


def _share(value: float | None, low: float | None, high: float | None, of: float | None) -> str:
    """``0.750 (0.301–0.954) on 4``: a share, its 95 % interval and what it is a share of, as far as known."""
    if value is None:
        return "–"
    return (
        f"{value:.3f}" + ("" if low is None else f" ({low:.3f}–{high:.3f})") + ("" if of is None else f" on {of:.0f}")
    )


def _judged(row: dict[str, Any]) -> str:
    """The judged win rate's cell: ``_share`` and the judge (``0.750 (0.301–0.954) on 4, rules``)."""
    text = _share(row["judged_win_rate"], row["judged_ci95_low"], row["judged_ci95_high"], row["judged_questions"])
    return text + (f", {row['judge']}" if row["judge"] and row["judged_win_rate"] is not None else "")


def _versus_first(row: dict[str, Any]) -> str:
    return _share(
        row["versus_first_win_rate"],
        row["versus_first_ci95_low"],
        row["versus_first_ci95_high"],
        row["versus_first_questions"],
    )


def csv_text(comparison: Comparison) -> str:
    """One CSV row a run: every column of ``_row`` (numbers unformatted, recipe values in YAML's flow style)."""
    columns = list(comparison.rows[0]) if comparison.rows else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in comparison.rows:
        writer.writerow([_shown(row[c]) if c in comparison.keys else "" if row[c] is None else row[c] for c in columns])
    return buffer.getvalue()


def write_csv(comparison: Comparison, path: Path) -> Path:
    """The CSV at ``path``, written whole or not at all; never into a compared run's folder (its files are the
    run's) and never onto a folder."""
    path = Path(path).expanduser()
    inside = [run for run in comparison.runs if path.resolve().is_relative_to(run.expanduser().resolve())]
    if inside:
        raise DpoRecipeError(
            f"compare --csv {path}: inside the run {inside[0]}, whose files are the run's; write it elsewhere."
        )
    if path.is_dir():
        raise DpoRecipeError(f"compare --csv {path}: a folder; give a file name, e.g. {path / 'compare.csv'}.")
    text = csv_text(comparison)
    try:
        return write_file_atomically(path, lambda staging: staging.write_text(text, encoding="utf-8"))
    except OSError as exc:  # read-only, full, a parent that is a file: nothing half-written is left
        raise DpoRecipeError(
            f"compare --csv {path}: cannot be written ({_reason(exc)}); the table above is whole."
        ) from None
