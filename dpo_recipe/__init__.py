"""dpo-recipe: DPO + LoRA on small chat models from YAML recipes, with Hub-ready artifacts."""

__version__ = "0.1.0"
