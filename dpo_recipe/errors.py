"""User-facing errors: one paragraph that names the file, key or row and says what to do.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""


class DpoRecipeError(Exception):
    """An error caused by the user's input, with a message that explains the fix."""


class RecipeError(DpoRecipeError):
    """A recipe (YAML or ``--set`` override) is invalid."""


class DataError(DpoRecipeError):
    """A preference dataset cannot be read or fails the linter."""


class ModelError(DpoRecipeError):
    """A model, tokenizer or adapter cannot be used as asked."""
