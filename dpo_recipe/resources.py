"""Where dpo-recipe's own files live: the packaged ``recipes/`` and ``cards/``, and its cache.

In a wheel the packaged directories are installed inside the package (``dpo_recipe/recipes``); in a
source checkout or editable install they sit at the repository root. Both layouts resolve here,
so nothing else has to know which one it runs from. The cache (GGUF conversions, reference
log-probs) is one directory, ``DPO_RECIPE_CACHE``, so a user or a test can move or clear it whole.
"""

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def packaged_dir(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"dpo_recipe is missing its '{name}/' directory: reinstall the package.")


def cache_root() -> Path:
    """``DPO_RECIPE_CACHE``, or ``~/.cache/dpo_recipe``: where conversions and reference log-probs are kept."""
    return Path(os.environ.get("DPO_RECIPE_CACHE", Path.home() / ".cache" / "dpo_recipe"))
