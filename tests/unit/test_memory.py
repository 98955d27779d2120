"""The glibc mmap threshold is fixed at start-up (scripts/soak shows the effect on RSS)."""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tollgate.mitm.memory import fix_mmap_threshold


PROBE = """
import ctypes, sys
libc = ctypes.CDLL(None)
libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p
block = libc.malloc(4 << 20)
libc.free(ctypes.c_void_p(block))  # glibc now raises its threshold past 4 MiB
if sys.argv[1] == "fix":
    from tollgate.mitm.memory import fix_mmap_threshold
    assert fix_mmap_threshold()
top = libc.sbrk(0)
libc.malloc(1 << 20)
print("heap" if libc.sbrk(0) != top else "mmap")
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_with_the_threshold_fixed_a_large_block_is_mmapped_not_carved_from_the_heap():
    def where(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).resolve().parents[2])
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert where("default") == "heap"  # what made RSS creep
    assert where("fix") == "mmap"


def test_a_failing_mallopt_changes_nothing(monkeypatch):
    monkeypatch.setattr(ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError("no libc")))
    assert fix_mmap_threshold() is False
