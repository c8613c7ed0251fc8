"""``dpo-recipe iterate``: on-policy rounds. Round 0 is the recipe's own training (or a finished run, ``--from
RUN``); each next round samples the last adapter on the recipe's training prompts (``onpolicy.sampling``), judges
the answers into pairs (``onpolicy.pairing``), and trains that adapter further on them, mixed with a share of the
original training pairs (``iterate.replay``).

    dpo-recipe iterate --recipe tiny-ja --rounds 2 --judge rules --out outputs/rounds

Every round is an ordinary training run, chained by ``train.chained_runs`` (the mechanism of ``--then``): its own
folder ``OUT/round-K`` (adapter, metrics, card), its own lock and resume, and ``--resume`` keeps finished rounds.
A round k >= 1 trains round k-1's adapter further (``model.init_adapter`` with ``lora.train_init_adapter``: one
whole adapter for the bare base every round, so no chain of merged adapters builds up), keeping the recipe's
loss (RPO keeps its NLL term); its reference is ``iterate.reference``: the first model (the bare base, adapters
off: RLHFlow's advice; held-out numbers stay comparable across rounds) or the last policy (round k-1's adapter,
as DICE and SPIN take it). The data of a round goes through ``data.sources``: its judged pairs (``OUT/data/
round-K/pairs.jsonl``, the ranked form) and round 0's own training and held-out pairs, written once to
``OUT/data/original`` exactly as round 0 read them, so every round is scored on round 0's held-out pairs and no
held-out pair ever trains. Each round's held-out report (reward accuracy, the answer checks) is its run's own.
At the end, ``OUT/rounds.md`` / ``rounds.csv`` / ``rounds.png`` hold the rounds side by side, with the rules
judge's win rate of each round's held-out answers over round 0's (``dpo-recipe compare --judge rules`` of the
round folders, whose table is printed too and written to ``OUT/compare.csv``), and the last round's card shows
them.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dpo_recipe.config.schema import Recipe
from dpo_recipe.config.vocabulary import split_judge_spec
from dpo_recipe.errors import RecipeError
from dpo_recipe.evaluation.compare import compare_runs, judge_against_first, markdown_table, write_csv
from dpo_recipe.judges.rules import RulesJudge
from dpo_recipe.training.objectives import objective_for
from dpo_recipe.training.run_context import RESUME_AND_OVERWRITE, RunContext
from dpo_recipe.training.run_dir import check_no_links, check_real_folder, is_finished
from dpo_recipe.utils.files import write_file_atomically

MARKER = "iterate.json"  # what an iterate output folder holds first: recipe, judge, rounds


@dataclass
class Rounds:
    """One ``iterate`` invocation: the checked recipe, the judge, the folders."""

    context: RunContext
    recipe: Recipe
    judge: str
    rounds: int
    root: Path
    start: Path | None  # --from RUN: round 0 is that finished run

    @property
    def data(self) -> Path:
        return self.root / "data"

    def round_dir(self, k: int) -> Path:
        return self.start if k == 0 and self.start else self.root / f"round-{k}"


def run_iterate(
    recipe: str,
    rounds: int | None = None,
    *,
    judge: str | None = None,
    start: str | None = None,
    output_dir: str | None = None,
    overrides: tuple[str, ...] = (),
    resume: bool = False,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Train round 0 (unless ``start``) and ``rounds`` on-policy rounds; write and return the rounds table's rows.
    Everything that can be wrong (recipe, judge, ``--from`` run, output folder) is refused before round 0 trains."""
    plan = checked_plan(recipe, rounds, judge, start, output_dir, overrides, resume=resume, overwrite=overwrite)
    from dpo_recipe.train import ChainedRun, chained_runs

    plan.root.mkdir(parents=True, exist_ok=True)
    marker = {**run_identity(recipe, plan.judge, plan.start, overrides), "rounds": plan.rounds}
    write_file_atomically(plan.root / MARKER, lambda staging: staging.write_text(json.dumps(marker) + "\n"))
    write_original(plan)  # round 0's pairs as it reads them, before it trains: a data mistake costs no training
    stages = [
        ChainedRun(recipe, plan.round_dir(k), f"round {k}", lambda adapter, k=k: prepare_round(plan, k, adapter))
        for k in range(0 if plan.start is None else 1, plan.rounds + 1)
    ]
    trained = chained_runs(plan.context, stages, adapter=plan.start)
    metrics = ([read_metrics(plan.start)] if plan.start else []) + trained
    comparison = compare_runs([plan.round_dir(k) for k in range(len(metrics))])
    judge_against_first(comparison, RulesJudge(plan.recipe.judge))
    rows = [round_row(plan, k, m, versus) for k, (m, versus) in enumerate(zip(metrics, comparison.rows, strict=True))]
    write_rounds(plan, rows)
    print("\n" + markdown_table(comparison) + f"\nCompared: {write_csv(comparison, plan.root / 'compare.csv')}")
    return rows


