"""Talking to the Hugging Face Hub safely: retries with backoff, HTTP status, a write-token check, and
reading back the recipe a pushed adapter was trained with (``train --from-hub``). A leaf: every stage
may use it, it uses none.

Retries: huggingface_hub 2.x already retries (``http_backoff``: 5 retries, 1-8 s exponential, on
timeouts, network errors, dropped connections and 408 / 429 / 5xx) the preupload call, the LFS
batch, upload and verify calls and tree listing, but not ``whoami``, ``create_repo``,
``repo_info``, ``paths-info`` or the commit itself, and its HTTP client has no timeout. Here the
calls that are safe to repeat are retried too, with backoff (``HUB_ATTEMPTS`` tries); the commit is
made against the head it was computed from (``parent_commit``), so it is repeated only when it
certainly did not land: after a failure the remote head is read back, and a head that moved is
checked file by file against what was sent.

The token comes from ``HF_TOKEN`` or the huggingface_hub login and is only ever handed to the
client: it is never printed, logged or written. Its write access is checked before anything
is uploaded (and, when a recipe asks to push, before training starts). After a push the remote
files at the new commit are compared with what was sent, size and hash, so "pushed" means
"verified on the Hub".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpo_recipe.errors import DpoRecipeError, RecipeError

HUB_ATTEMPTS = 4


TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)


class HubError(DpoRecipeError):
    """A Hub operation cannot be done as asked (token, repo, verification)."""


def _backoff_s(attempt: int) -> float:
    """Seconds to wait after failed try ``attempt`` (1-based): 1, 2, 4 ... scaled by DPO_RECIPE_HUB_BACKOFF."""
    return float(os.environ.get("DPO_RECIPE_HUB_BACKOFF", "1")) * 2 ** (attempt - 1)


def bound_waits() -> None:
    """Give huggingface_hub's shared HTTP client a timeout (it has none), so a stalled Hub fails and is retried.

    ``DPO_RECIPE_HUB_TIMEOUT`` seconds (default 60) between bytes, not for a whole transfer.
    """
    import httpx2
    from huggingface_hub.utils import get_session

    get_session().timeout = httpx2.Timeout(float(os.environ.get("DPO_RECIPE_HUB_TIMEOUT", "60")), connect=10.0)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a failed Hub call (``HfHubHTTPError`` and the HTTP client's errors), None without one."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from: huggingface_hub wraps a failed LFS upload's HTTP error in a
    ``RuntimeError("Error while uploading ...")``."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 8:
        chain.append(chain[-1].__cause__)
    return chain


def _transient(exc: BaseException) -> bool:
    """A failure a later try may not see: a dropped or timed-out connection, or 408 / 429 / 5xx."""
    import httpx2

    return any(isinstance(e, httpx2.TransportError) or http_status(e) in TRANSIENT_STATUS for e in _causes(exc))


def _describe_failure(exc: BaseException) -> str:
    status = next((http_status(e) for e in _causes(exc) if http_status(e)), None)
    return f"HTTP {status}" if status else type(_causes(exc)[-1]).__name__


def retrying(call: Callable[[], Any], what: str) -> Any:
    """``call()``, repeated with backoff while it fails transiently; only for calls that are safe to repeat."""
    for attempt in range(1, HUB_ATTEMPTS + 1):
        try:
            return call()
        except Exception as exc:
            if not _transient(exc):
                raise
            if attempt == HUB_ATTEMPTS:
                raise HubError(
                    f"{what} failed {HUB_ATTEMPTS} times ({_describe_failure(exc)}); the Hub may be down. "
                    "Nothing was changed by this step: re-run the same command later."
                ) from None
            time.sleep(_backoff_s(attempt))
    raise AssertionError("unreachable")


def checked_repo_id(repo_id: str, option: str = "--repo-id") -> str:
    """``repo_id`` when it is a Hub repo id ``USER/NAME``; a ``HubError`` naming ``option`` and the rule otherwise."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        if repo_id.count("/") != 1:
            raise HFValidationError(repo_id)
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(
            f"{option} {repo_id!r} is not a Hub repo id: give USER/NAME (or ORG/NAME), letters, digits, '-', '_' "
            "and '.', at most 96 characters, not starting or ending with '-' or '.'."
        ) from None
    return repo_id


def writable_token(repo_id: str) -> str:
    """The user's token, checked for write access to ``repo_id``'s namespace, or a clear error."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    checked_repo_id(repo_id)
    token = get_token()
    if not token:
        raise HubError(
            f"Pushing to '{repo_id}' needs a Hugging Face token with write access: set HF_TOKEN or run "
            "'hf auth login' (create one at https://huggingface.co/settings/tokens)."
        )
    if constants.HF_HUB_OFFLINE:
        raise HubError(
            f"Pushing to '{repo_id}' needs the Hub, but HF_HUB_OFFLINE=1 is set (often left from offline training). "
            "Run the command with HF_HUB_OFFLINE=0 (or unset it)."
        )
    try:
        who = retrying(lambda: HfApi().whoami(token=token), "Checking the Hugging Face token")
    except HfHubHTTPError:
        raise HubError("The Hugging Face token was rejected (HF_TOKEN or the saved login); create a new one.") from None
    role = who.get("auth", {}).get("accessToken", {}).get("role")
    namespace = repo_id.split("/")[0]
    allowed = {who.get("name")} | {org.get("name") for org in who.get("orgs", [])}
    if role not in (None, "write", "fineGrained") or namespace not in allowed:
        raise HubError(
            f"The Hugging Face token of '{who.get('name')}' cannot write to '{repo_id}' (role: {role}). "
            "Use a token with write access to that namespace."
        )
    return token


def recipe_from_hub(repo: str) -> Path:
    """The resolved ``recipe.yaml`` of an adapter repo pushed by dpo-recipe (``USER/NAME[@REVISION]``).

    That file pins everything the run used, the dataset's commit included, so training from it
    repeats the run.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    repo_id, _, revision = repo.partition("@")
    checked_repo_id(repo_id, option="--from-hub")
    try:
        return Path(hf_hub_download(repo_id, "recipe.yaml", revision=revision or None))
    except LocalEntryNotFoundError:
        raise RecipeError(
            f"--from-hub {repo}: the Hub cannot be reached (or HF_HUB_OFFLINE=1) and its recipe.yaml is not "
            "in the local cache. Connect, or unset HF_HUB_OFFLINE."
        ) from None
    except RemoteEntryNotFoundError:
        raise RecipeError(
            f"--from-hub {repo}: the repo has no recipe.yaml, so it was not pushed by dpo-recipe. "
            "Train from a recipe instead (--recipe)."
        ) from None
    except RepositoryNotFoundError:
        raise RecipeError(
            f"--from-hub {repo}: no such model repo, or it is private and no token with access is set (HF_TOKEN)."
        ) from None
    except HfHubHTTPError as exc:
        status = http_status(exc) or "no response"
        raise RecipeError(f"--from-hub {repo}: the Hub answered {status}; check the revision, or retry.") from None
