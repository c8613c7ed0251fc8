"""Preference objectives as functions of per-pair summed log-probs: TRL's DPO loss types, ported.

TRL 1.16's ``DPOTrainer._compute_loss`` computes its loss types inline, on its padded batch, from
the summed completion log-probs of policy and reference (and, for a few, the completion lengths).
Here each is a function of a ``PairLogps``, so the packed step (``trainer.PackedDPOTrainer``)
computes the same objectives from its packed sums; tests/test_trainer.py holds every one to
DPOTrainer's loss, LoRA gradients and logs on one batch. The formulas, and the paper each comes
from, are TRL's; only TRL's default ``f_divergence_type="reverse_kl"`` is ported (the scores are
the log-ratios), and ``trainer.unpackable_settings`` refuses the others.

Two reference-free objectives (``REFERENCE_FREE_LOSSES``) need no reference model at all, so the
packed trainer skips its reference pass for them: SimPO, as TRL's ``experimental.cpo.CPOTrainer``
computes it with ``loss_type="simpo"``, and ORPO, as ``experimental.orpo.ORPOTrainer`` does. Both
score answers by their mean log-prob per completion token; each trains alone (``preference_loss``
refuses a mix with the reference-based losses). tests/test_trainer.py holds both to TRL's own
``cpo_loss`` / ``odds_ratio_loss`` on the packed forward's log-probs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from dpo_recipe.config.vocabulary import PAIRWISE_LOSS_NAMES, REFERENCE_FREE_LOSS_NAMES, mixing_problem


@dataclass(frozen=True)
class PairLogps:
    """Tensors of shape (pairs,): summed completion log-probs of policy and reference, and token counts.

    The reference is None for a reference-free objective (no reference pass ran). ``prompt`` and
    ``prompt_tokens`` are the policy's summed log-probs of each prompt's tokens after its first, and
    their count: ORPO's NLL (as TRL computes it) covers prompt and chosen answer; None elsewhere.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor | None
    ref_rejected: torch.Tensor | None
    chosen_tokens: torch.Tensor  # completion tokens scored (after truncation): IPO and SFT average over them
    rejected_tokens: torch.Tensor
    prompt: torch.Tensor | None = None
    prompt_tokens: torch.Tensor | None = None

    def chosen_mean(self) -> torch.Tensor:
        """Mean log-prob per chosen completion token: SimPO's and ORPO's length-normalised score."""
        return self.chosen / self.chosen_tokens.clamp(min=1)

    def rejected_mean(self) -> torch.Tensor:
        return self.rejected / self.rejected_tokens.clamp(min=1)

    @property
    def chosen_logratios(self) -> torch.Tensor:
        return self.chosen - self.ref_chosen

    @property
    def rejected_logratios(self) -> torch.Tensor:
        return self.rejected - self.ref_rejected

    @property
    def margin(self) -> torch.Tensor:
        """TRL's ``delta_score`` under reverse KL: how much more the policy moved towards chosen."""
        return self.chosen_logratios - self.rejected_logratios

    def per_token_margin(self) -> torch.Tensor:
        """The margin of per-token log-ratios, TRL's length normalisation for ``ipo`` and ``sigmoid_norm``."""
        chosen = self.chosen_logratios / self.chosen_tokens.clamp(min=1)
        return chosen - self.rejected_logratios / self.rejected_tokens.clamp(min=1)


class LossSettings(Protocol):
    """The ``DPOConfig`` fields the losses read."""

    beta: float
    label_smoothing: float
    discopop_tau: float


Loss = Callable[[PairLogps, LossSettings], torch.Tensor]


def sigmoid(p: PairLogps, args: LossSettings) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, Eq. 7)."""
    return -F.logsigmoid(args.beta * p.margin)


def hinge(p: PairLogps, args: LossSettings) -> torch.Tensor:
    """SLiC's hinge on the margin (Zhao et al. 2023, https://huggingface.co/papers/2305.10425)."""
    return torch.relu(1 - args.beta * p.margin)


def ipo(p: PairLogps, args: LossSettings) -> torch.Tensor:
    """IPO (Azar et al. 2023, Eq. 17; beta is tau): squared distance of the margin from 1 / (2 beta).

    Per token, as TRL computes it (confirmed with the IPO authors, says TRL): summed log-probs
    would make the square grow with the answers' length.
    """
    return (p.per_token_margin() - 1 / (2 * args.beta)) ** 2