def checked_plan(
    recipe: str,
    rounds: int | None,
    judge: str | None,
    start: str | None,
    output_dir: str | None,
    overrides: tuple[str, ...],
    *,
    resume: bool,
    overwrite: bool,
) -> Rounds:
    """The checks of the whole run, cheapest first, before anything trains."""
    from dpo_recipe.judges import check_judge

    if resume and overwrite:
        raise RecipeError(RESUME_AND_OVERWRITE)
    if output_dir is not None and not output_dir.strip():
        raise RecipeError("--out is empty (an unset variable?); name the folder the rounds should go to.")
    items = (*overrides, *((f"iterate.rounds={rounds}",) if rounds is not None else ()))
    context = RunContext(recipe=recipe, overrides=items, output_dir=output_dir, resume=resume, overwrite=overwrite)
    loaded = context.load_recipe()
    if objective_for(loaded).unit != "pairs":  # what one training example of the objective is
        raise RecipeError(
            f"iterate makes pairs, which objective {loaded.training.objective} does not train: use a recipe with "
            "training.objective dpo (any loss_type)."
        )
    if loaded.model.init_adapter and not loaded.lora.train_init_adapter:
        raise RecipeError(
            "iterate trains round 0's adapter further every round, on the bare base; this recipe merges "
            f"model.init_adapter ({loaded.model.init_adapter}) into the base instead, which the later rounds would "
            "drop. Set lora.train_init_adapter: true (round 0 then trains that adapter further too), or remove "
            "model.init_adapter."
        )
    spec = judge or loaded.judge.kind
    try:
        split_judge_spec(spec)
    except ValueError as exc:
        raise RecipeError(f"--judge: {exc}.") from None
    check_judge(spec, loaded.judge)
    root = Path(loaded.training.output_dir).expanduser()
    begin = _checked_start(start, loaded) if start else None
    _refuse_foreign_root(root, resume=resume, overwrite=overwrite)
    if resume and (root / MARKER).is_file():
        earlier = json.loads((root / MARKER).read_text(encoding="utf-8"))
        asked = run_identity(recipe, spec, begin, overrides)
        changed = [
            f"{key} {earlier.get(key)!r} then, {value!r} now"
            for key, value in asked.items()
            if earlier.get(key) != value
        ]
        if changed:
            raise RecipeError(
                f"--resume: {root} holds rounds of another recipe, judge, start or --set items ({'; '.join(changed)}); "
                "going on would mix them. Resume with the same --recipe, --judge, --from and --set, or start over with "
                "--overwrite."
            )
    context = replace(context, output_dir=str(root))
    return Rounds(context, loaded, spec, loaded.iterate.rounds, root, begin)


def run_identity(recipe: str, judge: str, start: Path | None, overrides: tuple[str, ...]) -> dict[str, Any]:
    """What an iterate run's rounds depend on, beyond their number: ``--resume`` must ask for the same."""
    return {"recipe": recipe, "judge": judge, "from": str(start or ""), "settings": list(overrides)}


