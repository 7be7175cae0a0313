"""Process memory settings for fast repeated rendering (opt-in: importing sonolab changes nothing).

`keep_freed_memory()` tunes glibc's allocator for the whole process, so it runs only when asked:
`Renderer` calls it when it is built (rendering is what it speeds up), and programs call it at
start-up (scripts/train.py, scripts/benchmark.py), never an import.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems

_kept = False  # set once glibc accepted the settings (they cannot be read back from glibc)


def keep_freed_memory() -> bool:
    """Ask glibc to recycle freed blocks of up to 32 MiB instead of returning them to the OS.

    Every render allocates and frees the same few 10-30 MB intermediate tensors. By default
    glibc serves such blocks with fresh mmap calls, so each render pays for page faults and
    zeroing, measured at 25-45 % of a linear render on a 2-core CPU (BENCHMARKS.md). This is
    process-wide (mallopt), hence an explicit call. Returns False where the C library is not
    glibc (nothing changes there). Calling it again is harmless.
    """
    global _kept
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        _kept = _kept or bool(
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and libc.mallopt(M_TRIM_THRESHOLD, 2**30)
        )
    except (OSError, AttributeError, TypeError):
        return False
    return _kept


def freed_memory_kept() -> bool:
    """Whether `keep_freed_memory` has changed glibc's settings in this process."""
    return _kept
