"""The Hugging Face Hub: publishing an adapter in one atomic commit and a dataset as Parquet, and
reading back the recipe a pushed adapter was trained with (``train --from-hub``).

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

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_recipe.errors import DpoRecipeError, RecipeError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
ADAPTER_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    *TOKENIZER_FILES,
    "recipe.yaml",
    "metrics.json",
    "eval_report.json",
    "README.md",
)
EXPORT_FILES = (  # what `dpo-recipe export` writes, besides its *.gguf / *.safetensors weights
    "Modelfile",
    "export.json",
    "README.md",
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    *TOKENIZER_FILES,
)


HUB_ATTEMPTS = 4
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)


class HubError(DpoRecipeError):
    """A Hub operation cannot be done as asked (token, repo, verification)."""


def _backoff_s(attempt: int) -> float:
    """Seconds to wait after failed try ``attempt`` (1-based): 1, 2, 4 ... scaled by DPO_RECIPE_HUB_BACKOFF."""
    return float(os.environ.get("DPO_RECIPE_HUB_BACKOFF", "1")) * 2 ** (attempt - 1)


def _bound_waits() -> None:
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


def _transient(exc: BaseException) -> bool:
    """A failure a later try may not see: a dropped or timed-out connection, or 408 / 429 / 5xx."""
    import httpx2

    return isinstance(exc, httpx2.TransportError) or http_status(exc) in TRANSIENT_STATUS


def _describe_failure(exc: BaseException) -> str:
    status = http_status(exc)
    return f"HTTP {status}" if status else type(exc).__name__


def _retrying(call: Callable[[], Any], what: str) -> Any:
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


@dataclass
class PushResult:
    url: str
    commit: str
    files: int


def writable_token(repo_id: str) -> str:
    """The user's token, checked for write access to ``repo_id``'s namespace, or a clear error."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = get_token()
    if not token:
        raise HubError(
            f"Pushing to '{repo_id}' needs a Hugging Face token with write access: set HF_TOKEN or run "
            "'hf auth login' (create one at https://huggingface.co/settings/tokens)."
        )
    try:
        who = _retrying(lambda: HfApi().whoami(token=token), "Checking the Hugging Face token")
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


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _differences(api: Any, repo_id: str, repo_type: str, commit: str, local: dict[str, Path], token: str) -> list:
    """What differs between the local files and the repo at ``commit`` (size, sha256 or git blob id)."""
    remote = {
        f.path: f
        for f in _retrying(
            lambda: api.get_paths_info(
                repo_id, list(local), revision=commit, repo_type=repo_type, expand=True, token=token
            ),
            f"Reading back '{repo_id}'",
        )
    }
    problems = []
    for path_in_repo, path in local.items():
        data = path.read_bytes()
        entry = remote.get(path_in_repo)
        if entry is None:
            problems.append(f"{path_in_repo} is missing")
        elif entry.size != len(data):
            problems.append(f"{path_in_repo} has {entry.size} bytes, expected {len(data)}")
        elif entry.lfs is not None and entry.lfs.sha256 != hashlib.sha256(data).hexdigest():
            problems.append(f"{path_in_repo} has another sha256")
        elif entry.lfs is None and entry.blob_id != _git_blob_sha1(data):
            problems.append(f"{path_in_repo} has another git blob id")
    return problems


def _verify(api: Any, repo_id: str, repo_type: str, commit: str, local: dict[str, Path], token: str) -> None:
    problems = _differences(api, repo_id, repo_type, commit, local, token)
    if problems:
        raise HubError(f"The push to '{repo_id}' at {commit} did not verify: {'; '.join(problems)}. Push again.")


def adapter_files(output_dir: Path) -> dict[str, Path]:
    output_dir = Path(output_dir)
    if not (output_dir / "adapter_model.safetensors").exists():
        raise HubError(f"{output_dir} holds no adapter_model.safetensors: give a finished training output directory.")
    if not (output_dir / "metrics.json").exists():
        raise HubError(f"{output_dir} is an unfinished run (no metrics.json): resume it before pushing.")
    files = {name: output_dir / name for name in ADAPTER_FILES if (output_dir / name).is_file()}
    files.update({f"plots/{p.name}": p for p in sorted((output_dir / "plots").glob("*.png"))})
    return files


