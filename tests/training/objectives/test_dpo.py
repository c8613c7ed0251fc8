"""dpo_recipe.training.objectives.dpo: the card's table, the report's and the quickstart's words for pairs.
Its trainer (packed, or plain TRL where packing cannot run) is tested in tests/training/test_trainer.py."""

from __future__ import annotations

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.training.objectives.dpo import DPO, RECIPE_TO_OBJECTIVE

REPORT = {
    "overall": {
        "reward_accuracy": 0.75,
        "reward_accuracy_ci95": [0.5, 0.9],
        "pairs": 8,
        "reward_margin": 0.1,
        "reward_ties": 0,
        "base_loglik_accuracy_normalized": 0.5,
        "policy_loglik_accuracy_normalized": 0.625,
    }
}


def test_the_card_lists_cpoconfig_fields_only_where_a_reference_free_loss_reads_them() -> None:
    dpo = DPO()
    plain = [key for key, _, _ in dpo.hyperparameters(load_recipe("tiny-ja"))]
    simpo = dpo.hyperparameters(load_recipe("tiny-ja", ["training.loss_type=simpo", "training.simpo_gamma=0.7"]))
    assert not set(RECIPE_TO_OBJECTIVE) & set(plain)
    assert ("training.simpo_gamma", "CPOConfig simpo_gamma (PackedDPOTrainer)", 0.7) in simpo


def test_held_out_words_are_pairs_and_reward_accuracy() -> None:
    dpo = DPO()
    assert dpo.held_out_line(REPORT) == (
        "held-out reward accuracy: 0.750 (95% CI 0.500-0.900) on 8 pairs (base log-likelihood accuracy 0.500 -> "
        "tuned 0.625, length-normalised)"
    )
    assert dpo.report_lines(REPORT)[0].startswith("Held-out reward accuracy **75.0%** (95% CI 50.0%–90.0%) on 8 pairs")
