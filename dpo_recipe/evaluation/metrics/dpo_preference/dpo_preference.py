"""DPO preference metrics as an `evaluate` module (load it with ``evaluate.load(<this directory>)``).

Inputs are per-pair summed log-probabilities of the completion tokens under the policy and the
reference (the base model), plus completion lengths. The implicit DPO reward of an answer is
beta * (log pi(y|x) - log pi_ref(y|x)); a pair is won when chosen's reward is strictly higher
(ties are counted as losses and reported separately). With ``reference_free=True`` the reward is
that of SimPO and ORPO instead, beta * log pi(y|x) / |y|: the mean log-prob per completion token,
as TRL's CPO and ORPO trainers log it. Log-likelihood accuracies need no
reference, so they are also reported for the base model: the "before" beside the "after".
"""

import math

import datasets
import evaluate

_DESCRIPTION = "Reward accuracy (with a Wilson 95% interval), margins and log-likelihood preference accuracy for DPO."
_CITATION = "Rafailov et al., Direct Preference Optimization, arXiv:2305.18290 (2023)."
_INPUTS = """
Args:
    policy_chosen_logps, policy_rejected_logps: summed completion log-probs under the tuned model.
    reference_chosen_logps, reference_rejected_logps: the same under the base (reference) model.
    chosen_tokens, rejected_tokens: completion lengths in tokens (for length-normalised accuracy).
    beta: DPO temperature used for rewards and the loss (default 0.1).
    reference_free: reward beta * mean completion log-prob (SimPO, ORPO) instead of DPO's (default False).
Returns:
    pairs, reward_accuracy, reward_accuracy_ci95, reward_ties, reward_margin, chosen_reward,
    rejected_reward, loss, policy_loglik_accuracy, policy_loglik_accuracy_normalized,
    base_loglik_accuracy, base_loglik_accuracy_normalized.
"""

# one per-pair input each, in the order _compute reads them
_FEATURES = {
    "policy_chosen_logps": "float64",
    "policy_rejected_logps": "float64",
    "reference_chosen_logps": "float64",
    "reference_rejected_logps": "float64",
    "chosen_tokens": "int64",
    "rejected_tokens": "int64",
}
Z_95 = 1.959963984540054


def wilson_interval(successes, total, z=Z_95):
    if total == 0:
        return [0.0, 1.0]
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _share(flags):
    return sum(flags) / len(flags) if flags else float("nan")


def _mean(values):
    return sum(values) / len(values) if values else float("nan")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class DpoPreference(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({name: datasets.Value(dtype) for name, dtype in _FEATURES.items()}),
        )

    def _compute(self, beta=0.1, reference_free=False, **columns):
        rows = zip(*(columns[name] for name in _FEATURES), strict=True)
        chosen_rewards, rejected_rewards, wins, ties, losses = [], [], [], [], []
        policy_sum, policy_norm, base_sum, base_norm = [], [], [], []
        for pc, pr, rc, rr, nc, nr in rows:
            if reference_free:
                chosen, rejected = beta * pc / max(nc, 1), beta * pr / max(nr, 1)
            else:
                chosen, rejected = beta * (pc - rc), beta * (pr - rr)
            chosen_rewards.append(chosen)
            rejected_rewards.append(rejected)
            wins.append(chosen > rejected)
            ties.append(chosen == rejected)
            losses.append(-_log_sigmoid(chosen - rejected))
            policy_sum.append(pc > pr)
            policy_norm.append(pc / max(nc, 1) > pr / max(nr, 1))
            base_sum.append(rc > rr)
            base_norm.append(rc / max(nc, 1) > rr / max(nr, 1))
        margins = [c - r for c, r in zip(chosen_rewards, rejected_rewards, strict=True)]
        return {
            "pairs": len(wins),
            "reward_accuracy": _share(wins),
            "reward_accuracy_ci95": wilson_interval(sum(wins), len(wins)),
            "reward_ties": sum(ties),
            "reward_margin": _mean(margins),
            "chosen_reward": _mean(chosen_rewards),
            "rejected_reward": _mean(rejected_rewards),
            "loss": _mean(losses),
            "policy_loglik_accuracy": _share(policy_sum),
            "policy_loglik_accuracy_normalized": _share(policy_norm),
            "base_loglik_accuracy": _share(base_sum),
            "base_loglik_accuracy_normalized": _share(base_norm),
        }


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))