def push_dir(
    directory: Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """A training output directory or a ``dpo-recipe export`` directory in one commit, then verified.

    A training run sends its adapter (safetensors only), tokenizer, recipe, metrics, plots and card;
    an export (it holds ``export.json``) every file it wrote: the GGUF and ``Modelfile`` or the
    merged safetensors, with its own card. The commit deletes the files of that kind an earlier push
    left and this one lacks, and the card (README.md) is sent with its placeholder replaced by the
    repo id, so its usage lines name the repo it now lives in.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, ModelCard

    from dpo_recipe.cards import ADAPTER_PLACEHOLDER, EXPORT_PLACEHOLDER
    from dpo_recipe.export import MANIFEST

    directory = Path(directory)
    if (directory / MANIFEST).exists():
        files = {p.name: p for p in sorted(directory.iterdir()) if p.is_file()}
        managed, placeholder = _export_managed, EXPORT_PLACEHOLDER
    else:
        files, managed, placeholder = adapter_files(directory), _adapter_managed, ADAPTER_PLACEHOLDER
    _bound_waits()
    token = writable_token(repo_id)
    api = HfApi()
    _retrying(lambda: api.create_repo(repo_id, private=private, exist_ok=True, token=token), f"Creating '{repo_id}'")
    if revision:
        _retrying(
            lambda: api.create_branch(repo_id, branch=revision, exist_ok=True, token=token),
            f"Creating branch '{revision}' of '{repo_id}'",
        )
    operations = []
    for path_in_repo, path in files.items():
        content: Any = str(path)
        if path_in_repo == "README.md":
            card = ModelCard(path.read_text(encoding="utf-8").replace(placeholder, repo_id))
            card.data.model_name = repo_id.split("/")[-1]
            content = str(card).encode("utf-8")
        operations.append(CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=content))
    verify_paths = {p: files[p] for p in files if p != "README.md"}
    message = commit_message or f"Upload {directory.name}"
    commit = _retrying_commit(api, repo_id, operations, set(files), managed, verify_paths, message, revision, token)
    _verify(api, repo_id, "model", commit, verify_paths, token)
    return PushResult(url=f"{api.endpoint}/{repo_id}", commit=commit, files=len(operations))


def _adapter_managed(path_in_repo: str) -> bool:
    """Paths an adapter push owns: stale ones from an earlier push are deleted so the tree is one run's files."""
    return path_in_repo in ADAPTER_FILES or path_in_repo.startswith("plots/")


def _export_managed(path_in_repo: str) -> bool:
    """Paths an export push owns: an earlier export's model files go, so a GGUF never sits beside another."""
    return path_in_repo in EXPORT_FILES or path_in_repo.endswith((".gguf", ".safetensors"))


def _retrying_commit(
    api: Any,
    repo_id: str,
    additions: list,
    paths: set[str],
    managed: Callable[[str], bool],
    verify_paths: dict[str, Path],
    message: str,
    revision: str | None,
    token: str,
) -> str:
    """One commit of every file, tried up to ``HUB_ATTEMPTS`` times and landed exactly once; returns its id.

    Each try reads the head, deletes managed files this push lacks and commits on top of that
    head only (``parent_commit``). After a failure, a head that moved and now holds exactly our
    files means the commit landed (its response was lost); any other failure changed nothing, so
    the commit is tried again on the new head. Two pushes racing each other therefore leave one
    whole run's files, never a mix.
    """
    from huggingface_hub import CommitOperationDelete

    branch = revision or "main"
    head = None
    for attempt in range(1, HUB_ATTEMPTS + 1):
        try:
            head = _retrying(lambda: api.repo_info(repo_id, revision=branch, token=token).sha, f"Reading '{repo_id}'")
            remote = _retrying(
                lambda head=head: api.list_repo_files(repo_id, revision=head, token=token), f"Listing '{repo_id}'"
            )
            stale = [CommitOperationDelete(p) for p in remote if managed(p) and p not in paths]
            return api.create_commit(
                repo_id,
                [*additions, *stale],
                commit_message=message,
                revision=revision,
                parent_commit=head,
                token=token,
            ).oid
        except Exception as exc:
            conflict = http_status(exc) == 412  # another commit landed first: ours did not
            if not (conflict or _transient(exc)):
                raise
            failure = _describe_failure(exc)
        now = _retrying(lambda: api.repo_info(repo_id, revision=branch, token=token).sha, f"Reading '{repo_id}'")
        if now != head and not _differences(api, repo_id, "model", now, verify_paths, token):
            return now
        if attempt < HUB_ATTEMPTS:
            time.sleep(_backoff_s(attempt))
    raise HubError(
        f"Pushing to '{repo_id}' failed {HUB_ATTEMPTS} times (last: {failure}). Nothing was committed: the "
        f"repo's {branch} is still at its previous commit {now[:12]}, so no new model sits beside an old card. "
        "Re-run the same push command to complete it."
    )


def push_dataset(
    splits: dict[str, list[dict[str, Any]]],
    card_path: Path | None,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
) -> PushResult:
    """Splits as Parquet (``datasets.push_to_hub``), then the dataset card pointing at those files."""
    import datasets
    from huggingface_hub import DatasetCard, HfApi

    token = writable_token(repo_id)
    dataset = datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})
    dataset.push_to_hub(repo_id, private=private, revision=revision, token=token)
    api = HfApi()
    if card_path is not None and card_path.exists():
        card = DatasetCard.load(card_path)
        card.data.configs = [
            {
                "config_name": "default",
                "data_files": [{"split": name, "path": f"data/{name}-*"} for name in splits],
            }
        ]
        info = api.upload_file(
            path_or_fileobj=str(card).encode("utf-8"),
            path_in_repo="README.md",
            repo_id=repo_id,
            repo_type="dataset",
            revision=revision,
            token=token,
            commit_message="Add the dataset card",
        )
        commit = info.oid
    else:
        commit = api.dataset_info(repo_id, revision=revision, token=token).sha
    return PushResult(url=f"{api.endpoint}/datasets/{repo_id}", commit=commit, files=len(splits) + 1)


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
