"""Precision and quantization settings refused on hardware that cannot run them."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpo_recipe import hardware
from dpo_recipe.config import ModelSection
from dpo_recipe.errors import ModelError


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
