"""A merged model written as one GGUF file (llama.cpp, Ollama, LM Studio) with gguf-py.

Tensors are named with gguf-py's ``TensorNameMap`` -- the map transformers' GGUF loader inverts --
and put in llama.cpp's layout: the reverse of what that loader undoes (Llama's rotary q/k
permutation, Gemma's norm weights stored as ``w + 1``, GPT-2's Conv1D matrices transposed). Those
facts are per architecture, in ``ARCHITECTURES``.

The metadata comes from one of two places:

- a base that came from a GGUF file keeps that file's metadata (architecture, hyper-parameters,
  tokenizer, licence) as it was: llama.cpp wrote it, and only llama.cpp knows all of it;
- a Hub or local base gets its hyper-parameters from its config and its tokenizer from
  ``tokenizer.json``, for the architectures and tokenizer kinds this module knows.

Either way the chat template is the adapter's (training may have set one the base lacked), and
everything is checked (``check_exportable``) on the meta-device skeleton before any weight loads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from dpo_recipe.errors import ExportError

# --quant names gguf-py's quants module can write (and transformers and llama.cpp read). K-quants and
# i-quants need llama.cpp's importance-aware quantizer (llama-quantize), which gguf-py does not have.
QUANT_TYPES = ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
FLOAT_TYPES = ("f32", "f16", "bf16")
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    **{name: gguf.LlamaFileType[f"MOSTLY_{name.upper()}"] for name in QUANT_TYPES},
}

# Keys of a source GGUF that describe its tensors or are written from the adapter instead.
REWRITTEN_KEYS = (
    "general.architecture",
    "general.file_type",
    "general.quantization_version",
    "tokenizer.chat_template",
)

# Byte-level BPE pre-tokenizers (tokenizer.json's "pre_tokenizer") by llama.cpp's name for them.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_LEVEL_PRE_TOKENIZERS = {
    "gpt-2": [{"type": "ByteLevel", "use_regex": True}],
    "smollm": [{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}],
    "llama-bpe": [{"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}}, {"type": "ByteLevel", "use_regex": False}],
}


def tensor_type(dtype: str | None, quant: str | None) -> str:
    """The one GGUF type the weight matrices are written in: ``quant`` when given, else ``dtype`` (f16)."""
    if quant is None:
        return dtype or "f16"
    if quant.lower() in QUANT_TYPES:
        return quant.lower()
    raise ExportError(
        f"--quant {quant}: gguf-py cannot write it; it writes {', '.join(QUANT_TYPES)}. K-quants and i-quants "
        "(Q4_K_M, IQ4_XS, ...) need llama.cpp's own quantizer: export --dtype f16, then run "
        "llama-quantize model.gguf model-q4_k_m.gguf Q4_K_M."
    )


# ---------------------------------------------------------------------------- architectures


def _rope_theta(parameters: dict[str, Any], what: str) -> float:
    if parameters.get("rope_type", "default") != "default":
        raise ExportError(
            f"{what} uses '{parameters['rope_type']}' rope scaling, which this exporter does not write "
            "(only plain rotary embeddings). Export --format safetensors instead."
        )
    return float(parameters["rope_theta"])


def _decoder_sizes(writer: gguf.GGUFWriter, config: Any) -> None:
    """The sizes every Llama-style decoder config states under the same names."""
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)


def _llama_hyperparameters(writer: gguf.GGUFWriter, config: Any) -> None:
    _decoder_sizes(writer, config)
    writer.add_rope_freq_base(_rope_theta(config.rope_parameters, "The model"))
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _gemma3_hyperparameters(writer: gguf.GGUFWriter, config: Any) -> None:
    """llama.cpp fixes what it does not read (local rope base 10,000, one global layer in six) to Gemma 3's."""
    _decoder_sizes(writer, config)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_freq_base(_rope_theta(config.rope_parameters["full_attention"], "The model's global layers"))
    writer.add_sliding_window(config.sliding_window)


def _gpt2_hyperparameters(writer: gguf.GGUFWriter, config: Any) -> None:
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)


