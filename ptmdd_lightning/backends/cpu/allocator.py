"""An explicit opt-in process setting that makes the CPU paths faster (pure Python + ctypes; never imports Lightning).

Nothing calls it by itself: a run opts in with the modules' ``keep_freed_memory: true`` (the shipped CPU configs do),
and the choice is recorded in ``results.json`` (``machine.backend.cpu.keep_freed_memory``).

:func:`keep_freed_memory`: glibc's ``malloc`` returns large freed blocks to the kernel (``munmap`` of blocks above
its mmap threshold, trimming of the heap top), so the next step's tensors of the same sizes are page-faulted in
and zeroed again; keeping the freed memory (mmap threshold and trim threshold raised to 1 GiB) removes almost all
of those page faults (docs/speed.md, lever 15). The cost: the process keeps its peak heap (RSS
does not shrink after a large temporary is freed) -- what jemalloc/tcmalloc, the allocators Intel recommends for
PyTorch on CPUs, do as well.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the kernel (once per process).

    Sets ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to 1 GiB with ``mallopt``: process-wide and not undone, so
    only a run that asks for it calls it (``keep_freed_memory: true``). Does nothing (returns ``False``) off Linux,
    with another C library, or when ``PTMDD_MALLOC_TUNE=0``.

    Returns:
        whether both settings were applied.

    Raises:
        Nothing of its own.
    """
    if not sys.platform.startswith("linux") or os.environ.get("PTMDD_MALLOC_TUNE", "1").strip().lower() in (
        "0",
        "off",
        "false",
        "no",
    ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another C library: leave it alone
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
