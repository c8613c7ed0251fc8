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
and a digest of what runs in dpo-recipe's own scoring code (not its docstrings or comments). Then
the caller's inputs as the model sees them: token ids after truncation, pairs per packed row, the
token budget of a forward and processes for log-probs; prompt ids, pad and stop ids, the generation
config and decoding for answers. Answers are kept as token ids and
decoded at read time, so a fixed tokenizer decoder reads them right.

The cache is a convenience, never a source of truth or of failure: every entry carries a sha256
of its values and its row count, and an entry that fails the check, cannot be parsed or vanishes
is a miss (one warning line) that is recomputed; a cache that cannot be written (read-only, full,
not a folder) is warned about once and the run goes on without it. Entries are written
atomically. ``dpo-recipe cache info`` / ``clear`` show and remove them; ``clear`` removes only
names it wrote, in a root that carries its marker, and never follows a link.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import time
import weakref
from dataclasses import dataclass, field
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch

from dpo_recipe.errors import CacheError
from dpo_recipe.utils.files import (
    CACHE_MARKER,
    cache_root,
    cache_warning,
    marked_cache_root,
    report_unwritable,
    write_file_atomically,
)

_WEIGHT_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # hashing a 270M model takes ~1 s
_ADAPTER_PARAMETERS = ("lora_", "trainable_tokens_")  # what training changes; the base is the rest
_PEFT_WRAPPERS = (".base_layer", ".token_adapter", ".original_module")  # name segments PEFT inserts
# config keys that change no number: where the model was read from, what the Trainer flips for its own use
# (the KV cache, the pad id TRL fills in: the forward is given an explicit mask), the writing transformers
_CONFIG_NOISE = ("_name_or_path", "use_cache", "pad_token_id", "transformers_version")
_VERSIONED = ("dpo-recipe", "torch", "transformers", "peft", "accelerate", "trl")
# dpo-recipe's code that computes cached values (the reference pass, held-out scoring, generation): editing
# what runs in any of it must miss, not serve the old numbers (docstrings, comments and layout change none;
# ``code_digest``); the dpo-recipe version covers an upgrade
_SCORING_CODE = (
    "dpo_recipe.training.base_cache",
    "dpo_recipe.training.packing",
    "dpo_recipe.training.trainer",
    "dpo_recipe.evaluation.scoring",
    "dpo_recipe.evaluation.answers",
)

_PRODUCER = "the base's weights, config, dtype, forward precision, attention, device, library versions and scoring code"
KINDS = {  # what the cache root holds: directory -> what one entry is and what it is keyed on
    "reference_logps": "the base's log-probs of a list of pairs (training's reference pass, held-out scoring); "
    f"keyed on {_PRODUCER}, the truncated token ids, pairs per packed row, tokens per forward and processes",
    "base_answers": f"the base's greedy answers (token ids) to held-out prompts; keyed on {_PRODUCER}, the prompt "
    "token ids, pad and stop ids, the generation config, max_new_tokens and decoding",
    "gguf": "a GGUF base dequantized to safetensors once; keyed on the GGUF file's content",
    "tiny": "the builtin:tiny test model; keyed on the code that builds it",
}
_KEY = "[0-9a-f]{32}"
ENTRY_NAMES = {  # the names each kind's entries are written under: all that `cache clear` removes
    "reference_logps": re.compile(rf"{_KEY}\.safetensors"),
    "base_answers": re.compile(rf"{_KEY}\.json"),
    "gguf": re.compile(r"[^/]+-[0-9a-f]{16}"),
    "tiny": re.compile(r"[0-9a-f]{16}"),
}
_LEFTOVER_AGE_S = 3600  # a staging file or folder this old belongs to a killed write, not to one in progress


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


def code_digest(paths: list[Path]) -> str:
    """sha256 of what runs in the Python files at ``paths``: their syntax trees without docstrings, so an
    edit to a docstring, a comment or the layout keeps the digest (and the cache's entries), and any edit
    to the code itself, which may change a number, changes it."""
    digest = hashlib.sha256()
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            documented = isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            if documented and node.body and isinstance(node.body[0], ast.Expr):
                first = node.body[0].value
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    node.body = node.body[1:] or [ast.Pass()]
        digest.update(ast.dump(tree).encode())
    return digest.hexdigest()


