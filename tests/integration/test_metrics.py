"""GET /metrics and GET /healthz on their own listener, from a real proxy under real traffic."""

from __future__ import annotations

import os
import re
import ssl
import threading
import time

import httpx
import pytest

from tests.support.proxy import tollgate_run
from tests.support.secrets import POSITIVE

pytestmark = pytest.mark.integration

AWS = POSITIVE["aws_access_key_id"][1]
OPS_LINE = re.compile(r"metrics and health on http://([0-9.]+):(\d+)/metrics")
POLICY = """\
version: 1
clients: [{{name: ops, cidrs: [127.0.0.1/32]}}]
destinations:
  - {{host: api.allowed.test, ports: [{tls}], clients: [ops], mode: intercept}}
network:
  allow_cidrs: [127.0.0.1/32]
  resolve: {{api.allowed.test: 127.0.0.1, unlisted.test: 127.0.0.1}}
upstream:
  extra_ca_files: [{ca}]
"""


@pytest.fixture
def observed(env, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(tls=env.tls.port, ca=env.pki.ca_cert_path))
    proxy = tollgate_run(tmp_path, policy, "--metrics-listen", "127.0.0.1:0").start()
    host, port = OPS_LINE.search(proxy.output()).groups()
    yield proxy, f"http://{host}:{port}"
    proxy.stop()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_decisions_findings_latency_and_policy_are_exported(env, observed):
    proxy, ops = observed
    verify = ssl.create_default_context(cafile=str(proxy.root_ca))
    with httpx.Client(proxy=proxy.url, verify=verify, timeout=10) as c:
        assert c.get(f"https://api.allowed.test:{env.tls.port}/").status_code == 200
        assert c.post(f"https://api.allowed.test:{env.tls.port}/", json={"k": AWS}).status_code == 403
        with pytest.raises(httpx.ProxyError):
            c.get(f"https://unlisted.test:{env.tls.port}/")
    text = httpx.get(f"{ops}/metrics").text
    assert sample(text, "tollgate_decisions_total", action="connection-denied", reason="destination_not_allowed",
                  outcome="failure") == 1
    assert sample(text, "tollgate_decisions_total", action="request-blocked", stage="dlp") == 1
    assert sample(text, "tollgate_dlp_findings_total", detector="aws_access_key_id", action="block") == 1
    assert sample(text, "tollgate_request_duration_seconds_count", result="forwarded") == 1
    assert sample(text, "tollgate_request_duration_seconds_count", result="refused") == 1
    assert sample(text, "tollgate_dlp_scan_seconds_count") == 2
    sha = next(e for e in proxy.events() if e["event"]["action"] == "policy-loaded")["tollgate"]["policy"]["sha256"]
    assert sample(text, "tollgate_policy_info", sha256=sha) == 1
    assert AWS not in text


def test_health_fails_when_the_audit_log_cannot_be_written(env, observed):
    proxy, ops = observed
    health = httpx.get(f"{ops}/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok", "problems": []})
    verify = ssl.create_default_context(cafile=str(proxy.root_ca))
    os.replace(proxy.audit_path, proxy.audit_path.with_name("audit.jsonl.saved"))
    os.symlink("/dev/full", proxy.audit_path)  # every write now fails: ENOSPC
    try:
        with httpx.Client(proxy=proxy.url, verify=verify, timeout=10) as c, pytest.raises(httpx.ProxyError, match="503"):
            c.get(f"https://api.allowed.test:{env.tls.port}/")
        health = httpx.get(f"{ops}/healthz")
        assert health.status_code == 503 and "audit write failed" in health.json()["problems"][0]
        assert sample(httpx.get(f"{ops}/metrics").text, "tollgate_audit_write_errors_total") >= 1
    finally:
        os.unlink(proxy.audit_path)
    # writable again: the next decision is recorded and health recovers
    with httpx.Client(proxy=proxy.url, verify=verify, timeout=10) as c:
        assert c.get(f"https://api.allowed.test:{env.tls.port}/").status_code == 200
    time.sleep(0.1)
    assert httpx.get(f"{ops}/healthz").status_code == 200


def test_ops_listener_answers_only_get(observed):
    _, ops = observed
    assert httpx.post(f"{ops}/metrics").status_code == 405
    assert httpx.get(f"{ops}/nothing").status_code == 404


def test_in_flight_requests_and_open_connections_are_gauged(env, observed):
    # A request the upstream answers after 2 s is in flight meanwhile, on one open client
    # connection; both gauges come back down once it is answered and the client is gone.
    proxy, ops = observed
    verify = ssl.create_default_context(cafile=str(proxy.root_ca))
    client = httpx.Client(proxy=proxy.url, verify=verify, timeout=20)
    done = {}
    slow = threading.Thread(target=lambda: done.setdefault("status", client.get(
        f"https://api.allowed.test:{env.tls.port}/delay/2").status_code))
    slow.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(r.path == "/delay/2" for r in env.tls.requests):
        time.sleep(0.05)
    text = httpx.get(f"{ops}/metrics").text
    assert sample(text, "tollgate_requests_in_flight") == 1
    assert sample(text, "tollgate_client_connections") >= 1
    slow.join(20)
    client.close()
    assert done == {"status": 200}
    assert sample(httpx.get(f"{ops}/metrics").text, "tollgate_requests_in_flight") == 0
