"""Hot reload on a running proxy under traffic: a good file changes decisions on the next
connection, open connections keep their policy, a bad file changes nothing; SIGHUP too."""

from __future__ import annotations

import hashlib
import os
import signal
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.proxy import REPO, tollgate_run

pytestmark = pytest.mark.integration

# `steady` is always allowed (the traffic loop), `dropped` goes away, `added` arrives.
POLICY = """\
version: 1
clients: [{{name: ops, cidrs: [127.0.0.1/32]}}]
destinations:
  - {{host: api.allowed.test, ports: [{port}], clients: [ops], mode: intercept}}
{extra}
network:
  allow_cidrs: [127.0.0.1/32]
  resolve: {{api.allowed.test: 127.0.0.1, x.wild.test: 127.0.0.1, unlisted.test: 127.0.0.1, plain.test: 127.0.0.1}}
upstream:
  extra_ca_files: [{ca}]
"""
DROPPED = ("  - {{host: x.wild.test, ports: [{port}], clients: [ops], mode: intercept}}\n"
           "  - {{host: plain.test, ports: [{plain}], clients: [ops], mode: intercept}}")
ADDED = "  - {{host: unlisted.test, ports: [{port}], clients: [ops], mode: intercept}}"


def policy_text(env, *entries: str) -> str:
    extra = "\n".join(e.format(port=env.tls.port, plain=env.plain.port) for e in entries)
    return POLICY.format(port=env.tls.port, ca=env.pki.ca_cert_path, extra=extra)


def replace_file(path: Path, text: str) -> None:
    """As deployment tools do: write a new file, rename it over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_for_event(proxy, action: str, mark: int, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in proxy.events_since(mark) if e["event"]["action"] == action]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no {action} event in {timeout}s:\n{proxy.output()[-2000:]}")


class Traffic:
    """A client that keeps sending requests on new connections while the test reloads."""

    def __init__(self, proxy, url: str):
        self.proxy, self.url = proxy, url
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        verify = ssl.create_default_context(cafile=str(self.proxy.root_ca))
        while not self._stop.is_set():
            try:
                with httpx.Client(proxy=self.proxy.url, verify=verify, timeout=10) as c:  # a new connection each time
                    self.statuses.append(c.post(self.url, json={"n": len(self.statuses)}).status_code)
            except Exception as e:  # any failure counts against the reload
                self.errors.append(f"{type(e).__name__}: {e}")

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def connect_status(proxy, url: str) -> int:
    """The status of the CONNECT: 200 when the tunnel opens, else the proxy's refusal."""
    verify = ssl.create_default_context(cafile=str(proxy.root_ca))
    with httpx.Client(proxy=proxy.url, verify=verify, timeout=10) as c:
        try:
            return c.get(url).status_code
        except httpx.ProxyError as e:
            return 403 if "403" in str(e) else -1


@pytest.fixture
def reloading(env, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(env, DROPPED))
    proxy = tollgate_run(tmp_path, path, "--reload-interval", "0.2").start()
    yield proxy, path
    proxy.stop()


