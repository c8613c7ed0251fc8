"""User-facing errors: one paragraph that names the file, key or row and says what to do.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""

import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class DpoRecipeError(Exception):
    """An error caused by the user's input, with a message that explains the fix."""

    exit_status = 2  # what a script entry point exits with; interruptions use the shell's 128 + signal


class RunInterrupted(DpoRecipeError):
    """Training stopped on SIGINT / SIGTERM after saving a checkpoint; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_status = 128 + signum


class SaveError(DpoRecipeError):
    """Writing a checkpoint or an artifact failed (disk full, no permission); earlier saves are intact."""


class RecipeError(DpoRecipeError):
    """A recipe (YAML or ``--set`` override) is invalid."""


class DataError(DpoRecipeError):
    """A preference dataset cannot be read or fails the linter."""


class ModelError(DpoRecipeError):
    """A model, tokenizer or adapter cannot be used as asked."""


class CacheError(DpoRecipeError):
    """``DPO_RECIPE_CACHE`` names no usable folder (empty, or a file)."""


class JudgeError(DpoRecipeError):
    """A judge cannot judge as asked: an endpoint down, slow or answering nonsense, a reward model of several
    labels, or answers that give no pair at all."""


class ExportError(DpoRecipeError):
    """A merged model cannot be exported as asked (format, type, architecture, output directory)."""


def exit_on_user_error(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a script entry point; a user error becomes one ``Error:`` paragraph and exit status 2 (130 / 143
    after SIGINT / SIGTERM, as a shell reports a signal)."""
    try:
        return function(*args, **kwargs)
    except DpoRecipeError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_status) from None
