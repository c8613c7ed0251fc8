"""keep_freed_memory_in_heap sets glibc's two thresholds on Linux, and is a no-op elsewhere."""

from __future__ import annotations

import ctypes
import platform
import sys

import pytest

from dpo_recipe import perf


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