def scoring_code_digest() -> str:
    """``code_digest`` of the dpo-recipe modules that compute cached values (``_SCORING_CODE``)."""
    return code_digest([Path(find_spec(module).origin) for module in _SCORING_CODE])


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


@dataclass
class Cleared:
    """What ``BaseCache.clear`` did: bytes freed, and what it left alone (links), one line each."""

    freed_bytes: int = 0
    left_alone: list[str] = field(default_factory=list)


class BaseCache:
    """Entries under ``directory``: ``reference_logps/<key>.safetensors`` and ``base_answers/<key>.json``.

    ``directory`` None keeps nothing (every read misses, writes are dropped): tests and callers that
    must not touch the user's cache pass it. ``hits`` and ``misses`` count reads, for the run's
    ``Time:`` line; a damaged entry counts as a miss.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.hits: list[str] = []
        self.misses: list[str] = []
        self.unwritable = False  # a write failed: later writes are skipped
        self._held: list[tuple[str, str, str, bytes]] | None = None  # entries kept back by ``hold_writes``

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

    def read_logps(self, key: str, rows: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(chosen, rejected) summed log-probs of ``rows`` pairs, or None when not cached or damaged."""
        return self._read("reference_logps", key, ".safetensors", lambda data: _parsed_logps(data, rows))

    def write_logps(self, key: str, logps: tuple[torch.Tensor, torch.Tensor]) -> None:
        from safetensors.torch import save

        chosen, rejected = (t.detach().float().cpu().contiguous() for t in logps)
        metadata = {"sha256": _logps_digest(chosen, rejected), "rows": str(len(chosen))}
        data = save({"chosen": chosen, "rejected": rejected}, metadata=metadata)
        self._write("reference_logps", key, ".safetensors", data)

    def read_answers(self, key: str, rows: int) -> list[list[int]] | None:
        """The base's answers to ``rows`` prompts as generated token ids, in prompt order, or None."""
        return self._read("base_answers", key, ".json", lambda data: _parsed_answers(data, rows))

    def write_answers(self, key: str, answers: list[list[int]]) -> None:
        ids = [[int(i) for i in answer] for answer in answers]
        entry = {"sha256": _ids_digest(ids), "rows": len(ids), "ids": ids}
        self._write("base_answers", key, ".json", json.dumps(entry).encode())

    def hold_writes(self) -> None:
        """Keep new entries in memory until ``write_held``: a run writes its own artifacts first, so a
        nearly full disk fills with the cache's entries, not with half a run."""
        if self._held is None:
            self._held = []

    def write_held(self) -> None:
        """Write the entries kept back since ``hold_writes``, and write straight through again."""
        held, self._held = self._held or [], None
        for entry in held:
            self._write(*entry)

    def usage(self) -> list[KindUsage]:
        """Each kind of entry under the cache root (``KINDS``): count and size, for ``dpo-recipe cache info``."""
        rows = []
        for kind, keyed_on in KINDS.items():
            entries = self._entries(kind)
            files = [f for e in entries for f in ([e] if e.is_file() else e.rglob("*")) if f.is_file()]
            rows.append(KindUsage(kind, len(entries), sum(f.stat().st_size for f in files), keyed_on))
        return rows

    def clear(self, kinds: tuple[str, ...] = tuple(KINDS)) -> Cleared:
        """Remove the entries of ``kinds`` that this cache wrote; never anything else.

        Only a root holding the marker (``utils.files.marked_cache_root``) is cleared, only names of
        ``ENTRY_NAMES`` (and staging leftovers of killed writes) are removed, and a kind folder or
        entry that is a link is left alone: an empty ``DPO_RECIPE_CACHE`` once made the current folder
        the cache, and clearing it deleted the user's own ``gguf/`` and ``tiny/``."""
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown cache kind(s) {', '.join(unknown)}; kinds: {', '.join(KINDS)}")
        cleared = Cleared()
        if self.directory is None or not self.directory.exists():
            return cleared
        if not (self.directory / CACHE_MARKER).is_file():
            raise CacheError(
                f"{self.directory} has no {CACHE_MARKER} marker, so dpo-recipe did not make a cache there (or made "
                "it before it marked its caches); nothing was removed. Check DPO_RECIPE_CACHE; an old cache is "
                "marked by the next run that writes to it, or you can delete its folders yourself."
            )
        for kind in kinds:
            folder = self.directory / kind
            if folder.is_symlink():
                cleared.left_alone.append(f"{folder} (a link: cache clear does not follow links)")
                continue
            for entry in self._entries(kind) + self._leftovers(kind):
                cleared.freed_bytes += _size(entry)
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return cleared

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

    def _read(self, kind: str, key: str, suffix: str, parse: Any) -> Any:
        """The parsed entry, or None: missing (a miss), or unreadable / damaged (a miss and a warning).

        The file is opened once, never checked first: ``cache clear`` may remove it in between."""
        if self.directory is None:
            return None
        path = self.directory / kind / f"{key}{suffix}"
        try:
            value = parse(path.read_bytes())
        except (FileNotFoundError, NotADirectoryError):  # not there (a folder in the way warns when written)
            value = None
        except Exception as exc:  # any reason an entry cannot be read or parsed: recompute, never crash
            cache_warning(f"cache entry {path} is unreadable or damaged ({_reason(exc)}); recomputing it.")
            value = None
        (self.misses if value is None else self.hits).append(kind)
        return value

    def _write(self, kind: str, key: str, suffix: str, data: bytes) -> None:
        """Write one entry; a cache that cannot be written is warned about once and the run goes on."""
        if self.directory is None or self.unwritable:
            return
        if self._held is not None:
            self._held.append((kind, key, suffix, data))
            return
        try:
            marked_cache_root(self.directory)
            write_file_atomically(self.directory / kind / f"{key}{suffix}", lambda staging: staging.write_bytes(data))
        except OSError as exc:
            self.unwritable = True
            report_unwritable(exc, self.directory)

    def _entries(self, kind: str) -> list[Path]:
        """The entries of ``kind`` this cache wrote: names it writes, not links; none under a linked folder."""
        folder = None if self.directory is None else self.directory / kind
        if folder is None or folder.is_symlink() or not folder.is_dir():
            return []
        return sorted(e for e in folder.iterdir() if ENTRY_NAMES[kind].fullmatch(e.name) and not e.is_symlink())

    def _leftovers(self, kind: str) -> list[Path]:
        """Staging files and folders (``.<entry>.<random>``) that killed writes left, over an hour old."""
        folder = self.directory / kind
        if not folder.is_dir():
            return []
        staged = re.compile(rf"\.({ENTRY_NAMES[kind].pattern})\..+")
        old = time.time() - _LEFTOVER_AGE_S
        return [
            e for e in folder.iterdir() if staged.fullmatch(e.name) and not e.is_symlink() and e.lstat().st_mtime < old
        ]