def _rotary_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout: each head's two halves interleaved (transformers' GGUF loader undoes it)."""
    halves = weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
    return halves.swapaxes(1, 2).reshape(weight.shape)


def _llama_layout(name: str, weight: np.ndarray, config: Any) -> np.ndarray:
    if name.endswith("self_attn.q_proj.weight"):
        return _rotary_permute(weight, config.num_attention_heads)
    if name.endswith("self_attn.k_proj.weight"):
        return _rotary_permute(weight, config.num_key_value_heads)
    return weight


def _gemma3_layout(name: str, weight: np.ndarray, config: Any) -> np.ndarray:
    """Gemma scales by (1 + w) in its RMS norms; llama.cpp stores the 1 + w."""
    return weight + 1 if name.endswith("norm.weight") else weight


def _gpt2_layout(name: str, weight: np.ndarray, config: Any) -> np.ndarray:
    """GPT-2's Conv1D stores (in, out); llama.cpp wants (out, in) like every other linear layer."""
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    return np.ascontiguousarray(weight.T) if name.endswith(conv1d) else weight


@dataclass(frozen=True)
class Architecture:
    gguf_arch: gguf.MODEL_ARCH
    write_hyperparameters: Callable[[gguf.GGUFWriter, Any], None]
    to_gguf_layout: Callable[[str, np.ndarray, Any], np.ndarray]


ARCHITECTURES = {  # keyed by transformers' config.model_type
    "llama": Architecture(gguf.MODEL_ARCH.LLAMA, _llama_hyperparameters, _llama_layout),
    "gemma3_text": Architecture(gguf.MODEL_ARCH.GEMMA3, _gemma3_hyperparameters, _gemma3_layout),
    "gpt2": Architecture(gguf.MODEL_ARCH.GPT2, _gpt2_hyperparameters, _gpt2_layout),
}


def architecture(config: Any) -> Architecture:
    found = ARCHITECTURES.get(config.model_type)
    if found is None:
        raise ExportError(
            f"--format gguf: architecture '{config.model_type}' is not supported (supported: "
            f"{', '.join(sorted(ARCHITECTURES))}). Export --format safetensors, or convert that with llama.cpp's "
            "convert_hf_to_gguf.py."
        )
    return found


def _gguf_names(state_names: list[str], config: Any, arch: Architecture) -> Iterator[tuple[str, str]]:
    """``(transformers name, GGUF name)`` for every tensor written; a tied LM head is the embedding."""
    name_map = gguf.get_tensor_name_map(arch.gguf_arch, config.num_hidden_layers)
    for name in state_names:
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        stem, _, suffix = name.rpartition(".")
        mapped = name_map.get_name(stem)
        if mapped is None:
            raise ExportError(
                f"--format gguf: tensor '{name}' has no GGUF name for architecture {config.model_type}; this "
                "variant of the architecture cannot be exported as GGUF. Export --format safetensors instead."
            )
        yield name, f"{mapped}.{suffix}"


# ---------------------------------------------------------------------------- tokenizer


