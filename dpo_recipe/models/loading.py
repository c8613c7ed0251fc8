"""Loading tokenizers and base models from a Hub id, a local directory or a GGUF file, and checking LoRA targets.

Every load goes through ``from_pretrained`` on a Hub id or directory; a GGUF file is first
converted to a cached safetensors directory (``dpo_recipe.models.gguf``), so one path serves all three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpo_recipe.config.schema import ModelSection
from dpo_recipe.errors import ModelError
from dpo_recipe.models.gguf import converted_gguf_dir
from dpo_recipe.models.tiny import TINY_MODEL, cached_tiny_model

# the files save_pretrained writes for a tokenizer (and its chat template): what a run or an export saves of it
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


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


def resolve_model_source(model: ModelSection) -> str:
    """What ``from_pretrained`` should load: the Hub id / directory, the cached GGUF conversion, or
    the tiny test model (``builtin:tiny``, built on first use)."""
    if model.gguf_file:
        return str(converted_gguf_dir(model.gguf_file))
    if model.name_or_path == TINY_MODEL:
        return str(cached_tiny_model())
    return model.name_or_path


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
    if model.chat_template:
        tokenizer.chat_template = read_chat_template(model.chat_template)
    return _with_pad_token(tokenizer)


def read_chat_template(name_or_path: str) -> str:
    """A packaged template by name (``dpo_recipe/models/chat_templates/NAME.jinja``) or a .jinja file's text."""
    packaged = Path(__file__).resolve().parent / "chat_templates"
    path = packaged / f"{name_or_path}.jinja"
    if not path.is_file():
        path = Path(name_or_path).expanduser()
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in packaged.glob("*.jinja")))
        raise ModelError(
            f"model.chat_template '{name_or_path}': no such file, and not a packaged template (packaged: {names})."
        )
    return path.read_text(encoding="utf-8")


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


def trainable_token_ids(tokens: list[str], tokenizer: Any) -> list[int]:
    """The vocabulary ids of ``lora.trainable_tokens``, each of which must be one whole token."""
    ids, problems = [], []
    for token in tokens:
        pieces = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(pieces) == 1:
            ids.append(pieces[0])
        else:
            problems.append(f"{token!r} is {len(pieces)} tokens")
    if problems:
        raise ModelError(
            f"lora.trainable_tokens: {'; '.join(problems)} in this tokenizer; each entry must be one token "
            "(the chat template's markers, as the tokenizer spells them). Remove it or fix its spelling."
        )
    return ids


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