def _checked_start(start: str, recipe: Recipe) -> Path:
    """``--from RUN``: a finished training run whose adapter can be trained further."""
    from dpo_recipe.config.loader import load_recipe

    run = Path(start).expanduser()
    if not is_finished(run) or not (run / "adapter_config.json").is_file():
        raise RecipeError(
            f"--from {start}: not a finished training run (its folder holds no metrics.json and adapter beside no "
            "INCOMPLETE file). Give the output directory of a finished dpo-recipe train run."
        )
    recorded = load_recipe(str(run / "recipe.yaml")) if (run / "recipe.yaml").is_file() else None
    if recorded and recorded.model.init_adapter and not recorded.lora.train_init_adapter:
        raise RecipeError(
            f"--from {start}: that adapter was trained on a base with model.init_adapter merged into it, so trained "
            "further on the bare base it would lose that adapter. Start from a run without a merged init adapter."
        )
    return run


def _refuse_foreign_root(root: Path, *, resume: bool, overwrite: bool) -> None:
    """The output folder is new, empty, or an earlier iterate's (``--resume`` / ``--overwrite``): never a folder
    of the user's files, a file, a link, or a folder with a link inside (its samples would be written through
    it)."""
    check_real_folder(root, "iterate --out", "--out")
    if not root.is_dir() or not any(root.iterdir()):
        return
    if not (root / MARKER).is_file():
        raise RecipeError(
            f"iterate --out {root} holds files iterate did not write; it writes only into a new or empty folder or "
            "an earlier iterate's. Choose another --out."
        )
    check_no_links(root, "--out")
    if not (resume or overwrite):
        raise RecipeError(
            f"{root} already holds an iterate run. Continue it with --resume (finished rounds are kept), or start "
            "over with --overwrite."
        )
    if overwrite:
        import shutil

        shutil.rmtree(root / "data", ignore_errors=True)  # our samples and pairs; the rounds are replaced as they train


# ---------------------------------------------------------------------------- one round's data


def prepare_round(plan: Rounds, k: int, adapter: Path) -> tuple[str, ...]:
    """Round ``k``'s pairs from ``adapter``'s answers, and the ``--set`` items that train it on them."""
    from dpo_recipe.data.prompts import training_prompts
    from dpo_recipe.onpolicy.pairing import run_judge
    from dpo_recipe.onpolicy.sampling import Sampling, sample

    recipe, folder = plan.recipe, plan.data / f"round-{k}"
    folder.mkdir(parents=True, exist_ok=True)
    original = write_original(plan)
    samples, pairs, report = folder / "samples.jsonl", folder / "pairs.jsonl", folder / "judge.json"
    timings: dict[str, float] = {}
    if not samples.is_file():
        started = time.perf_counter()
        prompts = training_prompts(recipe.data, limit=recipe.iterate.max_prompts)
        model, tokenizer = _policy(adapter)
        settings = Sampling.from_recipe(recipe, seed=recipe.iterate.seed + k)
        sample(model, tokenizer, prompts.rows, settings, samples, {"adapter": str(adapter), "round": k})
        del model
        timings["sampling_s"] = round(time.perf_counter() - started, 2)
    if not pairs.is_file() or not report.is_file():
        started = time.perf_counter()
        summary = run_judge(samples, pairs, recipe.judge, plan.judge, overwrite=True)
        timings["judging_s"] = round(time.perf_counter() - started, 2)
        text = json.dumps({**summary.as_dict(), **timings}, ensure_ascii=False, indent=2) + "\n"
        write_file_atomically(report, lambda staging: staging.write_text(text, encoding="utf-8"))
    judged = json.loads(report.read_text(encoding="utf-8"))
    print(f"round {k}: {judged['judge']}: {judged['pairs']} pairs from {judged['prompts']} prompts")
    replayed = max(1, round(judged["pairs"] * recipe.iterate.replay / (1 - recipe.iterate.replay)))
    fraction = min(1.0, replayed / original.training_rows)
    sources = [
        {"source": str(pairs), "form": "ranked", "split": "train", **RANKED_KEYS},
        {"source": str(original.folder), "form": "standard", "split": "train", "fraction": round(fraction, 6)},
    ]
    reference = "base" if recipe.iterate.reference == "first_model" else "start"
    return (
        f"model.init_adapter={adapter}",
        "lora.train_init_adapter=true",
        f"lora.init_adapter_reference={reference}",
        f"data.sources={json.dumps(sources, ensure_ascii=False)}",
        "data.train_split=train",
        "data.test_split=test",
        "data.max_train_pairs=null",
        "data.max_eval_pairs=null",
    )


