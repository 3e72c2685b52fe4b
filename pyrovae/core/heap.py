"""glibc heap settings for the evaluator's allocation pattern.

Each chunk of ``estimate_log_likelihood`` allocates and frees tens of MB ([particles x batch,
pixels] buffers). By default glibc hands the top of the heap back to the OS once twice its mmap
threshold is free, so every chunk page-faults those buffers in anew: a third of the evaluator's
time on a 2-core machine. :func:`keep_freed_memory` keeps them; :func:`release_free_memory`,
called every few seconds of work, returns the free pages that fragmentation strands between
live allocations, so the process does not grow with the number of points either.
Both do nothing where glibc's malloc is not the allocator. These are process-wide settings,
so the library never makes them itself: the CLI's evaluating commands opt in (a Python caller
may too), and the evaluator then trims its heap as it goes (:func:`tuned`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20   # glibc's ceiling on 64-bit: larger values are refused


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        return libc
    except (OSError, AttributeError, TypeError):
        return None


@functools.cache
def keep_freed_memory() -> bool:
    """Keep freed buffers below MMAP_THRESHOLD in the heap for reuse (process-wide, lasting).
    Returns False where mallopt is unavailable."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def tuned() -> bool:
    """Whether :func:`keep_freed_memory` has been called in this process."""
    return keep_freed_memory.cache_info().currsize > 0


def release_free_memory() -> None:
    """malloc_trim(0): give the heap's free pages back to the OS."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