def exo_pair(p: PairLogps, args: LossSettings) -> torch.Tensor:
    """EXO-pref (Ji et al. 2024, https://huggingface.co/papers/2402.00856, Eq. 16), needs label_smoothing > 0.

    KL from the model's softmax over {chosen, rejected} to the target (1 - eps, eps), expanded.
    """
    logits = args.beta * p.margin
    epsilon = torch.tensor(args.label_smoothing, device=logits.device)
    chosen_term = torch.sigmoid(logits) * (F.logsigmoid(logits) - torch.log1p(-epsilon))
    return chosen_term + torch.sigmoid(-logits) * (F.logsigmoid(-logits) - torch.log(epsilon))


def nca_pair(p: PairLogps, args: LossSettings) -> torch.Tensor:
    """NCA (Chen et al. 2024, https://huggingface.co/papers/2402.05369): absolute rewards, not only their margin."""
    chosen, rejected = args.beta * p.chosen_logratios, args.beta * p.rejected_logratios
    return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)


def robust(p: PairLogps, args: LossSettings) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024, https://huggingface.co/papers/2403.00409): unbiased under a share
    label_smoothing of flipped labels."""
    eps, logits = args.label_smoothing, args.beta * p.margin
    return (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)


def bco_pair(p: PairLogps, args: LossSettings) -> torch.Tensor:
    """BCO on pairs (Jung et al. 2024, https://huggingface.co/papers/2404.04656), as TRL 1.16 has it: no running
    reward shift."""
    return -F.logsigmoid(args.beta * p.chosen_logratios) - F.logsigmoid(-args.beta * p.rejected_logratios)


def sppo_hard(p: PairLogps, args: LossSettings) -> torch.Tensor:
    """SPPO (Wu et al. 2024, https://huggingface.co/papers/2405.00675) with hard probabilities: P = 1 for the
    winner and 0 for the loser in Eq. (4.7)."""
    return (p.chosen_logratios - 0.5 / args.beta) ** 2 + (p.rejected_logratios + 0.5 / args.beta) ** 2


def _smoothed_sigmoid(delta: torch.Tensor, args: LossSettings) -> torch.Tensor:
    eps = args.label_smoothing
    return -F.logsigmoid(args.beta * delta) * (1 - eps) - F.logsigmoid(-args.beta * delta) * eps


def aot(p: PairLogps, args: LossSettings) -> torch.Tensor:
    """AOT (Melnyk et al. 2024, https://huggingface.co/papers/2406.05882): sorted policy log-ratios against
    sorted reference log-ratios, across the pairs of the (per-device) batch."""
    policy = torch.sort(p.chosen - p.rejected, dim=0).values
    reference = torch.sort(p.ref_chosen - p.ref_rejected, dim=0).values
    return _smoothed_sigmoid(policy - reference, args)


def aot_unpaired(p: PairLogps, args: LossSettings) -> torch.Tensor:
    """AOT for unpaired data: sorted chosen log-ratios against sorted rejected ones, across the batch."""
    chosen = torch.sort(p.chosen_logratios, dim=0).values
    return _smoothed_sigmoid(chosen - torch.sort(p.rejected_logratios, dim=0).values, args)


def apo_zero(p: PairLogps, args: LossSettings) -> torch.Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, https://huggingface.co/papers/2408.06266, Eq. 7): raise chosen and
    lower rejected, for chosen answers better than the model's own."""
    return 1 - torch.sigmoid(args.beta * p.chosen_logratios) + torch.sigmoid(args.beta * p.rejected_logratios)


def apo_down(p: PairLogps, args: LossSettings) -> torch.Tensor:
    """APO-down (same paper, Eq. 8): lower both, rejected more, for chosen answers worse than the model's own."""
    return torch.sigmoid(args.beta * p.chosen_logratios) + 1 - torch.sigmoid(args.beta * p.margin)


def discopop(p: PairLogps, args: LossSettings) -> torch.Tensor:
    """DiscoPOP (Lu et al. 2024, https://huggingface.co/papers/2406.08414, Eq. 5): logistic and exponential
    losses blended by sigmoid(margin / discopop_tau)."""
    logits = args.beta * p.margin
    blend = torch.sigmoid(logits / args.discopop_tau)
    return -F.logsigmoid(logits) * (1 - blend) + torch.exp(-logits) * blend


def sft(p: PairLogps, args: LossSettings) -> torch.Tensor:
    """NLL of the chosen answers: TRL's mean over every chosen token of the batch (not a mean of per-pair
    means), repeated per pair so it takes the same ``.mean()`` as the others."""
    return (-p.chosen.sum() / p.chosen_tokens.sum().clamp(min=1)).expand(p.chosen.shape[0])


def sigmoid_norm(p: PairLogps, args: LossSettings) -> torch.Tensor:
    """DPO on per-token log-ratios (TRL's length-normalised sigmoid, the normalisation of ``ipo``)."""
    return -F.logsigmoid(args.beta * p.per_token_margin())


class ReferenceFreeSettings(Protocol):
    """What the reference-free losses read: TRL's ``CPOConfig`` / ``ORPOConfig`` names (beta is ORPO's lambda)."""

    beta: float
    label_smoothing: float
    simpo_gamma: float
    cpo_alpha: float


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (TRL's ``experimental.orpo`` helper)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def chosen_nll(p: PairLogps, with_prompt: bool) -> torch.Tensor:
    """Mean negative log-prob over every chosen token of the batch (a scalar), as TRL's ``nn.CrossEntropyLoss``
    over the chosen rows averages it; ``with_prompt`` adds the prompt tokens after the first (ORPO's NLL)."""
    total, count = p.chosen.sum(), p.chosen_tokens.sum()
    if with_prompt:
        if p.prompt is None or p.prompt_tokens is None:
            raise ValueError("ORPO's NLL covers the prompt tokens too: pack the pairs with score_prompts=True.")
        total, count = total + p.prompt.sum(), count + p.prompt_tokens.sum()
    return -total / count.clamp(min=1)


def simpo(p: PairLogps, args: ReferenceFreeSettings) -> torch.Tensor:
    """SimPO (Meng et al. 2024, https://huggingface.co/papers/2405.14734, Eq. 6): DPO's logistic loss on the
    margin of mean log-probs, less the target margin gamma / beta; no reference.

    TRL's ``CPOTrainer.cpo_loss`` with ``loss_type="simpo"`` (label_smoothing as CPO smooths it), plus CPO's
    ``cpo_alpha`` x the NLL of the chosen answers (completion tokens, batch token mean). The SimPO paper
    has no NLL term: ``cpo_alpha`` 0 (this recipe's default, TRL's for its SimPO recipe) is SimPO,
    non-zero is CPO-SimPO (TRL's ``CPOConfig`` default is 1.0).
    """
    logits = p.chosen_mean() - p.rejected_mean() - args.simpo_gamma / args.beta
    eps = args.label_smoothing
    losses = -F.logsigmoid(args.beta * logits) * (1 - eps) - F.logsigmoid(-args.beta * logits) * eps
    if args.cpo_alpha != 0:
        losses = losses + args.cpo_alpha * chosen_nll(p, with_prompt=False)
    return losses


def orpo(p: PairLogps, args: ReferenceFreeSettings) -> torch.Tensor:
    """ORPO (Hong et al. 2024, https://huggingface.co/papers/2403.07691, Eqs. 4-7): the NLL of the chosen
    answers less lambda (beta) x log sigmoid of the log odds ratio of the mean log-probs; no reference.

    TRL's ``ORPOTrainer``: ``policy_nll_loss - odds_ratio_loss(...)[0].mean()``, its NLL taken, as TRL
    takes it, over the chosen row's prompt (after its first token) and answer (``chosen_nll``).
    """
    chosen, rejected = p.chosen_mean().float(), p.rejected_mean().float()
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    return chosen_nll(p, with_prompt=True) - args.beta * F.logsigmoid(log_odds)


# TRL 1.16's loss types under the names config.vocabulary checks recipes against (torch-free there).
PAIRWISE_LOSSES: dict[str, Loss] = {name: globals()[name] for name in PAIRWISE_LOSS_NAMES}
# Objectives without a reference model (TRL trains them with CPOTrainer / ORPOTrainer, not DPOTrainer):
# the packed trainer runs no reference pass for them.
REFERENCE_FREE_LOSSES: dict[str, Callable[[PairLogps, ReferenceFreeSettings], torch.Tensor]] = {
    name: globals()[name] for name in REFERENCE_FREE_LOSS_NAMES
}
LOSSES: dict[str, Callable[[PairLogps, Any], torch.Tensor]] = {**PAIRWISE_LOSSES, **REFERENCE_FREE_LOSSES}


def preference_loss(names: Sequence[str], weights: Sequence[float], logps: PairLogps, args: Any) -> torch.Tensor:
    """TRL's combined loss: ``sum(weight * loss.mean())`` over the named losses (``loss_type``, ``loss_weights``).

    ``args`` has the fields the losses read: ``LossSettings`` (a DPOConfig) for the reference-based ones,
    ``ReferenceFreeSettings`` for simpo and orpo.
    """
    unknown = [name for name in names if name not in LOSSES]
    if unknown:
        raise ValueError(f"Unknown loss type(s) {unknown}; known: {', '.join(LOSSES)}.")
    problem = mixing_problem(names)
    if problem:
        raise ValueError(problem + ".")
    return sum(
        (weight * LOSSES[name](logps, args).mean() for name, weight in zip(names, weights, strict=True)),
        start=torch.zeros((), device=logps.chosen.device),
    )
