"""The held-out report as Markdown: what ``dpo-recipe eval`` prints and the model card embeds. Each objective
(``training.objectives``) names its headline lines: ``dpo_lines`` for a report of ``scoring``, ``kto_lines``
for one of ``kto_scoring``."""

from __future__ import annotations

from typing import Any

from dpo_recipe.evaluation.scoring import BREAKDOWNS


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def markdown_summary(report: dict[str, Any], headline: list[str]) -> str:
    """A report as Markdown: ``headline`` (the objective's numbers and tables, ``Objective.report_lines``) with the
    judged win rate after its first line (the headline figure, reward accuracy), then the answer checks and the
    base-versus-tuned answers."""
    lines = list(headline)
    if report.get("judged"):
        lines.insert(1, judged_line(report["judged"]))
    if report.get("answer_checks"):
        lines += answer_checks_table(report["answer_checks"]) + [""]
    if report.get("generations"):
        lines += ["| prompt | base | tuned |", "| --- | --- | --- |"]
        for g in report["generations"]:
            cells = [g[k].replace("\n", " ").replace("|", "\\|")[:120] for k in ("prompt", "base", "tuned")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def judged_line(judged: dict[str, Any]) -> str:
    """The judged win rate (``evaluation.judged``) in one sentence: rate, interval, counts and the judge."""
    low, high = judged["win_rate_ci95"]
    return (
        f"Judged win rate of the tuned answers against the base's **{_pct(judged['win_rate'])}** (95% CI "
        f"{_pct(low)}–{_pct(high)}) on {judged['questions']} held-out questions, judge {judged['judge']}: "
        f"won {judged['wins']}, tied {judged['ties']}, lost {judged['losses']} (a tie counts half)."
    )


def dpo_lines(report: dict[str, Any]) -> list[str]:
    """Reward accuracy with its interval, log-likelihood accuracy, and a table per breakdown."""
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
    if report.get("reward", "").split(":")[0] not in ("", "dpo"):  # say so where it is not DPO's reward
        lines[1:1] = [f"Implicit reward: {report['reward']} (the objective trained without a reference)."]
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
    return lines


def kto_lines(report: dict[str, Any]) -> list[str]:
    """KL-adjusted reward accuracy on desirable and undesirable rows, mean rewards, KL and loss, and which kinds
    of wrong answer the adapter now rejects (rows split from pairs with a rejection_type)."""
    o = report["overall"]
    lines = [
        f"Held-out KL-adjusted reward accuracy **{_pct(o['reward_accuracy'])}** on {o['rows']} rows: desirable "
        f"{_pct(o['desirable_accuracy'])} of {o['desirable_rows']} (reward > 0), undesirable "
        f"{_pct(o['undesirable_accuracy'])} of {o['undesirable_rows']} (reward < 0).",
        f"Mean reward desirable {_num(o['chosen_reward'])}, undesirable {_num(o['rejected_reward'])} (margin "
        f"{_num(o['reward_margin'])}); KL estimate {_num(o['kl'])}; KTO loss {_num(o['loss'])}.",
        "",
    ]
    groups = report.get("undesirable_by_rejection_type")
    if groups:
        lines += ["| rejection_type | undesirable rows | rejected (reward < 0) |", "| --- | --- | --- |"]
        lines += [f"| {name} | {g['rows']} | {_pct(g['accuracy'])} |" for name, g in groups.items()]
        lines.append("")
    return lines


def answer_checks_table(checks: dict[str, Any]) -> list[str]:
    """Base beside tuned on the answer checks, with the decoding both answered under."""
    used = ", ".join(f"{k} {v}" for k, v in checks["decoding"].items() if k != "greedy")
    lines = [
        f"Answers to {checks['tuned']['answers']} held-out prompts (greedy; {used}):",
        "",
        "| model | Japanese share | names the topic | repetition | mostly a loop | distinct-2 | ends a sentence "
        "| length |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for side in ("base", "tuned"):
        c = checks[side]
        named = "n/a" if c["names_topic"] is None else _pct(c["names_topic"])
        lines.append(
            f"| {side} | {_pct(c['japanese_share'])} | {named} | {_pct(c['repetition'])} | {_pct(c['mostly_loop'])} | "
            f"{c['distinct_2']:.2f} | {_pct(c['ends_sentence'])} | {c['length']:.0f} |"
        )
    return lines
