"""One module per training objective (``training.objective``), each an ``Objective`` (``base``): ``dpo`` (pairs,
every DPO loss type, packed), ``kto`` (unpaired rows, TRL's KTOTrainer), ``sft`` (completions, TRL's
SFTTrainer). ``objective_for`` picks the one a recipe names; nothing outside this package and the recipe's
checks asks which objective it is."""

from __future__ import annotations

from dpo_recipe.config.schema import Recipe
from dpo_recipe.training.objectives.base import Objective


def objective_named(name: str) -> Objective:
    """The objective ``training.objective: name`` trains with (a name the recipe's validation accepted)."""
    from dpo_recipe.training.objectives.dpo import DPO
    from dpo_recipe.training.objectives.kto import KTO
    from dpo_recipe.training.objectives.sft import SFT

    return {objective.name: objective for objective in (DPO(), KTO(), SFT())}[name]


def objective_for(recipe: Recipe) -> Objective:
    """The objective ``recipe`` trains with."""
    return objective_named(recipe.training.objective)
