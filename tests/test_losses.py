"""dpo_recipe.losses on numbers worked out by hand; tests/test_trainer.py checks each against TRL's DPOTrainer."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch

from dpo_recipe.losses import PAIRWISE_LOSSES, PairLogps, preference_loss

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
    with pytest.raises(ValueError, match="Unknown loss type.*'simpo'.*known: sigmoid, hinge"):
        preference_loss(["simpo"], [1.0], two_pairs(), ARGS)


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
