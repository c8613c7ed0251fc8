"""A second judge for an `iterate` run's rounds: each round's held-out answers against round 0's.

    python benchmarks/rounds_second_judge.py outputs/rounds                    # implicit, by round 0's adapter
    python benchmarks/rounds_second_judge.py outputs/rounds --judge-round 2    # implicit, by round 2's adapter

The rounds table (``OUT/rounds.md``) reports the rules judge's win rate of round K's answers over round 0's; the
rules judge also chose round K's training pairs, so that figure is read beside one from a judge the rounds never
trained on. This takes the answers each round already wrote (``eval.generations`` in its ``metrics.json``: the
same held-out questions, greedy) and asks ``evaluation.judged.judge_answers`` whether round K's answer beats round
0's, question by question, as ``eval.judge`` compares tuned against base. The default judge is ``implicit``, the
DPO reward beta x (log pi - log pi_ref) of one round's adapter: round 0's learned from the template pairs alone,
so it never saw a judged pair, but it wrote round 0's answers, and a later round's adapter wrote its own; reading
the win rate by both brackets that bias. Prints one line a round: wins, ties, losses, the win rate and its 95 %
Wilson interval.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.evaluation.judged import judge_answers
from dpo_recipe.evaluation.scoring import questions_across_topics
from dpo_recipe.judges import judge_for
from dpo_recipe.training.objectives import objective_for


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rounds", type=Path, help="An iterate run's folder (OUT, holding round-0, round-1, ...).")
    parser.add_argument("--judge", default="implicit", help="A judge spec, as --judge takes it (default implicit).")
    parser.add_argument("--judge-round", type=int, default=0, help="The round whose adapter the implicit judge is.")
    args = parser.parse_args(argv)
    rounds = sorted(args.rounds.glob("round-*"), key=lambda path: int(path.name.split("-")[1]))
    if len(rounds) < 2:
        raise SystemExit(f"{args.rounds}: no round after round 0 to judge")
    first = json.loads((rounds[0] / "metrics.json").read_text(encoding="utf-8"))["eval"]["generations"]
    # a generation keeps its prompt as the template rendered it; the judge takes the held-out row's own (text or
    # messages), as evaluation.judged.judge_report gives it, from round 0's held-out split
    recipe = load_recipe(str(rounds[0] / "recipe.yaml"))
    rows = questions_across_topics(objective_for(recipe).held_out_rows(recipe.data, recipe), len(first))
    prompts = {g["question"]: row["prompt"] for g, row in zip(first, rows, strict=True)}
    asked = [row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"] for row in rows]
    if asked != [g["question"] for g in first]:
        raise SystemExit(f"{rounds[0]}: its held-out split no longer gives the questions its answers were written to")
    judge_dir = args.rounds / f"round-{args.judge_round}"
    settings = load_recipe(str(judge_dir / "recipe.yaml")).judge
    judge = judge_for(args.judge, settings, adapter=str(judge_dir))
    for later_dir in rounds[1:]:
        later = json.loads((later_dir / "metrics.json").read_text(encoding="utf-8"))["eval"]["generations"]
        by_question = {g["question"]: g for g in later}
        matched = [(g, by_question[g["question"]]) for g in first if g["question"] in by_question]
        # judge_answers compares "tuned" against "base": here round K against round 0
        pairs = [{**old, "base": old["tuned"], "tuned": new["tuned"]} for old, new in matched]
        figures = judge_answers(judge, pairs, [prompts[old["question"]] for old, _ in matched])
        low, high = figures["win_rate_ci95"]
        print(
            f"{later_dir.name} over round-0, judge {args.judge} ({judge_dir.name}): won {figures['wins']}, tied "
            f"{figures['ties']}, lost {figures['losses']} of {figures['questions']}; "
            f"win rate {figures['win_rate']:.3f} (95% CI {low:.3f}-{high:.3f})"
        )


if __name__ == "__main__":
    main()
