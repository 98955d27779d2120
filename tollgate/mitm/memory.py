"""Process memory settings for a long-running proxy.

glibc raises its mmap threshold (up to 32 MiB) each time an mmapped block is freed; importing
mitmproxy alone takes it past 4 MiB. After that, each request's large temporaries (over
128 KiB) come from the main heap, and freed there they leave holes that are never returned:
RSS crept 0.2-0.4 MiB a minute in scripts/soak, with memory in use flat. Fixing the
threshold at glibc's default keeps such blocks mmapped and given back when freed.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number
DEFAULT_THRESHOLD = 128 * 1024


def fix_mmap_threshold(size: int = DEFAULT_THRESHOLD) -> bool:
    """True when set; False where there is no glibc mallopt (musl, macOS): nothing changes."""
    try:
        return ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, size) == 1
    except (OSError, AttributeError):
        return False