def _tokenizer_spec(tokenizer: Any) -> dict[str, Any]:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def _pre_tokenizer_name(spec: dict[str, Any]) -> str | None:
    """llama.cpp's name for a byte-level BPE pre-tokenizer, None for one it has no name for."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    for name, expected in BYTE_LEVEL_PRE_TOKENIZERS.items():
        if len(steps) == len(expected) and all(
            all(step.get(key) == value for key, value in want.items())
            for step, want in zip(steps, expected, strict=True)
        ):
            return name
    return None


def tokenizer_kind(tokenizer: Any) -> tuple[str, str | None]:
    """``(tokenizer.ggml.model, tokenizer.ggml.pre)``: sentencepiece-style BPE (``llama``) or byte-level (``gpt2``)."""
    spec = _tokenizer_spec(tokenizer)
    model = spec.get("model", {})
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return "llama", None
    pre = _pre_tokenizer_name(spec)
    if model.get("type") == "BPE" and pre is not None:
        return "gpt2", pre
    raise ExportError(
        f"--format gguf: the tokenizer of '{tokenizer.name_or_path}' is not one this exporter can describe in GGUF "
        f"metadata (sentencepiece-style BPE, or byte-level BPE with a {', '.join(BYTE_LEVEL_PRE_TOKENIZERS)} "
        "pre-tokenizer). Export --format safetensors, or convert it with llama.cpp's convert_hf_to_gguf.py."
    )


def _write_tokenizer(writer: gguf.GGUFWriter, tokenizer: Any, vocab_size: int) -> None:
    """The vocabulary, its token types and merges (byte-level) or scores (sentencepiece), and the special ids.

    Sentencepiece scores rank the normal tokens in vocabulary order, which is how such files store
    them (Gemma 3's own GGUF: 0, -1, -2, ... over its normal tokens); added and byte tokens get -1000.
    """
    model_kind, pre = tokenizer_kind(tokenizer)
    spec = _tokenizer_spec(tokenizer)
    added = {token["id"]: token for token in spec.get("added_tokens", [])}
    by_id = {index: token for token, index in spec["model"]["vocab"].items()}
    by_id.update({index: token["content"] for index, token in added.items()})
    tokens, types, scores = [], [], []
    normal_rank = 0
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:  # a vocabulary padded past the tokenizer's size (llama.cpp's placeholder)
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            if index in added:
                types.append(gguf.TokenType.CONTROL if added[index]["special"] else gguf.TokenType.USER_DEFINED)
            elif model_kind == "llama" and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
                types.append(gguf.TokenType.BYTE)
            else:
                types.append(gguf.TokenType.NORMAL)
        if types[-1] == gguf.TokenType.NORMAL:
            scores.append(-float(normal_rank))
            normal_rank += 1
        else:
            scores.append(-1000.0)
    writer.add_tokenizer_model(model_kind)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if model_kind == "llama":
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(False)
    else:
        writer.add_tokenizer_pre(pre)
        merges = spec["model"]["merges"]
        writer.add_token_merges([" ".join(pair) if isinstance(pair, list) else pair for pair in merges])
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    starts = tokenizer("a")["input_ids"][:1]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and starts == [tokenizer.bos_token_id])


# ---------------------------------------------------------------------------- the file


def check_exportable(skeleton: Any, tokenizer: Any, source_gguf: Path | None) -> None:
    """Everything ``write_gguf`` needs, checked on the meta-device skeleton before any weight loads.

    Every tensor needs a GGUF name. A base from a GGUF file brings the rest in that file (its
    skeleton's config was read from it); a Hub or local base needs a tokenizer this module can
    describe and hyper-parameters it can write.
    """
    config = skeleton.config
    arch = architecture(config)
    list(_gguf_names(list(skeleton.state_dict()), config, arch))
    if source_gguf is None:
        tokenizer_kind(tokenizer)
        arch.write_hyperparameters(gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch.gguf_arch]), config)


def _copy_metadata(writer: gguf.GGUFWriter, source_gguf: Path) -> None:
    """Every key of the base's GGUF file except the header and what describes its own tensors."""
    for name, field in gguf.GGUFReader(source_gguf).fields.items():
        if name.startswith("GGUF.") or name in REWRITTEN_KEYS:
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), value_type, sub_type=sub_type)


def _encoded(
    gguf_name: str, weight: np.ndarray, type_name: str, projects_logits: bool
) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """The bytes to store and their GGUF type, following llama.cpp's quantizer.

    Vectors and position embeddings stay f32. The matrix that projects onto the vocabulary
    (``output``, or ``token_embd`` when the head is tied to it) is kept at Q8_0 under the 4- and
    5-bit types, as llama-quantize keeps it above them: every logit goes through it. A matrix whose
    rows do not split into quantization blocks falls back to f16.
    """
    if weight.ndim < 2 or gguf_name.startswith("position_embd."):
        return weight.astype(np.float32), gguf.GGMLQuantizationType.F32
    qtype = gguf.GGMLQuantizationType[type_name.upper()]
    if projects_logits and type_name in QUANT_TYPES:
        qtype = gguf.GGMLQuantizationType.Q8_0
    if qtype == gguf.GGMLQuantizationType.F32:
        return weight.astype(np.float32), qtype
    if qtype == gguf.GGMLQuantizationType.F16 or weight.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return weight.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(weight.astype(np.float32), qtype), qtype


def write_gguf(path: Path, model: Any, tokenizer: Any, type_name: str, source_gguf: Path | None) -> None:
    """``model`` (a merged transformers model) as a GGUF file at ``path``, weight matrices in ``type_name``."""
    import torch

    config = model.config
    arch = architecture(config)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
    if source_gguf is not None:
        _copy_metadata(writer, source_gguf)
    else:
        writer.add_name(Path(str(config.name_or_path)).name or config.model_type)
        arch.write_hyperparameters(writer, config)
        _write_tokenizer(writer, tokenizer, config.vocab_size)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    writer.add_file_type(FILE_TYPES[type_name])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    state = model.state_dict()
    for name, gguf_name in _gguf_names(list(state), config, arch):
        weight = arch.to_gguf_layout(name, state[name].detach().to(torch.float32).cpu().numpy(), config)
        projects_logits = gguf_name == "output.weight" or (
            gguf_name == "token_embd.weight" and config.tie_word_embeddings
        )
        data, qtype = _encoded(gguf_name, weight, type_name, projects_logits)
        writer.add_tensor(gguf_name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
