"""Publishing to the Hugging Face Hub: an adapter in one atomic commit, a dataset as Parquet.

The token comes from ``HF_TOKEN`` or the huggingface_hub login and is only ever handed to the
client: it is never printed, logged or written. Its write access is checked before anything
is uploaded (and, when a recipe asks to push, before training starts). After a push the remote
files at the new commit are compared with what was sent, size and hash, so "pushed" means
"verified on the Hub".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_recipe.errors import DpoRecipeError

ADAPTER_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "recipe.yaml",
    "metrics.json",
    "eval_report.json",
    "README.md",
)


class HubError(DpoRecipeError):
    """A Hub operation cannot be done as asked (token, repo, verification)."""


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
        who = HfApi().whoami(token=token)
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


def _verify(api: Any, repo_id: str, repo_type: str, commit: str, local: dict[str, Path], token: str) -> None:
    remote = {
        f.path: f
        for f in api.get_paths_info(
            repo_id, list(local), revision=commit, repo_type=repo_type, expand=True, token=token
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


def push_adapter(
    output_dir: Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Adapter (safetensors only), tokenizer, recipe, metrics, plots and card in one commit, then verified."""
    from huggingface_hub import CommitOperationAdd, HfApi, ModelCard

    from dpo_recipe.cards import ADAPTER_PLACEHOLDER

    files = adapter_files(output_dir)
    token = writable_token(repo_id)
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
    operations = []
    for path_in_repo, path in files.items():
        content: Any = str(path)
        if path_in_repo == "README.md":  # the usage snippet and model-index name the repo it now lives in
            card = ModelCard(path.read_text(encoding="utf-8").replace(ADAPTER_PLACEHOLDER, repo_id))
            card.data.model_name = repo_id.split("/")[-1]
            content = str(card).encode("utf-8")
        operations.append(CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=content))
    info = api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message or f"Upload {Path(output_dir).name}",
        revision=revision,
        token=token,
    )
    pushed = {op.path_in_repo: op for op in operations}
    verify_paths = {p: files[p] for p in pushed if p != "README.md"}
    _verify(api, repo_id, "model", info.oid, verify_paths, token)
    return PushResult(url=f"{api.endpoint}/{repo_id}", commit=info.oid, files=len(operations))


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
