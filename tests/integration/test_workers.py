"""`tollgate run --workers 2`: two processes on one port, each with its own audit stream;
signals reach every worker; a worker that dies is replaced."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.proxy import BIN, REPO
from tollgate.workers import default_workers

pytestmark = pytest.mark.integration

POLICY = """\
version: 1
clients: [{{name: ops, cidrs: [127.0.0.1/32]}}]
destinations:
  - {{host: api.allowed.test, ports: [{tls}], clients: [ops], mode: intercept}}
{extra}
network:
  allow_cidrs: [127.0.0.1/32]
  resolve: {{api.allowed.test: 127.0.0.1, x.wild.test: 127.0.0.1}}
upstream:
  extra_ca_files: [{ca}]
"""
WILD = "  - {{host: x.wild.test, ports: [{tls}], clients: [ops], mode: intercept}}"


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_until(check, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def start(env, tmp_path, *workers_option: str):
    """`tollgate run` with WORKERS_OPTION; (process, port) once every worker listens."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(tls=env.tls.port, ca=env.pki.ca_cert_path, extra=""))
    log = tmp_path / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "tollgate"), "run", *workers_option, "--policy", str(policy),
                                 "--listen", "127.0.0.1:0", "--ca-dir", str(tmp_path / "ca"),
                                 "--audit-dir", str(tmp_path / "audit"), "--reload-interval", "0"],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    # One worker listens by itself; several report through the supervisor's "(N workers)".
    listening = re.compile(rb"^tollgate: listening on 127\.0\.0\.1:(\d+)( \(\d+ workers\))?$", re.M)
    wait_until(lambda: listening.search(log.read_bytes()) or proc.poll() is not None)
    assert proc.poll() is None, log.read_text()
    return proc, listening.search(log.read_bytes())


def stop(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def workers(env, tmp_path):
    proc, listening = start(env, tmp_path, "--workers", "2")
    try:
        assert listening.group(2) == b" (2 workers)"
        yield proc, int(listening.group(1)), tmp_path, tmp_path / "policy.yaml"
    finally:
        stop(proc)


def get(port: int, ca: Path, url: str) -> int:
    with httpx.Client(proxy=f"http://127.0.0.1:{port}", verify=ssl.create_default_context(cafile=str(ca)),
                      timeout=10) as c:
        try:
            return c.get(url).status_code
        except httpx.ProxyError as e:
            return 403 if "403" in str(e) else -1


def worker_pids(tmp_path: Path) -> list[int]:
    """The worker processes of this test's supervisor, found by their command lines."""
    mine = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.name.isdigit() and b"--worker-index" in cmdline and str(tmp_path).encode() in b" ".join(cmdline):
            mine.append(int(entry.name))
    return mine


def test_two_workers_share_the_port_and_each_audits(env, workers):
    proc, port, tmp, _ = workers
    ca = tmp / "ca" / "root-ca.pem"
    url = f"https://api.allowed.test:{env.tls.port}/"
    statuses = [get(port, ca, url) for _ in range(24)]  # a new connection each time
    assert set(statuses) == {200}
    logs = [tmp / "audit" / f"worker-{i}" / "audit.jsonl" for i in (0, 1)]
    served = [sum(e["event"]["action"] == "connection-allowed" for e in events(p)) for p in logs]
    assert sum(served) == 24 and min(served) > 0, served  # the kernel spread the connections
    for p in logs:
        done = subprocess.run([str(BIN / "tollgate"), "audit", "verify", "--log", str(p)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    # The audit directory is read as a whole: both chains, and the events of both in one list.
    done = subprocess.run([str(BIN / "tollgate"), "audit", "search", "--log", str(tmp / "audit"),
                           "--action", "connection-allowed", "--format", "json"], capture_output=True, text=True)
    times = [json.loads(line)["@timestamp"] for line in done.stdout.splitlines()]
    assert len(times) == 24 and times == sorted(times)


def test_sighup_reaches_every_worker_and_sigterm_stops_them(env, workers):
    proc, port, tmp, policy = workers
    ca = tmp / "ca" / "root-ca.pem"
    wild = f"https://x.wild.test:{env.tls.port}/"
    assert get(port, ca, wild) == 403
    policy.write_text(POLICY.format(tls=env.tls.port, ca=env.pki.ca_cert_path, extra=WILD.format(tls=env.tls.port)))
    proc.send_signal(signal.SIGHUP)
    logs = [tmp / "audit" / f"worker-{i}" / "audit.jsonl" for i in (0, 1)]
    wait_until(lambda: all(any(e["event"]["action"] == "policy-reloaded" for e in events(p)) for p in logs))
    assert {get(port, ca, wild) for _ in range(6)} == {200}
    pids = worker_pids(tmp)
    assert len(pids) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    assert all(events(p)[-1]["event"]["action"] == "proxy-stopped" for p in logs)


def test_a_dead_worker_is_replaced(env, workers):
    proc, port, tmp, _ = workers
    ca = tmp / "ca" / "root-ca.pem"
    (victim, _) = sorted(worker_pids(tmp))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(worker_pids(tmp)) == 2 and victim not in worker_pids(tmp))
    time.sleep(2)  # the new worker starts listening
    assert {get(port, ca, f"https://api.allowed.test:{env.tls.port}/") for _ in range(10)} == {200}
    assert proc.poll() is None


def test_the_default_is_one_worker_per_usable_core(env, tmp_path):
    cores = default_workers()
    proc, listening = start(env, tmp_path)
    try:
        if cores > 1:
            assert listening.group(2) == f" ({cores} workers)".encode()
        assert len(worker_pids(tmp_path)) == (cores if cores > 1 else 0)
        ca = tmp_path / "ca" / "root-ca.pem"
        assert get(int(listening.group(1)), ca, f"https://api.allowed.test:{env.tls.port}/") == 200
    finally:
        stop(proc)
    done = subprocess.run([str(BIN / "tollgate"), "audit", "verify", "--log", str(tmp_path / "audit")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.count("hash chain intact") == cores, done.stdout


def test_workers_option_must_be_positive(tmp_path):
    done = subprocess.run([str(BIN / "tollgate"), "run", "--workers", "0", "--ca-dir", str(tmp_path / "ca")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and "--workers must be 1 or more" in done.stderr
