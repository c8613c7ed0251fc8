"""Where the packaged ``recipes/`` and ``cards/`` live.

In a wheel they are installed inside the package (``dpo_recipe/recipes``); in a source checkout
or editable install they sit at the repository root. Both layouts resolve here, so nothing else
has to know which one it runs from.
"""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def packaged_dir(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"dpo_recipe is missing its '{name}/' directory: reinstall the package.")
