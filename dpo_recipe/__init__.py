"""dpo-recipe: DPO + LoRA on small chat models from YAML recipes, with Hub-ready artifacts.

The Python API (``dpo_recipe.api``) is re-exported here lazily: ``from dpo_recipe import train``
loads it on first use, so importing the package (and ``dpo-recipe --help``) stays fast and does
not import torch.

``train`` is also the name of the module ``python -m dpo_recipe.train`` runs (and ``iterate`` of the
module ``dpo_recipe.iterate``), and importing a submodule sets the package attribute of its name to
the module, which would shadow the function (``from dpo_recipe import train`` returning a module
after ``import dpo_recipe.train``). The package's module class keeps the API's names for the API's
functions; the submodules stay importable by their dotted names (``from dpo_recipe.train import
main``).
"""

import sys
import types
from typing import Any

__version__ = "0.1.0"

_API = (
    "chat",
    "compare",
    "evaluate",
    "export",
    "generate_dataset",
    "iterate",
    "judge",
    "load_adapter",
    "push",
    "sample",
    "train",
)
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from dpo_recipe import api

        return getattr(api, name)
    raise AttributeError(f"module 'dpo_recipe' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


class _Package(types.ModuleType):
    """Refuses to let a submodule named like an API function replace it as a package attribute."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return  # the import system's binding of dpo_recipe.train: the function stays
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
