"""dpo-recipe: DPO + LoRA on small chat models from YAML recipes, with Hub-ready artifacts.

The Python API (``dpo_recipe.api``) is re-exported here lazily: ``from dpo_recipe import train``
loads it on first use, so importing the package (and ``dpo-recipe --help``) stays fast and does
not import torch.
"""

from typing import Any

__version__ = "0.1.0"

_API = ("chat", "evaluate", "export", "generate_dataset", "load_adapter", "push", "train")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from dpo_recipe import api

        return getattr(api, name)
    raise AttributeError(f"module 'dpo_recipe' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
