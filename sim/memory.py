"""Process memory settings for fast repeated rendering."""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems


def keep_freed_memory() -> bool:
    """Ask glibc to recycle freed blocks of up to 32 MiB instead of returning them to the OS.

    Every render allocates and frees the same few 10-30 MB intermediate tensors. By default
    glibc serves such blocks with fresh mmap calls, so each render pays for page faults and
    zeroing, measured at 25-45 % of a linear render on a 2-core CPU (BENCHMARKS.md). Returns
    False where the C library is not glibc (nothing changes there).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and libc.mallopt(M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError, TypeError):
        return False
