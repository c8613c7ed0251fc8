"""``dpo-recipe export``: an adapter merged into its base, written as safetensors or GGUF, and read back.

A LoRA adapter needs PEFT and its base to run; llama.cpp, Ollama and LM Studio need one GGUF file,
and plain transformers a model directory. The adapter (LoRA matrices and any trained token rows,
``lora.trainable_tokens``) is merged into the base at full precision with PEFT's
``merge_and_unload``, then written:

- ``safetensors``: ``save_pretrained`` with the tokenizer and chat template, in ``--dtype``;
- ``gguf``: ``gguf_writer.write_gguf``, weight matrices in ``--dtype`` or ``--quant``, with an
  Ollama ``Modelfile`` beside it.

What was written is then loaded back -- with ``from_pretrained``, or transformers' GGUF loader --
and its logits on a probe prompt compared with the merged model's; an export over the tolerance of
its type is an error. Everything is checked (options, output directory, base, architecture)
before any weight loads, and the directory appears whole or not at all (``write_dir_atomically``),
with ``export.json`` (what was exported and the check's numbers) and a model card.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_recipe.errors import ExportError

FORMATS = ("safetensors", "gguf")
DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
DEFAULT_DTYPE = {"safetensors": "f32", "gguf": "f16"}
GGUF_NAME = "model.gguf"
MANIFEST = "export.json"
# Largest |logit difference| on the probe, as a share of the largest |logit|, that a read-back may show:
# rounding alone for the float types, the quantization error for the others (measured in docs/export.md).
TOLERANCES = {
    "f32": 1e-5,
    "f16": 5e-3,
    "bf16": 2e-2,
    "q8_0": 5e-2,
    "q5_1": 0.15,
    "q5_0": 0.15,
    "q4_1": 0.3,
    "q4_0": 0.3,
}
# ... and the share of probe positions whose most likely next token may change: beyond one in ten it is
# no longer the model that was trained (Gemma 3 270M at q5_1: 12 % of the range, a third of them changed).
MIN_SAME_ARGMAX = 0.9
PROBE = [{"role": "user", "content": "AIとは何ですか？"}]
PROBE_ANSWER = "AIとは、人間の知的な働きをコンピュータで実現する技術です。"


@dataclass
class LogitCheck:
    """The written model against the merged one, on the probe prompt."""

    max_abs_diff: float
    relative_diff: float  # max_abs_diff / the merged model's largest |logit|
    tolerance: float
    same_argmax: float  # share of positions whose most likely next token is the same
    positions: int


@dataclass
class ExportResult:
    out_dir: Path
    format: str
    tensor_type: str
    files: dict[str, int]  # file name -> bytes
    seconds: float
    check: LogitCheck


def export_options(fmt: str, dtype: str | None, quant: str | None) -> str:
    """The type the weights are stored in, or an ``ExportError`` naming the option to fix."""
    from dpo_recipe.deploy.gguf_writer import tensor_type

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: choose one of {', '.join(FORMATS)}.")
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}.")
    if quant is not None and fmt != "gguf":
        raise ExportError(f"--quant {quant} applies to --format gguf only; safetensors are stored in --dtype.")
    if fmt == "safetensors":
        return dtype or DEFAULT_DTYPE[fmt]
    return tensor_type(dtype or DEFAULT_DTYPE[fmt], quant)


def export(
    adapter: str | Path,
    out_dir: str | Path,
    *,
    fmt: str = "gguf",
    dtype: str | None = None,
    quant: str | None = None,
    base: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> ExportResult:
    """Merge an adapter (directory or Hub id) into its base and write it to ``out_dir`` to run without PEFT.

    ``fmt="gguf"``: one ``model.gguf`` for llama.cpp / Ollama / LM Studio and an Ollama
    ``Modelfile``; weight matrices in ``dtype`` (``"f32"``, ``"f16"`` default, ``"bf16"``) or
    ``quant`` (``"q8_0"``, ``"q5_1"``, ``"q5_0"``, ``"q4_1"``, ``"q4_0"``). A base that came from a
    GGUF file keeps that file's metadata; a Hub or local base must be Llama, Gemma 3 or GPT-2.
    ``fmt="safetensors"``: a transformers model directory in ``dtype`` (``"f32"`` default).
    ``base`` overrides the base recorded in the adapter's ``recipe.yaml``; ``trust_remote_code`` allows
    the base repo's own code (the recipe cannot).

    The written model is loaded back and its logits compared with the merged model's (the result's
    ``check``); the directory, with ``export.json`` and a model card, appears only when that passed.
    An existing ``out_dir`` is refused unless ``overwrite``. ``push(out_dir, repo_id)`` publishes it.
    """
    from dpo_recipe.artifacts.cards import render_export_card
    from dpo_recipe.models.adapters import adapter_base, load_adapter_model
    from dpo_recipe.models.gguf import resolve_gguf_path
    from dpo_recipe.training.run_dir import os_error_behind
    from dpo_recipe.utils.files import foreign_entries, write_dir_atomically

    started = time.perf_counter()
    type_name = export_options(fmt, dtype, quant)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ExportError(f"--out {out_dir} already exists: choose another directory, or --overwrite to replace it.")
    foreign = foreign_entries(out_dir, MANIFEST)
    if foreign:
        raise ExportError(
            f"--out {out_dir} holds files 'dpo-recipe export' did not write "
            f"({', '.join(p.name for p in foreign[:5])}); --overwrite replaces only an earlier export. "
            "Choose another --out."
        )
    adapter_dir, recipe, section = adapter_base(str(adapter), base, trust_remote_code=trust_remote_code)
    section = dataclasses.replace(section, dtype="float32", load_in_4bit=False)  # merge at full precision
    source_gguf = resolve_gguf_path(section.gguf_file) if section.gguf_file else None
    if fmt == "gguf":
        _check_gguf_exportable(adapter_dir, section, source_gguf)
    model, tokenizer = load_adapter_model(adapter_dir, section)
    merged = model.merge_and_unload().eval()
    probe = _probe_ids(tokenizer, recipe.data.as_conversation)
    reference = _logits(merged, probe)
    manifest: dict[str, Any] = {
        "format": fmt,
        "tensor_type": type_name,
        "adapter": adapter_dir.name if Path(adapter).expanduser().is_dir() else str(adapter),  # no local paths
        "base_model": section.name_or_path,
        "base_gguf_file": section.gguf_file,
        "license": recipe.hub.license,
        "as_conversation": recipe.data.as_conversation,
    }

    def write(staging: Path) -> None:
        if fmt == "safetensors":
            _write_safetensors(staging, merged, tokenizer, type_name)
        else:
            _write_gguf_files(staging, merged, tokenizer, type_name, source_gguf, recipe)
        check = _read_back(staging, fmt, type_name, probe, reference)
        manifest["logit_check"] = dataclasses.asdict(check)
        manifest["files"] = {p.name: p.stat().st_size for p in sorted(staging.iterdir())}
        manifest["seconds"] = round(time.perf_counter() - started, 1)
        (staging / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        render_export_card(manifest, out_dir.name).save(staging / "README.md")

    try:
        write_dir_atomically(out_dir, write, if_exists="replace" if overwrite else "refuse")
    except Exception as exc:
        failure = os_error_behind(exc)
        if failure is None:
            raise
        raise _write_failure(failure, out_dir) from None
    return ExportResult(
        out_dir=out_dir,
        format=fmt,
        tensor_type=type_name,
        files={p.name: p.stat().st_size for p in sorted(out_dir.iterdir())},
        seconds=manifest["seconds"],
        check=LogitCheck(**manifest["logit_check"]),
    )


def _check_gguf_exportable(adapter_dir: Path, section: Any, source_gguf: Path | None) -> None:
    from dpo_recipe.deploy.gguf_writer import check_exportable
    from dpo_recipe.models.loading import load_tokenizer, skeleton_model

    tokenizer = load_tokenizer(dataclasses.replace(section, name_or_path=str(adapter_dir), gguf_file=None))
    check_exportable(skeleton_model(section), tokenizer, source_gguf)


def _write_failure(failure: OSError, out_dir: Path) -> ExportError:
    """A full disk or a missing permission, said in one line (what is not an OSError keeps its traceback)."""
    what = f"{failure.strerror or failure}" + (f" ({failure.filename})" if failure.filename else "")
    return ExportError(
        f"Writing the export to {out_dir} failed: {what}. Nothing was left there (the partial files were removed); "
        "free space or fix permissions and run the same command again."
    )


def _probe_ids(tokenizer: Any, as_conversation: bool) -> Any:
    """A question and an answer in the form training showed them: the positions the logits are compared at."""
    import torch

    from dpo_recipe.evaluation.answers import prompt_text

    prompt = prompt_text(tokenizer, PROBE if as_conversation else PROBE[0]["content"])
    return torch.tensor([tokenizer(prompt + PROBE_ANSWER)["input_ids"]])


def _logits(model: Any, ids: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(ids.to(model.device)).logits.float().cpu()


def _write_safetensors(staging: Path, merged: Any, tokenizer: Any, type_name: str) -> None:
    import torch

    merged.to(getattr(torch, DTYPES[type_name])).save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    for path in staging.iterdir():
        path.chmod(0o644)  # some writers make their files private; a model directory is meant to be read


def _write_gguf_files(
    staging: Path, merged: Any, tokenizer: Any, type_name: str, source_gguf: Path | None, recipe: Any
) -> None:
    from dpo_recipe.deploy.gguf_writer import write_gguf
    from dpo_recipe.deploy.ollama import modelfile

    write_gguf(staging / GGUF_NAME, merged, tokenizer, type_name, source_gguf)
    text = modelfile(
        GGUF_NAME,
        tokenizer,
        as_conversation=recipe.data.as_conversation,
        repetition_penalty=recipe.eval.repetition_penalty,
    )
    (staging / "Modelfile").write_text(text, encoding="utf-8")


def _read_back(staging: Path, fmt: str, type_name: str, probe: Any, reference: Any) -> LogitCheck:
    """Load what was written the way its readers will and compare its logits with the merged model's."""
    import torch
    from transformers import AutoModelForCausalLM

    extra = {"gguf_file": GGUF_NAME} if fmt == "gguf" else {}
    written = AutoModelForCausalLM.from_pretrained(str(staging), dtype=torch.float32, **extra)
    logits = _logits(written, probe)
    max_abs = float((logits - reference).abs().max())
    check = LogitCheck(
        max_abs_diff=max_abs,
        relative_diff=max_abs / float(reference.abs().max()),
        tolerance=TOLERANCES[type_name],
        same_argmax=float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
        positions=probe.shape[1],
    )
    if check.relative_diff > check.tolerance or check.same_argmax < MIN_SAME_ARGMAX:
        raise ExportError(
            f"The exported {fmt} ({type_name}) does not reproduce the merged model: its logits differ by up to "
            f"{max_abs:.4g} ({check.relative_diff:.2%} of the largest, tolerance {check.tolerance:.2%}) and the most "
            f"likely next token is the same at {check.same_argmax:.0%} of {check.positions} positions (at least "
            f"{MIN_SAME_ARGMAX:.0%} needed). Nothing was written. Try a wider type (--dtype f16 or f32, --quant q8_0)."
        )
    return check
