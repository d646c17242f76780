"""How PyTorch's CPU tensors get their memory in a ``rapdeploy`` process.

A RAP training step on CPU allocates and frees activation tensors of tens to hundreds of MiB each. glibc hands such
blocks straight back to the kernel, so the next step faults every page in again: a demo training step spent more
time in the kernel zero-filling pages than computing (13 million page faults, 32 s system time against 18 s user
time for one step of 128 videos). PyTorch's ``THP_MEM_ALLOC_ENABLE=1`` asks for transparent huge pages (2 MiB) for
allocations of 2 MiB and more, which cuts the faults 512-fold per page. It changes where memory comes from, never a
value: trained weights and every metric are bit-identical.
"""

from __future__ import annotations

import os
import sys

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


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
