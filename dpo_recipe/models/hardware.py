"""Refusing precision, quantization and launch settings this machine cannot run, before anything heavy loads.

A 4-bit base without CUDA, bf16 on a GPU or CPU that only emulates it, fp16 on a CPU, or an FSDP /
DeepSpeed launch without a GPU would fail minutes into a run (or, for the launches, in every rank
with accelerate's traceback) or train slowly and imprecisely; these checks fail in a second instead.

Process-level speed settings that change no numbers.

glibc hands large freed blocks back to the OS and trims the heap after every free; a DPO step
frees and re-allocates the same activation buffers hundreds of times, so the kernel spends
seconds per optimizer step zeroing pages (measured: 16.5 M minor page faults for a 128-pair
guide run, 0.7 M with the thresholds raised). Raising them keeps those buffers in the heap.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from pathlib import Path

from dpo_recipe.config.schema import ModelSection
from dpo_recipe.errors import ModelError


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (Linux cpuinfo flags); elsewhere assume it does."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def machine_memory_mb() -> tuple[float, str]:
    """``(MB, what)``: the memory one training process has, GPU memory on a CUDA machine, else RAM."""
    import psutil
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 2**20, f"GPU memory ({torch.cuda.get_device_name(0)})"
    return psutil.virtual_memory().total / 2**20, "RAM on this machine (no GPU)"


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


# accelerate's distributed types that need GPUs, and the variable ``accelerate launch`` sets for each
GPU_ONLY_LAUNCHES = {"FSDP": "ACCELERATE_USE_FSDP", "DEEPSPEED": "ACCELERATE_USE_DEEPSPEED"}


def gpu_only_launch_problem(distributed_type: str, where: str) -> str | None:
    """Why a launch of ``distributed_type`` (from ``where``) cannot run here, or None when it can."""
    import torch

    if distributed_type.upper() not in GPU_ONLY_LAUNCHES or torch.cuda.is_available():
        return None
    return (
        f"{where}: distributed_type {distributed_type.upper()} shards the model over GPUs and this machine has "
        "none (even with use_cpu: true, accelerate stops in every rank). On CPU train without an accelerate "
        "config (one process) or with --num-processes N (DDP over gloo); take this config to a GPU machine."
    )


def check_launch() -> None:
    """Refuse an FSDP / DeepSpeed ``accelerate launch`` on a machine without a GPU, before the trainer starts."""
    for distributed_type, variable in GPU_ONLY_LAUNCHES.items():
        if os.environ.get(variable, "").lower() == "true":
            problem = gpu_only_launch_problem(distributed_type, f"accelerate launch ({variable}=true)")
            if problem:
                raise ModelError(problem)


M_TRIM_THRESHOLD = -1


M_MMAP_MAX = -4


TRIM_THRESHOLD = 2**31


def keep_freed_memory_in_heap() -> bool:
    """Raise glibc's mmap and trim thresholds; a no-op (False) off glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt caps M_MMAP_THRESHOLD at 32 MB, below an attention buffer; M_MMAP_MAX=0 serves every
    # block from the heap instead, and the trim threshold keeps freed heap pages mapped.
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
