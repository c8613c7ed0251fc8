"""Publishing to the Hub: an adapter (or an export) in one atomic, verified commit, a dataset as Parquet."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_recipe.models.loading import TOKENIZER_FILES
from dpo_recipe.utils.hub import (
    HUB_ATTEMPTS,
    HubError,
    _backoff_s,
    _describe_failure,
    _transient,
    bound_waits,
    http_status,
    retrying,
    writable_token,
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


@dataclass
class PushResult:
    url: str
    commit: str
    files: int


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _differences(
    api: Any, repo_id: str, repo_type: str, commit: str, local: dict[str, Path | bytes], token: str
) -> list:
    """What differs between what was sent (a file, or the bytes sent for it) and the repo at ``commit``
    (size, sha256 or git blob id)."""
    remote = {
        f.path: f
        for f in retrying(
            lambda: api.get_paths_info(
                repo_id, list(local), revision=commit, repo_type=repo_type, expand=True, token=token
            ),
            f"Reading back '{repo_id}'",
        )
    }
    problems = []
    for path_in_repo, sent in local.items():
        data = sent if isinstance(sent, bytes) else sent.read_bytes()
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


def _verify(api: Any, repo_id: str, repo_type: str, commit: str, local: dict[str, Path | bytes], token: str) -> None:
    problems = _differences(api, repo_id, repo_type, commit, local, token)
    if problems:
        raise HubError(f"The push to '{repo_id}' at {commit} did not verify: {'; '.join(problems)}. Push again.")


def adapter_files(output_dir: Path) -> dict[str, Path]:
    output_dir = Path(output_dir)
    if not (output_dir / "adapter_model.safetensors").exists():
        raise HubError(f"{output_dir} holds no adapter_model.safetensors: give a finished training output directory.")
    if not (output_dir / "metrics.json").exists():
        raise HubError(f"{output_dir} is an unfinished run (no metrics.json): resume it before pushing.")
    files = {name: output_dir / name for name in ADAPTER_FILES}
    plots = output_dir / "plots"
    if plots.is_dir() and not plots.is_symlink():
        files.update({f"plots/{p.name}": p for p in sorted(plots.glob("*.png"))})
    return {name: path for name, path in files.items() if _own_file(path)}


def _own_file(path: Path) -> bool:
    """A regular file of the folder's own: not a link out of it, nor a hard link to a file elsewhere."""
    return path.is_file() and not path.is_symlink() and path.stat().st_nlink == 1


def export_files(export_dir: Path) -> dict[str, Path]:
    """What ``dpo-recipe export`` wrote in ``export_dir``: the files its ``export.json`` lists, with the manifest
    and the card, each a name an export writes; a ``.env`` or a key left in the folder stays behind."""
    from dpo_recipe.deploy.export import MANIFEST

    try:
        listed = json.loads((export_dir / MANIFEST).read_text(encoding="utf-8"))["files"]
        names = [*listed, MANIFEST, "README.md"]
    except (OSError, ValueError, KeyError, TypeError):
        raise HubError(
            f"{export_dir / MANIFEST} cannot be read as dpo-recipe export's manifest; export again with "
            "'dpo-recipe export --overwrite'."
        ) from None
    files = {}
    for name in names:
        path = export_dir / str(name)
        if _export_managed(str(name)) and "/" not in str(name) and _own_file(path):
            files[str(name)] = path
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

    from dpo_recipe.artifacts.cards import ADAPTER_PLACEHOLDER, EXPORT_PLACEHOLDER
    from dpo_recipe.deploy.export import MANIFEST

    directory = Path(directory)
    if (directory / MANIFEST).exists():
        files, managed, placeholder = export_files(directory), _export_managed, EXPORT_PLACEHOLDER
    else:
        files, managed, placeholder = adapter_files(directory), _adapter_managed, ADAPTER_PLACEHOLDER
    bound_waits()
    token = writable_token(repo_id)
    api = HfApi()
    retrying(lambda: api.create_repo(repo_id, private=private, exist_ok=True, token=token), f"Creating '{repo_id}'")
    if revision:
        retrying(
            lambda: api.create_branch(repo_id, branch=revision, exist_ok=True, token=token),
            f"Creating branch '{revision}' of '{repo_id}'",
        )
    operations: list = []
    sent: dict[str, Path | bytes] = dict(files)
    for path_in_repo, path in files.items():
        content: Any = str(path)
        if path_in_repo == "README.md":
            card = ModelCard(path.read_text(encoding="utf-8").replace(placeholder, repo_id))
            card.data.model_name = repo_id.split("/")[-1]
            content = sent[path_in_repo] = str(card).encode("utf-8")  # read back as sent, the card included
        operations.append(CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=content))
    message = commit_message or f"Upload {directory.name}"
    commit = _retrying_commit(api, repo_id, operations, set(files), managed, sent, message, revision, token)
    _verify(api, repo_id, "model", commit, sent, token)
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
    sent: dict[str, Path | bytes],
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
            head = retrying(lambda: api.repo_info(repo_id, revision=branch, token=token).sha, f"Reading '{repo_id}'")
            remote = retrying(
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
        try:
            now = retrying(lambda: api.repo_info(repo_id, revision=branch, token=token).sha, f"Reading '{repo_id}'")
        except HubError:
            raise HubError(
                f"Pushing to '{repo_id}' failed ({failure}) and the Hub then stopped answering, so whether the commit "
                "landed is unknown; a commit is whole or absent, never half. Re-run the same push command: it "
                "commits only if needed and verifies every file."
            ) from None
        if now != head and not _differences(api, repo_id, "model", now, sent, token):
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
