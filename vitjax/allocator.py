"""Keep freed memory in the process, so that XLA:CPU's temporaries are not page-faulted anew on
every execution.

XLA:CPU allocates each execution's temporary buffers with malloc and frees them at the end. With
glibc's default settings, buffers of more than a few megabytes are mapped fresh from the kernel
(mmap), freed ones go back (munmap, heap trimming, per-thread arenas unmapped when empty), and the
next execution faults every page in again: a ViT-S/16 train step at batch 32 takes about 1.2
million minor faults (4.7 GB zeroed by the kernel, 3-12 s of system CPU). Three glibc settings
stop the round trip: no mmap for large blocks, no trimming, one arena. The process then keeps its
peak heap for reuse, as tcmalloc and jemalloc do (in most executions: in a 50 MB microbenchmark
about one process in ten still re-faulted some executions' temporaries; ViT train steps measured
0 faults in every run). The `vitjax` command applies them at start-up;
library users call `keep_freed_memory()` first thing (before the first JAX computation, so that
XLA's worker threads never get arenas of their own).
"""

from __future__ import annotations

import ctypes
import os

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

OPT_OUT = "VITJAX_MALLOC"  # =system leaves the allocator as it is


def _glibc():
    """The process's C library when malloc is glibc's, else None: another C library (musl, macOS,
    Windows), or an allocator preloaded in front of glibc's (tcmalloc, jemalloc, mimalloc already
    keep freed memory, and their mallopt, if any, ignores these settings)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None
    preloaded = os.environ.get("LD_PRELOAD", "")
    if any(name in preloaded for name in ("tcmalloc", "jemalloc", "mimalloc")):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Sets glibc's malloc to keep freed memory for reuse (see the module docstring). Returns True
    when the settings were applied; False when the C library is not glibc, another allocator is
    preloaded, or the environment says VITJAX_MALLOC=system. The cost: the process's resident
    memory stays at its peak instead of shrinking after large temporaries are freed."""
    if os.environ.get(OPT_OUT, "").lower() == "system":
        return False
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success; -1 as a size means "never trim".
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_ARENA_MAX, 1))
    applied = [libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 for param, value in settings]
    return all(applied)


def describe(applied: bool) -> str:
    """One line for logs and benchmark output: which malloc behaviour this process runs with."""
    if applied:
        return "malloc: glibc, keeping freed memory (vitjax.allocator; VITJAX_MALLOC=system for glibc's default)"
    preloaded = os.environ.get("LD_PRELOAD", "")
    return f"malloc: as the process started ({'LD_PRELOAD=' + preloaded if preloaded else 'not changed by vitjax'})"