# the pairs file's ranked columns, named in its mixture entry so a recipe's own ranked_* keys cannot misread it
RANKED_KEYS = {
    "ranked_column": "responses",
    "ranked_text_field": "text",
    "ranked_score_field": "score",
    "ranked_better": "higher",
    "ranked_pairs": "best_vs_worst",
}


@dataclass
class Original:
    folder: Path
    training_rows: int


def write_original(plan: Rounds) -> Original:
    """Round 0's training and held-out pairs, exactly as its training read them (``load_preference_splits``:
    the rows after ``data.max_train_pairs`` / ``max_eval_pairs``), saved once as a train / test dataset folder:
    the replayed share comes from its train split, every round's held-out report from its test split."""
    import datasets

    folder = plan.data / "original"
    if not (folder / "dataset_dict.json").is_file():
        from dpo_recipe.data.sources import load_preference_splits
        from dpo_recipe.utils.files import write_dir_atomically

        train, held_out, _ = load_preference_splits(plan.recipe.data)  # refuses data with no held-out pair
        parts = datasets.DatasetDict(
            {name: datasets.Dataset.from_list(rows) for name, rows in (("train", train), ("test", held_out))}
        )
        write_dir_atomically(folder, lambda staging: parts.save_to_disk(str(staging)))
    return Original(folder, datasets.load_from_disk(str(folder))["train"].num_rows)


def _policy(adapter: Path) -> tuple[Any, Any]:
    from dpo_recipe.models.adapters import adapter_base, load_adapter_model

    adapter_dir, _, section = adapter_base(str(adapter))
    return load_adapter_model(adapter_dir, section)


# ---------------------------------------------------------------------------- the rounds table


def read_metrics(run: Path) -> dict[str, Any]:
    return json.loads((run / "metrics.json").read_text(encoding="utf-8"))


def round_row(plan: Rounds, k: int, metrics: dict[str, Any], versus: dict[str, Any]) -> dict[str, Any]:
    """One row of the rounds table: what round ``k`` trained on and how its held-out numbers came out; ``versus``:
    its row of the rounds' comparison (``compare_runs`` with the rules judge: its answers against round 0's)."""
    overall = metrics["eval"].get("overall", {})
    checks = (metrics["eval"].get("answer_checks") or {}).get("tuned", {})
    judged = {}
    if k and (plan.data / f"round-{k}" / "judge.json").is_file():
        judged = json.loads((plan.data / f"round-{k}" / "judge.json").read_text(encoding="utf-8"))
    won = versus["versus_first_win_rate"]
    train_s = metrics["train"].get("end_to_end_s") or 0.0
    return {
        "round": k,
        "output_dir": str(plan.round_dir(k)),
        "judge": judged.get("judge", "" if k else "(the recipe's data)"),
        "pairs": judged.get("pairs", metrics["train"].get("pairs")),
        "dropped": (
            sum(judged[key] for key in ("ties", "under_margin", "no_answer_passes", "unreadable")) if judged else None
        ),
        "training_pairs": metrics["train"].get("pairs"),
        "chosen_chars": judged.get("chosen_chars"),
        "rejected_chars": judged.get("rejected_chars"),
        "reward_accuracy": overall.get("reward_accuracy"),
        "reward_accuracy_ci95": overall.get("reward_accuracy_ci95"),
        "held_out_pairs": overall.get("pairs"),
        "answers": checks.get("answers"),
        "mostly_loop": checks.get("mostly_loop"),
        "repetition": checks.get("repetition"),
        "names_topic": checks.get("names_topic"),
        "ends_sentence": checks.get("ends_sentence"),
        "win_rate_vs_round_0": won,
        "win_rate_ci95": None if won is None else [versus["versus_first_ci95_low"], versus["versus_first_ci95_high"]],
        "seconds": round(judged.get("sampling_s", 0.0) + judged.get("judging_s", 0.0) + train_s, 1),
    }