def _reason(exc: BaseException) -> str:
    return next(iter(str(exc).splitlines()), "")[:200] or type(exc).__name__


def _logps_digest(chosen: torch.Tensor, rejected: torch.Tensor) -> str:
    digest = hashlib.sha256(chosen.numpy().tobytes())
    digest.update(rejected.numpy().tobytes())
    return digest.hexdigest()


def _parsed_logps(data: bytes, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``reference_logps`` entry, checked: two float32 vectors of ``rows`` values matching its sha256."""
    from safetensors.torch import load

    header_length = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + header_length]).get("__metadata__") or {}
    tensors = load(data)
    chosen, rejected = tensors["chosen"], tensors["rejected"]
    for tensor in (chosen, rejected):
        if tensor.dtype != torch.float32 or tuple(tensor.shape) != (rows,):
            raise ValueError(f"holds {tuple(tensor.shape)} {tensor.dtype}, expected ({rows},) float32")
    if metadata.get("rows") != str(rows) or metadata.get("sha256") != _logps_digest(chosen, rejected):
        raise ValueError("its values do not match its recorded sha256")
    return chosen, rejected


def _ids_digest(ids: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def _parsed_answers(data: bytes, rows: int) -> list[list[int]]:
    """A ``base_answers`` entry, checked: ``rows`` lists of token ids matching its sha256."""
    entry = json.loads(data.decode("utf-8"))
    ids = entry["ids"]
    if entry["rows"] != rows or len(ids) != rows or entry["sha256"] != _ids_digest(ids):
        raise ValueError(f"its {entry['rows']} answers do not match its recorded sha256 and {rows} prompts")
    if not all(isinstance(answer, list) and all(type(i) is int for i in answer) for answer in ids):
        raise ValueError("its answers are not lists of token ids")
    return ids


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return path.lstat().st_size


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else ("es" if noun.endswith("s") else "s"))
