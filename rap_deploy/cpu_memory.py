"""How PyTorch's CPU tensors get their memory in a ``rapdeploy`` process.

A RAP training step on CPU allocates and frees activation tensors of tens to hundreds of MiB each. glibc hands such
blocks straight back to the kernel, so the next step faults every page in again: a demo training step spent more
time in the kernel zero-filling pages than computing (13 million page faults, 32 s system time against 18 s user
time for one step of 128 videos). PyTorch's ``THP_MEM_ALLOC_ENABLE=1`` asks for transparent huge pages (2 MiB) for
allocations of 2 MiB and more, which cuts the faults 512-fold per page. It changes where memory comes from, never a
value: trained weights and every metric are bit-identical.

Huge pages cut the number of faults, not the zero-filling: every freshly mapped page is still cleared by the kernel.
glibc maps each block of 128 KiB or more (a threshold that grows to at most 32 MiB) with its own ``mmap`` and unmaps
it on free, so a training step's large tensors are new memory every step. :func:`reuse_freed_memory` keeps freed
blocks in the process's heap instead, where the next step's tensors of the same sizes find them.
Memory one stage freed stays with the process, so a process that runs several stages (the demo) gives it back between
them (:func:`give_back_freed_memory`): otherwise the next stage's peak sits on top of it. Measured (README,
"Commands", CPU memory; fresh demos on a 2-core EPYC, 2026-12-04): kept and given back after each step, 472 s (three
runs) against 503 s with glibc's default (four), RAP training 145 s against 170 s, the same peak RSS (4.2 GiB) and
bit-identical weights; kept without the give-back, 508 s and a peak of up to 5.5 GiB.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"
KEEP_FREED_ENV = "RAPDEPLOY_KEEP_FREED_MEMORY"  # "0": leave glibc's malloc as it is (see reuse_freed_memory)
# glibc's own malloc settings (environment variables read at process start): any one of them set means the user chose
# how this process allocates, and :func:`reuse_freed_memory` leaves every setting as it is.
GLIBC_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's <malloc.h>
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: the largest is "trim only past 2 GiB of free heap top"


def prefer_huge_pages() -> bool:
    """Turn on PyTorch's huge-page CPU allocations (``THP_MEM_ALLOC_ENABLE=1``) for this process and the processes it
    starts, unless the variable is already set (``THP_MEM_ALLOC_ENABLE=0`` opts out).

    PyTorch reads the variable once, at its first CPU allocation, so this only takes effect before ``torch`` is
    imported. Returns whether huge pages were requested here.
    """
    if HUGE_PAGES_ENV in os.environ or "torch" in sys.modules:
        return False
    os.environ[HUGE_PAGES_ENV] = "1"
    return True


def is_glibc() -> bool:
    """Whether this process's C library is glibc (the one whose ``malloc`` :func:`reuse_freed_memory` sets)."""
    return platform.libc_ver()[0] == "glibc"


def _user_chose_malloc_settings(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` sets any of glibc's malloc variables (``MALLOC_*_`` or a ``glibc.malloc`` tunable)."""
    return any(name in environ for name in GLIBC_MALLOC_ENV) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def reuse_freed_memory() -> bool:
    """Have this process's glibc ``malloc`` keep freed memory for reuse instead of giving it back to the kernel: no
    block gets its own ``mmap`` (``M_MMAP_MAX`` 0, so large blocks come from the heap too) and the heap's free top is
    given back only past 2 GiB (``M_TRIM_THRESHOLD``). The memory a process holds stays near its peak instead of
    falling after each step, and the peak grows where one stage's freed blocks do not fit the next stage's tensors
    (the demo reached 5.5 GiB against 4.3 before it gave the memory back between steps, module docstring).

    Takes effect for the allocations after the call, so it may run at any time. Does nothing, and returns False, when
    ``RAPDEPLOY_KEEP_FREED_MEMORY=0``, when the C library is not glibc, or when the environment already sets one of
    glibc's malloc variables (:data:`GLIBC_MALLOC_ENV` or ``GLIBC_TUNABLES=glibc.malloc.…``; setting any of them
    also turns off glibc's growing mmap threshold, so none of them is a way back to the default). Returns whether
    both settings were applied here.
    """
    if os.environ.get(KEEP_FREED_ENV) == "0" or _user_chose_malloc_settings(os.environ):
        return False
    import ctypes

    mallopt = _glibc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    return mallopt is not None and mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1


def give_back_freed_memory() -> bool:
    """Return the free memory of this process's glibc heap to the kernel now (``malloc_trim(0)``: the free top and
    every whole free page inside it). Call it between stages of one process: :func:`reuse_freed_memory` keeps what a
    stage freed, sized for that stage's tensors, and the next stage would allocate its own on top of it. The memory
    given back is faulted in again only if it is used again, once. Returns whether glibc gave any memory back (False
    on another C library)."""
    import ctypes

    trim = _glibc_function("malloc_trim", [ctypes.c_size_t])
    return trim is not None and trim(0) == 1


def _glibc_function(name: str, argtypes: list[Any]) -> Any:
    """glibc's C function ``name`` (returning an int) with ``argtypes``; None when the C library is another one or
    does not have it."""
    if not is_glibc():
        return None
    import ctypes

    try:
        fn = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn
