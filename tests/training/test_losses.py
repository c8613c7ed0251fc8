"""dpo_recipe.training.losses on numbers worked out by hand; tests/test_trainer.py checks each against TRL's DPOTrainer
(and simpo / orpo against TRL's CPO / ORPO loss functions on the packed forward's log-probs)."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch

from dpo_recipe.training.losses import PAIRWISE_LOSSES, REFERENCE_FREE_LOSSES, PairLogps, preference_loss

ARGS = SimpleNamespace(beta=0.5, label_smoothing=0.0, discopop_tau=0.05)


def two_pairs() -> PairLogps:
    """Pair 0: log-ratios +1 (chosen) and -2 (rejected), margin 3; pair 1: -1 and +1, margin -2."""
    return PairLogps(
        chosen=torch.tensor([-10.0, -20.0], requires_grad=True),
        rejected=torch.tensor([-14.0, -18.0]),
        ref_chosen=torch.tensor([-11.0, -19.0]),
        ref_rejected=torch.tensor([-12.0, -19.0]),
        chosen_tokens=torch.tensor([4, 5]),
        rejected_tokens=torch.tensor([2, 1]),
    )


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))  # -log sigmoid(-x)


def test_sigmoid_is_dpo() -> None:
    # -log sigmoid(beta * margin) = softplus(-beta * margin): margins 3 and -2, beta 0.5
    loss = PAIRWISE_LOSSES["sigmoid"](two_pairs(), ARGS)
    assert loss.tolist() == pytest.approx([softplus(-1.5), softplus(1.0)])


def test_hinge_is_zero_past_the_margin() -> None:
    # relu(1 - 0.5 * 3) = 0 and relu(1 + 0.5 * 2) = 2
    assert PAIRWISE_LOSSES["hinge"](two_pairs(), ARGS).tolist() == pytest.approx([0.0, 2.0])


def test_ipo_works_on_per_token_log_ratios() -> None:
    # pair 0: 1/4 - (-2)/2 = 1.25; pair 1: -1/5 - 1/1 = -1.2; the target is 1 / (2 * 0.5) = 1
    loss = PAIRWISE_LOSSES["ipo"](two_pairs(), ARGS)
    assert loss.tolist() == pytest.approx([(1.25 - 1) ** 2, (-1.2 - 1) ** 2])


def test_sft_is_the_token_mean_over_the_batch_and_robust_without_smoothing_is_dpo() -> None:
    pairs = two_pairs()
    assert PAIRWISE_LOSSES["sft"](pairs, ARGS).tolist() == pytest.approx([30 / 9, 30 / 9])  # not (10/4 + 20/5) / 2
    assert torch.allclose(PAIRWISE_LOSSES["robust"](pairs, ARGS), PAIRWISE_LOSSES["sigmoid"](pairs, ARGS))


def test_preference_loss_is_the_weighted_sum_of_means() -> None:
    loss = preference_loss(["sigmoid", "hinge", "sft"], [1.0, 0.5, 0.1], two_pairs(), ARGS)
    expected = (softplus(-1.5) + softplus(1.0)) / 2 + 0.5 * 1.0 + 0.1 * 30 / 9
    assert loss.item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="Unknown loss type.*'kto'.*known: sigmoid, hinge.*simpo, orpo"):
        preference_loss(["kto"], [1.0], two_pairs(), ARGS)
    with pytest.raises(ValueError, match="simpo is reference-free .* and trains alone"):
        preference_loss(["sigmoid", "simpo"], [1.0, 1.0], two_pairs(), ARGS)


@pytest.mark.parametrize("name", PAIRWISE_LOSSES)
def test_every_loss_gives_one_finite_value_per_pair_and_a_gradient(name: str) -> None:
    pairs = two_pairs()
    loss = PAIRWISE_LOSSES[name](pairs, SimpleNamespace(beta=0.5, label_smoothing=0.1, discopop_tau=0.05))
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    loss.mean().backward()
    assert torch.isfinite(pairs.chosen.grad).all() and pairs.chosen.grad.abs().sum() > 0


def test_the_table_is_trls_list_of_dpo_losses() -> None:
    from trl import DPOConfig

    documented = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    assert list(PAIRWISE_LOSSES) == re.findall(r"`'(\w+)'`", documented)


def free_args(**settings: float) -> SimpleNamespace:
    return SimpleNamespace(**{"beta": 0.5, "label_smoothing": 0.0, "simpo_gamma": 0.5, "cpo_alpha": 0.0, **settings})


def with_prompts() -> PairLogps:
    """two_pairs without a reference, plus prompt log-probs: means per completion token are chosen -2.5 and -4,
    rejected -7 and -18; prompts -6 over 2 tokens and -4 over 3."""
    p = two_pairs()
    return PairLogps(
        p.chosen,
        p.rejected,
        None,
        None,
        p.chosen_tokens,
        p.rejected_tokens,
        torch.tensor([-6.0, -4.0]),
        torch.tensor([2, 3]),
    )


def test_simpo_is_the_logistic_loss_on_the_mean_log_prob_margin_less_gamma() -> None:
    # beta * (margin of means - gamma / beta): 0.5 * (4.5 - 1) = 1.75 and 0.5 * (14 - 1) = 6.5
    loss = REFERENCE_FREE_LOSSES["simpo"](with_prompts(), free_args())
    assert loss.tolist() == pytest.approx([softplus(-1.75), softplus(-6.5)])
    smoothed = REFERENCE_FREE_LOSSES["simpo"](with_prompts(), free_args(label_smoothing=0.1))
    assert smoothed[0].item() == pytest.approx(0.9 * softplus(-1.75) + 0.1 * softplus(1.75))
    # CPO-SimPO adds cpo_alpha x the chosen answers' NLL (completion tokens only): 30 / 9
    cpo = REFERENCE_FREE_LOSSES["simpo"](with_prompts(), free_args(cpo_alpha=0.1))
    assert cpo.tolist() == pytest.approx([softplus(-1.75) + 0.1 * 30 / 9, softplus(-6.5) + 0.1 * 30 / 9])


def test_orpo_is_the_nll_of_prompt_and_chosen_less_beta_log_sigmoid_of_the_log_odds_ratio() -> None:
    def log_odds(chosen: float, rejected: float) -> float:
        return chosen - rejected - (math.log(1 - math.exp(chosen)) - math.log(1 - math.exp(rejected)))

    nll = (30 + 10) / (9 + 5)  # chosen and prompt tokens of the whole batch
    loss = REFERENCE_FREE_LOSSES["orpo"](with_prompts(), free_args())
    expected = [nll + 0.5 * softplus(-log_odds(-2.5, -7.0)), nll + 0.5 * softplus(-log_odds(-4.0, -18.0))]
    assert loss.tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="prompt tokens too"):
        REFERENCE_FREE_LOSSES["orpo"](two_pairs(), free_args())


def test_reference_free_losses_equal_trls_cpo_and_orpo_loss_functions() -> None:
    """On random mean log-probs, with TRL's own functions called with a stand-in ``self``."""
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 30, (2, 6), generator=generator)
    means = -torch.rand(2, 6, generator=generator, dtype=torch.float64) * 3 - 0.05
    pairs = PairLogps(
        means[0] * tokens[0], means[1] * tokens[1], None, None, tokens[0], tokens[1], torch.zeros(6), torch.ones(6)
    )
    device = SimpleNamespace(device="cpu")
    for settings in ({}, {"label_smoothing": 0.2, "simpo_gamma": 1.5, "beta": 2.0}):
        args = free_args(**settings)
        trl_self = SimpleNamespace(loss_type="simpo", alpha=0.0, accelerator=device, **vars(args))
        losses, chosen_rewards, _ = CPOTrainer.cpo_loss(trl_self, pairs.chosen_mean(), pairs.rejected_mean())
        assert torch.allclose(REFERENCE_FREE_LOSSES["simpo"](pairs, args), losses)
        assert torch.allclose(chosen_rewards, args.beta * means[0])
        trl_self = SimpleNamespace(beta=args.beta, accelerator=device)
        ratio_losses = ORPOTrainer.odds_ratio_loss(trl_self, pairs.chosen_mean(), pairs.rejected_mean())[0]
        nll = -pairs.chosen.sum() / (tokens[0].sum() + 6)  # prompts: one token of log-prob 0 each
        assert torch.allclose(REFERENCE_FREE_LOSSES["orpo"](pairs, args), nll - ratio_losses)
