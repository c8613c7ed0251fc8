"""Held-out evaluation of a LoRA adapter: reward accuracy, margins, before/after, by failure type.

    dpo-recipe eval --adapter DIR [--base MODEL] [--data SOURCE] [--split test] [--out report.json]
    accelerate launch --multi_gpu --num_processes 2 -m dpo_recipe.evaluation --adapter DIR ...

One pass over the pairs scores each answer under the tuned model (adapter on) and the base
(adapter off, the DPO reference): that gives the implicit rewards and, from the base alone,
the "before" log-likelihood accuracy. Processes split the pairs and the main one gathers them.
Pairs are packed as in training: only completion positions go through the 49k-word LM head.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from dpo_recipe.atomic import write_file_atomically
from dpo_recipe.errors import DpoRecipeError, exit_on_user_error
from dpo_recipe.tokens import encode_pair

METRIC_DIR = Path(__file__).resolve().parent / "metrics" / "dpo_preference"
BREAKDOWNS = ("rejection_type", "domain")


def load_metric() -> Any:
    import evaluate

    return evaluate.load(str(METRIC_DIR))


def score_pairs(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_length: int, batch_size: int, progress: bool = True
) -> list[dict[str, Any]]:
    """Per-pair log-probs under the tuned model and the base (adapter disabled), in ``rows`` order.

    Pairs are packed like training packs them (``dpo_recipe.packing``: prompt once, no padding,
    LM head on completion tokens only), ``batch_size`` pairs a row, longest first.
    """
    import torch
    from tqdm.auto import tqdm

    from dpo_recipe.packing import pack_pairs, pair_logps, truncated

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    pairs = [vars(encode_pair(tokenizer, row)) for row in rows]
    order = sorted(range(len(pairs)), key=lambda i: -sum(len(pairs[i][k]) for k in ("prompt_ids", "chosen_ids")))
    tuned: list[tuple[float, float]] = [(0.0, 0.0)] * len(pairs)
    reference = list(tuned)
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc="Scoring held-out pairs", disable=not progress):
        chunk = order[start : start + batch_size]
        packed = pack_pairs([pairs[i] for i in chunk], max_length).to(next(base.parameters()).device)
        with torch.no_grad():
            policy = pair_logps(base, packed)
            with model.disable_adapter():
                ref = pair_logps(base, packed)
        for k, i in enumerate(chunk):
            tuned[i] = (policy[0][k].item(), policy[1][k].item())
            reference[i] = (ref[0][k].item(), ref[1][k].item())
    model.train(was_training)
    scored = []
    for j, row in enumerate(rows):
        _, chosen, rejected = truncated(pairs[j], max_length)
        scored.append(
            {
                "policy_chosen_logps": tuned[j][0],
                "policy_rejected_logps": tuned[j][1],
                "reference_chosen_logps": reference[j][0],
                "reference_rejected_logps": reference[j][1],
                "chosen_tokens": len(chosen),
                "rejected_tokens": len(rejected),
                **{key: row[key] for key in (*BREAKDOWNS, "topic") if key in row},
            }
        )
    return scored


def summarise(scored: list[dict[str, Any]], beta: float) -> dict[str, Any]:
    metric = load_metric()
    inputs = list(metric.features)

    def compute(subset: list[dict[str, Any]]) -> dict[str, Any]:
        return metric.compute(**{k: [s[k] for s in subset] for k in inputs}, beta=beta)

    report: dict[str, Any] = {"beta": beta, "overall": compute(scored)}
    for s in scored:
        s["reward_margin"] = beta * (
            (s["policy_chosen_logps"] - s["reference_chosen_logps"])
            - (s["policy_rejected_logps"] - s["reference_rejected_logps"])
        )
    for key in BREAKDOWNS:
        groups: dict[str, list] = defaultdict(list)
        for s in scored:
            if key in s:
                groups[str(s[key])].append(s)
        if groups:
            report[f"by_{key}"] = {name: compute(group) for name, group in sorted(groups.items())}
    return report


def prompt_text(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """A prompt as training showed it to the model: plain text as is, messages through the chat template.

    TRL tokenizes a plain-text prompt raw (no template), so answering a bare question in the same
    form is what the adapter learned; conversational data was rendered with the template.
    """
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def greedy_answer(model: Any, tokenizer: Any, text: str, max_new_tokens: int) -> str:
    """The model's greedy (deterministic) continuation of ``text``, without the prompt."""
    import torch

    inputs = tokenizer(text, return_tensors="pt").to(model.device)
    settings = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        output = model.generate(**inputs, **settings)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def greedy_answers(model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_new_tokens: int) -> list[dict[str, str]]:
    """A few held-out prompts answered by the base and the tuned model, greedily (deterministic)."""
    answers = []
    model.eval()
    for row in rows:
        text = prompt_text(tokenizer, row["prompt"])
        tuned = greedy_answer(model, tokenizer, text, max_new_tokens)
        with model.disable_adapter():
            base = greedy_answer(model, tokenizer, text, max_new_tokens)
        answers.append({"prompt": text, "base": base, "tuned": tuned})
    return answers


