"""Held-out evaluation: pair scoring and reward accuracy, base-versus-tuned answers and their checks, the report and
its charts, the ``dpo-recipe eval`` / ``python -m dpo_recipe.evaluation`` command."""
