"""Start a real Tollgate (``tollgate run`` or ``mitmdump -s addons/tollgate.py``) as a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LISTEN_LINE = re.compile(rb"tollgate: listening on \[?([0-9a-f.:]+?)\]?:(\d+)")


class ProxyExited(RuntimeError):
    pass


@dataclass
class ProxyProcess:
    args: list[str]
    log_path: Path
    audit_path: Path
    ca_dir: Path
    proc: subprocess.Popen | None = None
    port: int = 0
    host: str = "127.0.0.1"
    _log: object = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def root_ca(self) -> Path:
        return self.ca_dir / "root-ca.pem"

    def start(self, timeout: float = 30.0) -> "ProxyProcess":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTEN_LINE.search(self.log_path.read_bytes())
            if match:
                self.host, self.port = match.group(1).decode(), int(match.group(2))
                return self
            if self.proc.poll() is not None:
                raise ProxyExited(f"proxy exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"proxy did not start in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def events(self) -> list[dict]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line.strip()]

    def events_since(self, mark: int) -> list[dict]:
        return self.events()[mark:]

    def mark(self) -> int:
        return len(self.events())

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()
        return self.proc.returncode if self.proc else None


def tollgate_run(tmp: Path, policy: Path, *extra: str) -> ProxyProcess:
    ca_dir, audit_dir = tmp / "ca", tmp / "audit"
    # One process, so the audit log is AUDIT_DIR/audit.jsonl (test_workers covers --workers N).
    args = [str(BIN / "tollgate"), "run", "--workers", "1", "--policy", str(policy), "--listen", "127.0.0.1:0",
            "--ca-dir", str(ca_dir), "--audit-dir", str(audit_dir), *extra]
    return ProxyProcess(args, tmp / "proxy.log", audit_dir / "audit.jsonl", ca_dir)


def mitmdump_run(tmp: Path, policy: Path, ca_dir: Path, *scripts: str) -> ProxyProcess:
    audit = tmp / "audit" / "audit.jsonl"
    args = [str(BIN / "mitmdump"), "-s", str(REPO / "addons" / "tollgate.py")]
    for script in scripts:
        args += ["-s", script]
    args += ["--set", f"tollgate_policy={policy}", "--set", f"confdir={ca_dir}",
             "--set", f"tollgate_audit_path={audit}", "--listen-host", "127.0.0.1", "--listen-port", "0"]
    return ProxyProcess(args, tmp / "mitmdump.log", audit, ca_dir)