def evaluate_adapter(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    *,
    beta: float,
    max_length: int,
    batch_size: int,
    num_generations: int,
    max_new_tokens: int,
) -> dict[str, Any] | None:
    """Score ``rows`` split across processes; the main process returns the report, others None."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    indexed = list(enumerate(rows))
    with state.split_between_processes(indexed) as shard:
        scored = score_pairs(
            model, tokenizer, [r for _, r in shard], max_length, batch_size, progress=state.is_main_process
        )
        tagged = [(i, s) for (i, _), s in zip(shard, scored, strict=True)]
    gathered = sorted(gather_object(tagged), key=lambda item: item[0])
    if not state.is_main_process:
        return None
    report = summarise([s for _, s in gathered], beta)
    report["per_pair"] = [s for _, s in gathered]
    report["generations"] = greedy_answers(model, tokenizer, rows[:num_generations], max_new_tokens)
    return report


# ---------------------------------------------------------------------------- presentation


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def markdown_summary(report: dict[str, Any]) -> str:
    overall = report["overall"]
    low, high = overall["reward_accuracy_ci95"]
    lines = [
        f"Held-out reward accuracy **{_pct(overall['reward_accuracy'])}** (95% CI {_pct(low)}–{_pct(high)}) on "
        f"{overall['pairs']} pairs; mean reward margin {overall['reward_margin']:.4f}; ties {overall['reward_ties']}.",
        "Log-likelihood preference accuracy (length-normalised): base "
        f"{_pct(overall['base_loglik_accuracy_normalized'])} → tuned "
        f"{_pct(overall['policy_loglik_accuracy_normalized'])}.",
        "",
    ]
    for key in BREAKDOWNS:
        groups = report.get(f"by_{key}")
        if not groups:
            continue
        lines += [
            f"| {key} | pairs | reward acc. (95% CI) | margin | base LL acc. (sum / norm.) "
            "| tuned LL acc. (sum / norm.) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, m in groups.items():
            lo, hi = m["reward_accuracy_ci95"]
            lines.append(
                f"| {name} | {m['pairs']} | {_pct(m['reward_accuracy'])} ({_pct(lo)}–{_pct(hi)}) | "
                f"{m['reward_margin']:.4f} | {_pct(m['base_loglik_accuracy'])} / "
                f"{_pct(m['base_loglik_accuracy_normalized'])} | {_pct(m['policy_loglik_accuracy'])} / "
                f"{_pct(m['policy_loglik_accuracy_normalized'])} |"
            )
        lines.append("")
    if report.get("generations"):
        lines += ["| prompt | base | tuned |", "| --- | --- | --- |"]
        for g in report["generations"]:
            cells = [g[k].replace("\n", " ").replace("|", "\\|")[:120] for k in ("prompt", "base", "tuned")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    groups = report.get("by_rejection_type")
    if groups:
        names = list(groups)
        fig, ax = plt.subplots(figsize=(7, 3.8), dpi=100)
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [groups[n]["reward_accuracy"] for n in names], width=0.4, label="reward acc.")
        ax.bar(
            [x + 0.2 for x in xs],
            [groups[n]["base_loglik_accuracy_normalized"] for n in names],
            width=0.4,
            label="base LL acc. (norm.)",
        )
        ax.set_xticks(list(xs), names, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title("Held-out accuracy by rejection type")
        ax.legend(loc="lower right")
        fig.tight_layout()
        path = out_dir / "accuracy_by_rejection_type.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    margins = [p["reward_margin"] for p in report.get("per_pair", [])]
    if margins:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.hist(margins, bins=30)
        ax.axvline(0, color="black", linewidth=1)
        ax.set_xlabel("reward margin (chosen - rejected)")
        ax.set_title("Held-out reward margins")
        fig.tight_layout()
        path = out_dir / "reward_margin_histogram.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dpo_recipe.evaluation",
        description="Score a LoRA adapter on held-out preference pairs (run under 'accelerate launch' to split "
        "the pairs across processes).",
    )
    parser.add_argument("--adapter", required=True, help="Adapter directory written by training, or a Hub id.")
    parser.add_argument("--base", help="Base model (default: the one the adapter's recipe recorded).")
    parser.add_argument("--data", help="Pairs to score (default: the adapter's recipe data source).")
    parser.add_argument("--split", default="test", help="Split to score (default: test).")
    parser.add_argument("--beta", type=float, help="DPO beta for rewards (default: the recipe's).")
    parser.add_argument("--max-pairs", type=int, help="Score only the first N pairs.")
    parser.add_argument("--out", default="eval_report.json", help="JSON report path; charts go beside it.")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    exit_on_user_error(
        run_eval,
        args.adapter,
        base=args.base,
        data=args.data,
        split=args.split,
        beta=args.beta,
        max_pairs=args.max_pairs,
        out=Path(args.out),
    )


def run_eval(
    adapter: str,
    *,
    base: str | None = None,
    data: str | None = None,
    split: str = "test",
    beta: float | None = None,
    max_pairs: int | None = None,
    out: Path = Path("eval_report.json"),
) -> dict[str, Any] | None:
    """Everything that can be wrong is checked before the base model's weights load."""
    import dataclasses

    from dpo_recipe.adapters import adapter_base, load_adapter_model
    from dpo_recipe.data import load_preference_splits

    adapter_dir, recipe, model_section = adapter_base(adapter, base)
    data_section = dataclasses.replace(
        recipe.data,
        source=data or recipe.data.source,
        revision=None if data else recipe.data.revision,  # the recorded commit belongs to the recorded source
        test_split=split,
        max_train_pairs=None,
        max_eval_pairs=max_pairs,
    )
    _, rows, _ = load_preference_splits(data_section)
    if not rows:
        raise DpoRecipeError(f"{data_section.source}: split '{split}' has no pairs to score.")
    model, tokenizer = load_adapter_model(adapter_dir, model_section)
    report = evaluate_adapter(
        model,
        tokenizer,
        rows,
        beta=beta or recipe.training.beta,
        max_length=recipe.training.max_length,
        batch_size=recipe.eval.batch_size,
        num_generations=recipe.eval.num_generations,
        max_new_tokens=recipe.eval.max_new_tokens,
    )
    if report is None:
        return None
    report["adapter"] = adapter
    report["base_model"] = model_section.name_or_path
    out.parent.mkdir(parents=True, exist_ok=True)
    charts = plot_report(report, out.parent / f"{out.stem}_plots")
    report["charts"] = [str(c) for c in charts]
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    write_file_atomically(out, lambda staging: staging.write_text(text, encoding="utf-8"))
    print(markdown_summary(report))
    print(f"\nReport: {out}; charts: {', '.join(report['charts'])}")
    return report


if __name__ == "__main__":
    main()
