"""Sampling profiles with py-spy: far less overhead than cProfile, so the shares are close to
what an unprofiled proxy spends. py-spy is installed on first use with pip into
~/.cache/tollgate-bench/py-spy (never into the project's venv)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

TOOL_DIR = Path.home() / ".cache" / "tollgate-bench" / "py-spy"


def ensure_pyspy() -> str:
    """The py-spy binary; installs it with pip on first use. Raises on failure."""
    found = shutil.which("py-spy")
    if found:
        return found
    binary = TOOL_DIR / "bin" / "py-spy"
    if not binary.exists():
        print(f"installing py-spy into {TOOL_DIR} (pip)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(TOOL_DIR), "py-spy"],
                       check=True)
    return str(binary)


class Recorder:
    """`py-spy record` of one process, in raw (collapsed stack) format, stopped with SIGINT."""

    def __init__(self, pid: int, out: Path, rate: int = 250):
        self.pid, self.out, self.rate = pid, out, rate
        self.proc: subprocess.Popen | None = None
        self.log = out.with_suffix(".log")

    def start(self) -> None:
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen([ensure_pyspy(), "record", "--pid", str(self.pid), "--rate", str(self.rate),
                                      "--format", "raw", "--full-filenames", "--nonblocking", "--output", str(self.out)],
                                     stdout=self._logf, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()


def parse(path: Path) -> tuple[int, Counter, Counter]:
    """(samples, inclusive samples per "file:function", own samples per "file:function")."""
    total, inclusive, own = 0, Counter(), Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        own[frames[-1]] += n
    return total, inclusive, own


def _frame(frame: str) -> str:
    """'func (/path/file.py:123)' -> '/path/file.py:func'."""
    func, _, where = frame.partition(" (")
    where = where.rstrip(")")
    filename = where.rsplit(":", 1)[0] if ":" in where else where
    return f"{filename}:{func}"


def report(path: Path, repo: Path, requests: int, proxy_cpu_s: float, top: int, out) -> None:
    total, inclusive, own = parse(path)
    if not total:
        print(f"py-spy recorded no samples; see {path.with_suffix('.log')}", file=out)
        return
    package = str(repo / "tollgate") + os.sep
    root = package + "cli.py:"  # main -> cmd_run -> asyncio.run: the root of the event loop's stacks
    ours = [(n, name) for name, n in inclusive.items() if name.startswith(package) and not name.startswith(root)]
    ours.sort(reverse=True)
    own_ours = sum(n for name, n in own.items() if name.startswith(package))
    per_req = proxy_cpu_s * 1000 / requests if requests else float("nan")
    print(f"\n## py-spy profile of Tollgate: top {top} inclusive entries in tollgate/", file=out)
    print(f"{total} samples of the proxy's active threads in the window; the proxy used {proxy_cpu_s:.2f} CPU s "
          f"for {requests} requests = {per_req:.2f} ms CPU per request; a share below is that share of it", file=out)
    print(f"own time in tollgate/ functions: {100 * own_ours / total:.1f}% of samples "
          f"(tollgate/cli.py, the root of every event-loop stack, is left out below)", file=out)
    print("```", file=out)
    print(f"{'incl %':>7} {'own %':>6} {'ms CPU/req':>10}  function", file=out)
    for n, name in ours[:top]:
        rel = os.path.relpath(name, repo)
        print(f"{100 * n / total:7.1f} {100 * own.get(name, 0) / total:6.1f} {per_req * n / total:10.3f}  {rel}",
              file=out)
    print("```", file=out)
    print("\nFor context, the top 12 of the whole process by own samples:", file=out)
    print("```", file=out)
    print(f"{'own %':>6} {'incl %':>7}  function", file=out)
    for name, n in own.most_common(12):
        shown = os.path.relpath(name, repo) if name.startswith(str(repo)) else _short(name)
        print(f"{100 * n / total:6.1f} {100 * inclusive[name] / total:7.1f}  {shown}", file=out)
    print("```", file=out)


def _short(name: str) -> str:
    marker = "site-packages" + os.sep
    if marker in name:
        return name.split(marker, 1)[1]
    return name.replace(str(Path(sys.base_prefix)), "<python>")