COLUMNS = (
    ("round", "round", None),
    ("judge", "judge", None),
    ("pairs", "pairs kept", None),
    ("dropped", "prompts dropped", None),
    ("training_pairs", "pairs trained", None),
    ("chosen_chars", "chosen chars", 0),
    ("rejected_chars", "rejected chars", 0),
    ("reward_accuracy", "held-out reward acc.", 3),
    ("mostly_loop", "mostly a loop", 3),
    ("repetition", "repetition", 3),
    ("names_topic", "topic named", 3),
    ("ends_sentence", "ends a sentence", 3),
    ("win_rate_vs_round_0", "rules win rate vs round 0", 3),
    ("seconds", "seconds", 0),
)


def _cell(row: dict[str, Any], key: str, digits: int | None) -> str:
    value = row.get(key)
    if value is None or value == "":
        return "–"
    text = f"{value:.{digits}f}" if digits is not None and isinstance(value, (int, float)) else str(value)
    interval = {"reward_accuracy": "reward_accuracy_ci95", "win_rate_vs_round_0": "win_rate_ci95"}.get(key)
    if interval and row.get(interval):
        low, high = row[interval]
        text += f" ({low:.3f}–{high:.3f})"
    return text


def rounds_table(plan: Rounds, rows: list[dict[str, Any]]) -> str:
    """The rounds as Markdown, with what the numbers are measured on and against."""
    reference = (
        "the first model (the bare base, adapters off)"
        if plan.recipe.iterate.reference == "first_model"
        else "each round's starting policy (the round before it)"
    )
    held = rows[0].get("held_out_pairs")
    answers = rows[0].get("answers")
    lines = [
        f"On-policy rounds of `{plan.context.recipe}`, judge `{plan.judge}`; rounds k >= 1 train against {reference}, "
        f"with iterate.replay {plan.recipe.iterate.replay:g} of the original pairs mixed in. Held-out reward accuracy "
        f"(95% CI) on round 0's {held} held-out pairs; the answer checks on {answers} held-out questions answered "
        "greedily; the rules judge's win rate of a round's answers over round 0's, ties half (Wilson 95% CI).",
        "",
        "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "| " + " | ".join("---" for _ in COLUMNS) + " |",
    ]
    lines += ["| " + " | ".join(_cell(row, key, digits) for key, _, digits in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_rounds(plan: Rounds, rows: list[dict[str, Any]]) -> None:
    """``rounds.md``, ``rounds.csv`` and ``rounds.png`` in the output folder; the table also goes into the last
    round's model card."""
    from dpo_recipe.evaluation.plots import plot_rounds

    table = rounds_table(plan, rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[key for key in rows[0] if key != "output_dir"], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    write_file_atomically(plan.root / "rounds.md", lambda staging: staging.write_text(table, encoding="utf-8"))
    write_file_atomically(
        plan.root / "rounds.csv", lambda staging: staging.write_text(buffer.getvalue(), encoding="utf-8")
    )
    plot_rounds(rows, plan.root / "rounds.png")
    last = Path(rows[-1]["output_dir"])
    card = last / "README.md"
    if card.is_file() and last != plan.start:
        text = card.read_text(encoding="utf-8").split("\n## On-policy rounds\n")[0].rstrip("\n")
        added = f"{text}\n\n## On-policy rounds\n\n{table}"
        write_file_atomically(card, lambda staging: staging.write_text(added, encoding="utf-8"))
    print("\n" + table + f"\nRounds: {plan.root / 'rounds.md'}, {plan.root / 'rounds.csv'}, {plan.root / 'rounds.png'}")
