"""common/malloc.py: glibc's malloc keeps freed memory, so a repeated allocation pattern stops page-faulting."""
import platform
import subprocess
import sys

import pytest

# A forward pass, roughly: many large buffers alive at once, then all freed. With glibc's defaults the
# freed top of the heap goes back to the kernel and every repetition faults the pages in again.
PATTERN = """
import resource, sys
import numpy as np
from common.malloc import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tuned" else None
def step():
    live = [np.ones(8 << 20, np.uint8) for _ in range(10)]
    del live
for _ in range(3):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
"""


def _faults_per_step(mode):
    out = subprocess.run([sys.executable, "-c", PATTERN, mode], capture_output=True, text=True, check=True,
                         cwd=__file__.rsplit("/tests/", 1)[0]).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting; a no-op elsewhere (macOS, musl)")
def test_keep_freed_memory_stops_refaulting_the_same_buffers():
    applied, tuned = _faults_per_step("tuned")
    _, default = _faults_per_step("default")
    assert applied == "True"
    # 80 MB touched per step is 20,480 pages; the default returns and re-faults a good part of it.
    assert default > 2000, f"the pattern no longer provokes faults under glibc's defaults ({default}/step)"
    assert tuned < 100, f"{tuned} page faults per step with the tuned malloc"


def test_keep_freed_memory_is_a_no_op_off_linux(monkeypatch):
    from common import malloc
    monkeypatch.setattr(malloc.sys, "platform", "darwin")
    assert malloc.keep_freed_memory() is False
