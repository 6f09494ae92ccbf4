"""Process-level settings for CPU work: how glibc's malloc hands memory back to the kernel.

A DeepLabV3+ forward on the CPU allocates and frees tens of MB of activations per batch. With glibc's
defaults, blocks over a (dynamic) threshold come from fresh mmaps and freed memory at the top of the heap is
returned to the kernel, so the next batch page-faults the same memory in again. ``keep_freed_memory`` makes
malloc serve blocks up to 32 MB (glibc's largest setting) from its heap and keep up to 1 GB of freed memory
there, so most of those faults go (figures: BENCHMARKS.md, Decisions). The cost is resident memory: the process
keeps its peak heap instead of shrinking between batches.

glibc only (Linux); elsewhere (macOS, musl) it does nothing. It is a per-process setting: a process
started with ``fork`` inherits it, one started by ``forkserver`` or ``spawn`` must call it itself. Only the sweep
(evaluate_corruptions.py, and bench.py, which runs it in-process) calls it: without it the sweep misses its
shared_time target (BENCHMARKS.md, Decisions). The other scripts gain a few percent at most and leave it to the
environment (MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824).
"""
import ctypes
import ctypes.util
import sys

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20     # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as described above; returns whether it applied (False off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
