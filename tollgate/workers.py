"""`tollgate run --workers N`: N proxy processes on one port, balanced by the kernel.

Each worker is a whole `tollgate run` (same policy, same CA) that binds the port with
SO_REUSEPORT, so Linux spreads new connections across them; there is no proxy-in-front
hop. Each worker writes its own audit stream (DIR/worker-I/audit.jsonl: one hash chain per
worker, no lock shared on the hot path). The supervisor forwards SIGTERM/SIGINT/SIGHUP and
restarts a worker that dies; it exits if a worker cannot start at all.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

RESTART_DELAY = 1.0
START_TIMEOUT = 60.0


def default_workers(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota
    (a container limited to 2 CPUs on a 64-core node gets 2 workers, not 64)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to honour
    return max(1, cores)


def worker_audit_dir(audit_dir: Path, index: int) -> Path:
    return audit_dir / f"worker-{index}"


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (not listen) with SO_REUSEPORT: fixes port 0 to one number for every worker and
    keeps other programs off it. A socket that does not listen gets no connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, sock.getsockname()[1]


class Supervisor:
    def __init__(self, worker_args: list[list[str]], listen: str):
        self.worker_args = worker_args
        self.listen = listen
        self.procs: list[subprocess.Popen | None] = [None] * len(worker_args)
        self.ready = [threading.Event() for _ in worker_args]
        self.stopping = False

    def start(self, index: int) -> None:
        proc = subprocess.Popen(self.worker_args[index], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.procs[index] = proc
        threading.Thread(target=self._relay, args=(index, proc), daemon=True).start()

    def _relay(self, index: int, proc: subprocess.Popen) -> None:
        """Worker output, prefixed; notes when the worker listens."""
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("tollgate: listening on"):
                self.ready[index].set()
            print(f"[worker {index}] {line}", flush=True)

    def signal_all(self, signum: int) -> None:
        for proc in self.procs:
            if proc and proc.poll() is None:
                proc.send_signal(signum)

    def run(self) -> int:
        for i in range(len(self.worker_args)):
            self.start(i)
        deadline = time.monotonic() + START_TIMEOUT
        while not all(r.is_set() for r in self.ready):
            failed = [i for i, p in enumerate(self.procs) if p and p.poll() is not None]
            if failed or time.monotonic() > deadline:
                print(f"tollgate: cannot start: worker {failed[0] if failed else '?'} did not start "
                      "(see its output above)", file=sys.stderr, flush=True)
                self.stopping = True
                self.signal_all(signal.SIGTERM)
                self._wait_all()
                return 2
            time.sleep(0.05)
        print(f"tollgate: listening on {self.listen} ({len(self.procs)} workers)", flush=True)
        while not self.stopping:
            for i, proc in enumerate(self.procs):
                if proc and proc.poll() is not None and not self.stopping:
                    print(f"tollgate: worker {i} exited with {proc.returncode}; restarting it", file=sys.stderr,
                          flush=True)
                    time.sleep(RESTART_DELAY)
                    self.ready[i].clear()
                    self.start(i)
            time.sleep(0.2)
        return self._wait_all()

    def _wait_all(self) -> int:
        worst = 0
        for proc in self.procs:
            if proc:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                worst = max(worst, proc.returncode if proc.returncode and proc.returncode > 0 else 0)
        return worst


def supervise(worker_args: list[list[str]], listen: str, reserved: socket.socket) -> int:
    sup = Supervisor(worker_args, listen)

    def stop(signum, _frame):
        sup.stopping = True
        sup.signal_all(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda signum, _frame: sup.signal_all(signal.SIGHUP))
    try:
        return sup.run()
    finally:
        reserved.close()
