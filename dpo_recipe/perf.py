"""Process-level speed settings that change no numbers.

glibc hands large freed blocks back to the OS and trims the heap after every free; a DPO step
frees and re-allocates the same activation buffers hundreds of times, so the kernel spends
seconds per optimizer step zeroing pages (measured: 16.5 M minor page faults for a 128-pair
guide run, 0.7 M with the thresholds raised). Raising them keeps those buffers in the heap.
"""

from __future__ import annotations

import ctypes
import sys

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
