"""Fail closed: an exception inside Tollgate blocks the traffic, answers JSON and is audited."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import POLICY_TEMPLATE, write_policy
from tests.support.clients import connect_tunnel, curl, read_http_response, tls_over
from tests.support.proxy import REPO, mitmdump_run

pytestmark = pytest.mark.integration

FAULT_POLICY = POLICY_TEMPLATE.replace("destinations:\n", """destinations:
  - host: boom-connect.test
    ports: [{tls}]
    clients: "*"
    mode: intercept
  - host: boom-request.test
    ports: [{tls}]
    clients: "*"
    mode: intercept
  - host: boom-upstream.test
    ports: [{tls}]
    clients: "*"
    mode: intercept
""", 1)


@pytest.fixture(scope="module")
def faulty(env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faulty")
    policy = write_policy(tmp / "policy.yaml", env.pki, env.tls, env.h2, env.plain, tmp / "a.jsonl", FAULT_POLICY)
    # The CA must already cover the boom names: reuse `tollgate run`'s CA logic via the CLI.
    from tollgate.policy.loader import load_policy
    from tollgate.tls.ca import ensure_ca
    from tollgate.tls.scope import intercept_scope
    ensure_ca(tmp / "ca", intercept_scope(load_policy(policy)))
    proxy = mitmdump_run(tmp, policy, tmp / "ca", str(REPO / "tests" / "support" / "faults.py")).start()
    yield proxy
    proxy.stop()


def test_exception_in_connect_gate_blocks(env, faulty):
    env.tls.clear()
    mark = faulty.mark()
    sock, status, headers, body = connect_tunnel(faulty.port, f"boom-connect.test:{env.tls.port}")
    sock.close()
    assert status == 503
    assert headers["x-tollgate-decision"] == "internal_error"
    assert json.loads(body)["incident"] == headers["x-tollgate-incident"]
    assert not env.tls.requests
    events = faulty.events_since(mark)
    assert [e["event"]["action"] for e in events] == ["internal-error"]
    assert events[0]["tollgate"]["incident"] == headers["x-tollgate-incident"]
    assert "injected fault" not in json.dumps(events)  # the traceback goes to the console log only


def test_exception_in_request_gate_blocks(env, faulty):
    env.tls.clear()
    sock, status, _, _ = connect_tunnel(faulty.port, f"boom-request.test:{env.tls.port}")
    assert status == 200
    tls = tls_over(sock, faulty.root_ca, "boom-request.test")
    tls.sendall(f"POST /x HTTP/1.1\r\nHost: boom-request.test:{env.tls.port}\r\nContent-Length: 4\r\n\r\ndata".encode())
    status, headers, _ = read_http_response(tls)
    tls.close()
    assert status == 503
    assert headers["x-tollgate-decision"] == "internal_error"
    assert not env.tls.requests


def test_upstream_connection_without_an_approval_is_refused(env, faulty):
    # The last gate: server_connect only opens connections a decision approved.
    env.tls.clear()
    connections = env.tls.connections
    mark = faulty.mark()
    sock, status, _, _ = connect_tunnel(faulty.port, f"boom-upstream.test:{env.tls.port}")
    sock.close()
    assert status == 502
    assert env.tls.connections == connections
    assert "upstream-refused" in [e["event"]["action"] for e in faulty.events_since(mark)]


def test_mitmdump_way_allows_and_denies_like_tollgate_run(env, faulty):
    env.tls.clear()
    ok = curl(f"https://api.allowed.test:{env.tls.port}/md", proxy=faulty.url, cacert=faulty.root_ca)
    assert ok.status == 200, ok.stderr
    denied = curl(f"https://unlisted.test:{env.tls.port}/", proxy=faulty.url, cacert=faulty.root_ca)
    assert "X-Tollgate-Decision: destination_not_allowed" in denied.stderr
    assert [r.path for r in env.tls.requests] == ["/md"]
