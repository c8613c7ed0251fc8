"""What the base model computes, kept on disk: it is the same in every run on that base.

DPO's reference is the base with the adapter off, and a recipe's base does not change between
runs, re-runs, resumes, ``dpo-recipe eval`` after training, or a sweep's configurations. So its
log-probs on the training pairs (the trainer's reference pass), on the held-out pairs
(evaluation's reference and "before"), and its greedy answers to the held-out questions are
computed once and read back afterwards.

A cached value must equal what a cold run computes, so an entry's key is *what produced it*
(``producer``): the base weights (never the adapter being trained; a frozen ``ref`` adapter
counts), the model config without what changes no number (its path, ``use_cache``, the writing
transformers version), the weights' dtype, the precision the forward really runs in, the
attention kernel, the device type, the torch / transformers / peft / accelerate / trl versions
and a digest of dpo-recipe's own scoring code. Then the caller's inputs as the model sees them:
token ids after truncation, pairs per packed row and processes for log-probs; prompt ids, pad and
stop ids, the generation config and decoding for answers. Entries are written atomically; a
missing entry is recomputed. ``dpo-recipe cache info`` / ``clear`` show and remove them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import weakref
from dataclasses import dataclass
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch

from dpo_recipe.utils.files import cache_root, write_file_atomically

_WEIGHT_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # hashing a 270M model takes ~1 s
_ADAPTER_PARAMETERS = ("lora_", "trainable_tokens_")  # what training changes; the base is the rest
_PEFT_WRAPPERS = (".base_layer", ".token_adapter", ".original_module")  # name segments PEFT inserts
# config keys that change no number: where the model was read from, what the Trainer flips for its own use
# (the KV cache, the pad id TRL fills in: the forward is given an explicit mask), the writing transformers
_CONFIG_NOISE = ("_name_or_path", "use_cache", "pad_token_id", "transformers_version")
_VERSIONED = ("torch", "transformers", "peft", "accelerate", "trl")
# dpo-recipe's code that computes cached values: editing it must miss, not serve the old numbers
_SCORING_CODE = ("dpo_recipe.training.base_cache", "dpo_recipe.training.packing", "dpo_recipe.evaluation.answers")

_PRODUCER = "the base's weights, config, dtype, forward precision, attention, device, library versions and scoring code"
KINDS = {  # what the cache root holds: directory -> what one entry is and what it is keyed on
    "reference_logps": "the base's log-probs of a list of pairs (training's reference pass, held-out scoring); "
    f"keyed on {_PRODUCER}, the truncated token ids, pairs per packed row and processes",
    "base_answers": f"the base's greedy answers to held-out prompts; keyed on {_PRODUCER}, the prompt token ids, "
    "pad and stop ids, the generation config, max_new_tokens and decoding",
    "gguf": "a GGUF base dequantized to safetensors once; keyed on the GGUF file's content",
    "tiny": "the builtin:tiny test model; keyed on the code that builds it",
}


def default_cache() -> BaseCache:
    """The cache every run shares: ``<cache root>/reference_logps`` (log-probs) and ``/base_answers``."""
    return BaseCache(cache_root())


def autocast_precision(device_type: str) -> str:
    """The autocast dtype in force on ``device_type`` ("off" outside autocast)."""
    if not torch.is_autocast_enabled(device_type):
        return "off"
    return str(torch.get_autocast_dtype(device_type)).removeprefix("torch.")


def forward_precision(model: Any) -> str:
    """The precision ``model``'s forward runs in here: the autocast in force.

    accelerate's mixed precision wraps a prepared model's ``forward`` in autocast
    (``unwrap_model`` keeps that wrapper), so such a model computes in half precision even
    where no autocast is in force around the call. Keying it as "off" wrote bf16 numbers under
    an fp32 key; a caller must compute the key inside the autocast its forward runs in.
    """
    precision = autocast_precision(next(model.parameters()).device.type)
    if precision == "off" and "_original_forward" in vars(model):
        raise RuntimeError(
            "base_cache: this model's forward carries accelerate's mixed-precision wrapper, but no autocast is "
            "in force, so a key made here would not say the precision its numbers come from. Make the key and "
            "run the forward inside `accelerator.autocast()`."
        )
    return precision


def base_weights_digest(model: Any) -> str:
    """sha256 of the base's parameters, by name, with the adapter's own parameters left out.

    PEFT renames a wrapped layer's weight (``q_proj.weight`` → ``q_proj.base_layer.weight``), so the
    names are taken without PEFT's wrappers: recipes that put LoRA on different layers share the
    base's entries. A frozen ``ref`` adapter (training an adapter further) *is* part of the
    reference, so its parameters count, ParameterDict entries (``...trainable_tokens_delta.ref``) too.
    """
    if model in _WEIGHT_DIGESTS:
        return _WEIGHT_DIGESTS[model]
    digest = hashlib.sha256()
    named = []
    for name, parameter in model.named_parameters():
        if any(marker in name for marker in _ADAPTER_PARAMETERS) and "ref" not in name.split("."):
            continue
        named.append((_without_peft_wrappers(name), parameter))
    for name, parameter in sorted(named, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(str(parameter.dtype).encode())
        digest.update(parameter.detach().cpu().contiguous().view(torch.uint8).numpy())
    _WEIGHT_DIGESTS[model] = digest.hexdigest()
    return _WEIGHT_DIGESTS[model]


def _without_peft_wrappers(name: str) -> str:
    name = name.removeprefix("base_model.model.")
    for segment in _PEFT_WRAPPERS:
        name = name.replace(segment, "")
    return name


def _without_noise(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the keys that name or describe the model but change none of its numbers."""
    return {k: _without_noise(v) if isinstance(v, dict) else v for k, v in config.items() if k not in _CONFIG_NOISE}


