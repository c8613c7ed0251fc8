"""dpo_recipe.models.hardware: precision and quantization refused on hardware that cannot run them; glibc's
malloc thresholds set on Linux and left alone elsewhere."""

from __future__ import annotations

import ctypes
import platform
import sys
from pathlib import Path

import pytest

from dpo_recipe.config.schema import ModelSection
from dpo_recipe.errors import ModelError
from dpo_recipe.models import hardware
from dpo_recipe.models import hardware as perf


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(
    ("flags", "native"),
    [("fpu avx2 avx512f", False), ("fpu avx512_bf16 avx2", True), ("fpu amx_bf16", True)],
)
def test_native_bf16_is_read_from_cpuinfo_flags(flags, native, tmp_path: Path, monkeypatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor : 0\nflags : {flags}\n")
    monkeypatch.setattr(hardware, "Path", lambda _: cpuinfo)
    assert hardware.cpu_has_native_bf16() is native
    monkeypatch.setattr(hardware, "Path", lambda _: tmp_path / "absent")
    assert hardware.cpu_has_native_bf16() is True  # no cpuinfo (macOS, Windows): assume it does


def test_cpu_refusals_name_the_setting_and_the_fix(cpu_only, monkeypatch) -> None:
    plain = ModelSection(name_or_path="m")
    hardware.check_hardware(plain, "fp32")
    with pytest.raises(ModelError, match="model.load_in_4bit \\(QLoRA\\) needs a CUDA GPU"):
        hardware.check_hardware(ModelSection(name_or_path="m", load_in_4bit=True), "fp32")
    with pytest.raises(ModelError, match="training.precision fp16 needs a CUDA GPU"):
        hardware.check_hardware(plain, "fp16")
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ModelError, match="its CPU has no native bfloat16"):
        hardware.check_hardware(plain, "bf16")
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    hardware.check_hardware(plain, "bf16")


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_a_gpu_only_accelerate_launch_is_refused_without_gpus(variable, cpu_only, monkeypatch) -> None:
    monkeypatch.setenv(variable, "false")
    hardware.check_launch()
    monkeypatch.setenv(variable, "true")
    with pytest.raises(ModelError, match=rf"accelerate launch \({variable}=true\): distributed_type .* has none"):
        hardware.check_launch()


class RecordingLibc:
    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def mallopt(self, option: int, value: int) -> int:
        self.calls.append((option, value))
        return self.result


def test_sets_mmap_max_to_zero_and_raises_the_trim_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = RecordingLibc()
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc if name == "libc.so.6" else None)
    assert perf.keep_freed_memory_in_heap() is True
    assert libc.calls == [(-4, 0), (-1, 2**31)]  # M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 2 GiB


def test_reports_false_when_glibc_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: RecordingLibc(result=0))
    assert perf.keep_freed_memory_in_heap() is False


def test_no_op_off_linux_and_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = RecordingLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert perf.keep_freed_memory_in_heap() is False and libc.calls == []

    def missing(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert perf.keep_freed_memory_in_heap() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_real_glibc_accepts_the_settings() -> None:
    assert perf.keep_freed_memory_in_heap() is True