def test_good_file_changes_the_next_connection_and_open_ones_keep_theirs(env, reloading):
    proxy, path = reloading
    steady, dropped, added = (f"https://{h}:{env.tls.port}/" for h in ("api.allowed.test", "x.wild.test", "unlisted.test"))
    verify = ssl.create_default_context(cafile=str(proxy.root_ca))
    old_text = path.read_bytes()
    assert connect_status(proxy, dropped) == 200 and connect_status(proxy, added) == 403
    plain = f"http://plain.test:{env.plain.port}/"
    with Traffic(proxy, steady) as traffic, httpx.Client(proxy=proxy.url, verify=verify, timeout=10) as kept:
        # Connections opened under the old policy: a tunnel, and a plain-HTTP proxy connection
        # whose every request goes through the destination gate again.
        assert kept.get(dropped).status_code == 200 and kept.get(plain).status_code == 200
        time.sleep(0.5)
        mark = proxy.mark()
        new_text = policy_text(env, ADDED)
        replace_file(path, new_text)
        event = wait_for_event(proxy, "policy-reloaded", mark)
        assert connect_status(proxy, added) == 200  # the next connection: the new policy
        assert connect_status(proxy, dropped) == 403
        assert kept.get(dropped).status_code == 200  # the open connections: still the old policy
        assert kept.get(plain).status_code == 200
        with httpx.Client(proxy=proxy.url, timeout=10) as new:
            assert new.get(plain).status_code == 403
        time.sleep(0.5)
    assert traffic.errors == [] and traffic.statuses and set(traffic.statuses) == {200}
    assert event["event"]["outcome"] == "success" and event["tollgate"]["trigger"] == "file-changed"
    assert event["tollgate"]["policy"]["previous_sha256"] == hashlib.sha256(old_text).hexdigest()
    assert event["tollgate"]["policy"]["sha256"] == hashlib.sha256(new_text.encode()).hexdigest()
    # unlisted.test is intercepted now: the proxy renewed its intermediate to sign it
    assert event["tollgate"]["ca_renewed"] is True
    docs = (REPO / "docs" / "audit-events.md").read_text()
    assert "### `policy-reloaded`" in docs and "### `policy-reload-failed`" in docs


def test_bad_file_keeps_the_running_policy(env, reloading):
    proxy, path = reloading
    steady, dropped = (f"https://{h}:{env.tls.port}/" for h in ("api.allowed.test", "x.wild.test"))
    good = path.read_text()
    with Traffic(proxy, steady) as traffic:
        time.sleep(0.3)
        mark = proxy.mark()
        path.write_text(good.replace("mode: intercept}\n  - {host: x.wild", "mode: intercept, colour: red}\n  - {host: x.wild"))
        event = wait_for_event(proxy, "policy-reload-failed", mark)
        assert connect_status(proxy, dropped) == 200  # nothing changed
        time.sleep(0.5)
    assert traffic.errors == [] and set(traffic.statuses) == {200}
    assert event["event"]["outcome"] == "failure"
    assert f"{path}:4:" in event["tollgate"]["error"] and "colour" in event["tollgate"]["error"]
    assert event["tollgate"]["policy"]["sha256"] == hashlib.sha256(good.encode()).hexdigest()
    assert "not reloaded" in proxy.output() and "colour" in proxy.output()
    # fixed: the next poll reloads it
    mark = proxy.mark()
    path.write_text(policy_text(env))
    wait_for_event(proxy, "policy-reloaded", mark)
    assert connect_status(proxy, dropped) == 403


def test_reload_refuses_a_change_that_needs_a_restart(env, reloading):
    proxy, path = reloading
    mark = proxy.mark()
    path.write_text(policy_text(env, DROPPED) + "audit:\n  rotate_bytes: 8192\n")
    event = wait_for_event(proxy, "policy-reload-failed", mark)
    assert "restart" in event["tollgate"]["error"]


def test_sighup_reloads_when_the_watcher_is_off(env, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(env, DROPPED))
    proxy = tollgate_run(tmp_path, path, "--reload-interval", "0").start()
    try:
        dropped = f"https://x.wild.test:{env.tls.port}/"
        replace_file(path, policy_text(env))
        time.sleep(1.0)
        assert connect_status(proxy, dropped) == 200  # no watcher: not picked up yet
        mark = proxy.mark()
        proxy.proc.send_signal(signal.SIGHUP)
        event = wait_for_event(proxy, "policy-reloaded", mark)
        assert event["tollgate"]["trigger"] == "sighup"
        assert connect_status(proxy, dropped) == 403
        # a SIGHUP with a broken file: audited, and the proxy keeps running on the last good policy
        path.write_text("version: 1\nclients: [\n")
        mark = proxy.mark()
        proxy.proc.send_signal(signal.SIGHUP)
        failed = wait_for_event(proxy, "policy-reload-failed", mark)
        assert failed["tollgate"]["trigger"] == "sighup" and "YAML syntax error" in failed["tollgate"]["error"]
        assert proxy.proc.poll() is None
        assert connect_status(proxy, f"https://api.allowed.test:{env.tls.port}/") == 200
    finally:
        proxy.stop()
