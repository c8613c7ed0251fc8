"""What the base model computes, kept on disk: it is the same in every run on that base.

DPO's reference is the base with the adapter off, and a recipe's base does not change between
runs, re-runs, resumes or a sweep's configurations. So its log-probs on the training pairs (the
trainer's reference pass), on the held-out pairs (evaluation's reference and "before"), and its
greedy answers to the held-out questions are computed once and read back afterwards.

An entry's key is everything that changes its numbers: the base weights (never the adapter being
trained), the model config and dtype, the inputs, the caller's settings (max_length, decoding),
the autocast precision in force, and the torch / transformers versions. Entries are written
atomically; a missing entry is recomputed. ``DPO_RECIPE_CACHE`` moves or clears them all.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from dpo_recipe.atomic import write_file_atomically
from dpo_recipe.resources import cache_root

_WEIGHT_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # hashing a 270M model takes ~1 s
_ADAPTER_PARAMETERS = ("lora_", "trainable_tokens_")  # what training changes; the base is the rest
_PEFT_WRAPPERS = (".base_layer", ".token_adapter", ".original_module")  # name segments PEFT inserts


def default_cache() -> BaseCache:
    """The cache every run shares: ``<cache root>/reference_logps`` (log-probs) and ``/base_answers``."""
    return BaseCache(cache_root())


def autocast_precision(device_type: str) -> str:
    """The autocast dtype in force on ``device_type`` ("off" outside autocast): it changes the log-probs."""
    if not torch.is_autocast_enabled(device_type):
        return "off"
    return str(torch.get_autocast_dtype(device_type)).removeprefix("torch.")


def base_weights_digest(model: Any) -> str:
    """sha256 of the base's parameters, by name, with the adapter's own parameters left out.

    PEFT renames a wrapped layer's weight (``q_proj.weight`` → ``q_proj.base_layer.weight``), so the
    names are taken without PEFT's wrappers: recipes that put LoRA on different layers share the
    base's entries. A frozen ``ref`` adapter (training an adapter further) *is* part of the
    reference, so its parameters count.
    """
    if model in _WEIGHT_DIGESTS:
        return _WEIGHT_DIGESTS[model]
    digest = hashlib.sha256()
    named = []
    for name, parameter in model.named_parameters():
        if any(marker in name for marker in _ADAPTER_PARAMETERS) and ".ref." not in name:
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


class BaseCache:
    """Entries under ``directory``: ``reference_logps/<key>.safetensors`` and ``base_answers/<key>.json``.

    ``directory`` None keeps nothing (every read misses, writes are dropped): tests and callers that
    must not touch the user's cache pass it.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def key(self, model: Any, inputs: Any, **settings: Any) -> str:
        """The entry name for ``inputs`` (JSON-serialisable) computed by ``model``'s base under ``settings``;
        a cache that keeps nothing names nothing (and hashes no weights)."""
        if self.directory is None:
            return ""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        device_type = next(model.parameters()).device.type
        described = {
            "weights": base_weights_digest(model),
            "config": base.config.to_dict(),
            "precision": autocast_precision(device_type),
            "versions": [version("torch"), version("transformers")],
            **settings,
        }
        digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
        digest.update(json.dumps(inputs, ensure_ascii=False).encode())
        return digest.hexdigest()[:32]

    def read_logps(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(chosen, rejected) summed log-probs, or None when not cached."""
        from safetensors.torch import load_file

        path = self._path("reference_logps", key, ".safetensors")
        if path is None or not path.exists():
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
        path = self._path("base_answers", key, ".json")
        if path is None or not path.exists():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def write_answers(self, key: str, answers: list[str]) -> None:
        path = self._path("base_answers", key, ".json")
        if path is not None:
            text = json.dumps(answers, ensure_ascii=False, indent=1)
            write_file_atomically(path, lambda staging: staging.write_text(text, encoding="utf-8"))

    def _path(self, kind: str, key: str, suffix: str) -> Path | None:
        return None if self.directory is None else self.directory / kind / f"{key}{suffix}"
