"""CPU time and memory of a process tree, read from /proc (Linux only; no psutil needed)."""

from __future__ import annotations

import os
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()  # fields from 3 (state) on


def tree(root: int) -> list[int]:
    """root and all its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU seconds of these processes (including reaped children's)."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields:  # utime stime cutime cstime are fields 14-17, i.e. [11:15] here
            total += sum(int(x) for x in fields[11:15])
    return total / TICK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def hwm_bytes(pid: int) -> int:
    """The kernel's peak RSS (VmHWM) of one process over its whole life."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


class PeakRss:
    """Samples the RSS of a process tree every `interval` seconds in a thread; `peak` is the
    largest sum seen since start()."""

    def __init__(self, root: int, interval: float = 0.1):
        self.root, self.interval, self.peak = root, interval, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "PeakRss":
        self.peak = rss_bytes(tree(self.root))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        pids, refreshed = tree(self.root), time.monotonic()
        while not self._stop.wait(self.interval):
            if time.monotonic() - refreshed > 1:
                pids, refreshed = tree(self.root), time.monotonic()
            self.peak = max(self.peak, rss_bytes(pids))

    def stop(self) -> int:
        self._stop.set()
        if self._thread:
            self._thread.join()
        return self.peak