def scoring_code_digest() -> str:
    """sha256 of the dpo-recipe modules that compute cached values (``_SCORING_CODE``)."""
    digest = hashlib.sha256()
    for module in _SCORING_CODE:
        digest.update(Path(find_spec(module).origin).read_bytes())
    return digest.hexdigest()


def producer(model: Any) -> dict[str, Any]:
    """Everything about ``model`` and this process that decides the numbers its base computes here."""
    from dpo_recipe.training.packing import attention_implementation

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {
        "weights": base_weights_digest(model),
        "config": _without_noise(base.config.to_dict()),
        "precision": forward_precision(model),
        "attention": attention_implementation(model),
        "device": next(model.parameters()).device.type,
        "versions": {name: version(name) for name in _VERSIONED},
        "code": scoring_code_digest(),
    }


@dataclass
class KindUsage:
    """One kind of cache entry: how many there are and the bytes they take."""

    kind: str
    entries: int
    size_bytes: int
    keyed_on: str


class BaseCache:
    """Entries under ``directory``: ``reference_logps/<key>.safetensors`` and ``base_answers/<key>.json``.

    ``directory`` None keeps nothing (every read misses, writes are dropped): tests and callers that
    must not touch the user's cache pass it. ``hits`` and ``misses`` count reads, for the run's
    ``Time:`` line.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.hits: list[str] = []
        self.misses: list[str] = []

    def key(self, model: Any, inputs: Any, **settings: Any) -> str:
        """The entry name for ``inputs`` (JSON-serialisable, as the model sees them) computed by ``model``'s
        base under ``settings``; a cache that keeps nothing names nothing (and hashes no weights).

        Call it where the forward runs: inside the same autocast (``forward_precision``)."""
        if self.directory is None:
            return ""
        described = {"producer": producer(model), **settings}
        digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
        digest.update(json.dumps(inputs, ensure_ascii=False).encode())
        return digest.hexdigest()[:32]

    def read_logps(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(chosen, rejected) summed log-probs, or None when not cached."""
        from safetensors.torch import load_file

        path = self._found("reference_logps", key, ".safetensors")
        if path is None:
            return None
        tensors = load_file(path)
        return tensors["chosen"], tensors["rejected"]

    def write_logps(self, key: str, logps: tuple[torch.Tensor, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        path = self._path("reference_logps", key, ".safetensors")
        if path is not None:
            tensors = {"chosen": logps[0].contiguous(), "rejected": logps[1].contiguous()}
            write_file_atomically(path, lambda staging: save_file(tensors, str(staging)))

    def read_answers(self, key: str) -> list[str] | None:
        """The base's answers, in prompt order, or None when not cached."""
        path = self._found("base_answers", key, ".json")
        return None if path is None else json.loads(path.read_text(encoding="utf-8"))

    def write_answers(self, key: str, answers: list[str]) -> None:
        path = self._path("base_answers", key, ".json")
        if path is not None:
            text = json.dumps(answers, ensure_ascii=False, indent=1)
            write_file_atomically(path, lambda staging: staging.write_text(text, encoding="utf-8"))

    def usage(self) -> list[KindUsage]:
        """Each kind of entry under the cache root (``KINDS``): count and size, for ``dpo-recipe cache info``."""
        rows = []
        for kind, keyed_on in KINDS.items():
            folder = None if self.directory is None else self.directory / kind
            entries = sorted(folder.iterdir()) if folder is not None and folder.is_dir() else []
            files = [f for e in entries for f in ([e] if e.is_file() else e.rglob("*")) if f.is_file()]
            rows.append(KindUsage(kind, len(entries), sum(f.stat().st_size for f in files), keyed_on))
        return rows

    def clear(self, kinds: tuple[str, ...] = tuple(KINDS)) -> int:
        """Remove every entry of ``kinds``; returns the bytes freed. Unknown kinds are a caller's error."""
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown cache kind(s) {', '.join(unknown)}; kinds: {', '.join(KINDS)}")
        freed = sum(u.size_bytes for u in self.usage() if u.kind in kinds)
        for kind in kinds:
            if self.directory is not None and (self.directory / kind).exists():
                shutil.rmtree(self.directory / kind)
        return freed

    def summary(self) -> str:
        """``Cache: reference_logps 2 hits, base_answers 1 miss.``: what this run read back and what it computed."""
        if self.directory is None or not (self.hits or self.misses):
            return "Cache: not used."
        parts = []
        for kind in ("reference_logps", "base_answers"):
            hits, misses = self.hits.count(kind), self.misses.count(kind)
            counts = [_counted(n, noun) for n, noun in ((hits, "hit"), (misses, "miss")) if n]
            if counts:
                parts.append(f"{kind} {' '.join(counts)}")
        return f"Cache: {', '.join(parts)}."

    def _found(self, kind: str, key: str, suffix: str) -> Path | None:
        path = self._path(kind, key, suffix)
        if path is None:
            return None
        (self.hits if path.exists() else self.misses).append(kind)
        return path if path.exists() else None

    def _path(self, kind: str, key: str, suffix: str) -> Path | None:
        return None if self.directory is None else self.directory / kind / f"{key}{suffix}"


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else ("es" if noun.endswith("s") else "s"))
