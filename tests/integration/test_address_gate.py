"""The address gate through a real proxy: refused address classes, DNS pinning, IP spellings."""

from __future__ import annotations

import json
import socket

import pytest

from tests.support.clients import connect_tunnel, curl, read_http_response, tls_over
from tests.support.proxy import REPO, mitmdump_run, tollgate_run
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration

POLICY = """\
version: 1
clients:
  - {{name: ops, cidrs: [127.0.0.1/32]}}
destinations:
  - {{host: api.allowed.test, ports: [{tls}], clients: "*", mode: intercept}}
  - {{host: metadata.test, ports: [{tls}], clients: "*", mode: intercept}}
  - {{host: private.test, ports: [{tls}], clients: "*", mode: intercept}}
  - {{host: mixed.test, ports: [{tls}], clients: "*", mode: intercept}}
  - {{host: loop2.test, ports: [{tls}], clients: "*", mode: intercept}}
  - {{host: self.test, ports: [{proxy}], clients: "*", mode: intercept}}
  - {{host: rebind.test, ports: [{tls}], clients: "*", mode: intercept}}
  - {{cidr: 127.0.0.1/32, ports: [{tls}, {proxy}], clients: "*", mode: intercept}}
  - {{cidr: 169.254.169.254/32, ports: [80], clients: "*", mode: intercept}}
network:
  deny_private: true
  allow_cidrs: [127.0.0.1/32]
  resolve:
    api.allowed.test: 127.0.0.1
    metadata.test: 169.254.169.254
    private.test: [10.0.0.1, 192.168.1.1, "fd00::1"]
    mixed.test: [10.0.0.1, 127.0.0.1]
    loop2.test: 127.0.0.2
    self.test: 127.0.0.1
upstream:
  extra_ca_files: [{ca}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gate(env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("address")
    proxy_port = free_port()
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY.format(tls=env.tls.port, proxy=proxy_port, ca=env.pki.ca_cert_path))
    proxy = tollgate_run(tmp, policy)
    proxy.args[proxy.args.index("127.0.0.1:0")] = f"127.0.0.1:{proxy_port}"
    proxy.start()
    yield proxy
    proxy.stop()


def refused(proxy, target: str) -> tuple[int, dict, dict]:
    sock, status, headers, body = connect_tunnel(proxy.port, target)
    sock.close()
    return status, headers, json.loads(body) if body else {}


@pytest.mark.parametrize("name, classes", [
    ("metadata.test", "metadata"),
    ("private.test", "private"),
    ("loop2.test", "loopback"),
])
def test_names_resolving_to_refused_addresses(env, gate, name, classes):
    connections = env.tls.connections
    mark = gate.mark()
    status, headers, body = refused(gate, f"{name}:{env.tls.port}")
    assert (status, headers["x-tollgate-decision"]) == (403, "address_refused")
    assert classes in body["message"]
    assert env.tls.connections == connections
    (event,) = gate.events_since(mark)
    assert event["event"]["action"] == "connection-denied"
    assert event["tollgate"]["stage"] == "address"
    assert all(classes in r or "private" in r for r in event["tollgate"]["refused"])


def test_mixed_records_use_only_the_allowed_address(env, gate):
    r = curl(f"https://mixed.test:{env.tls.port}/mixed", proxy=gate.url, cacert=gate.root_ca,
             args=("--resolve", f"mixed.test:{env.tls.port}:127.0.0.1"))
    # mixed.test is not in the upstream certificate: reaching it at all proves the address
    # 127.0.0.1 was chosen; the 502 says the upstream certificate was then rejected.
    assert r.status == 502
    assert r.json()["reason"] == "upstream_certificate_invalid"
    mark_events = [e for e in gate.events() if e["event"]["action"] == "connection-allowed"
                   and e["destination"].get("domain") == "mixed.test"]
    assert mark_events[-1]["destination"]["ip"] == "127.0.0.1"


def test_the_proxy_itself_is_never_a_destination(env, gate):
    status, headers, body = refused(gate, f"self.test:{gate.port}")
    assert (status, headers["x-tollgate-decision"]) == (403, "address_refused")
    assert "proxy_self" in body["message"]
    status, headers, _ = refused(gate, f"127.0.0.1:{gate.port}")
    assert headers["x-tollgate-decision"] == "address_refused"


def test_listed_cidr_is_still_subject_to_deny_private(gate):
    status, headers, body = refused(gate, "169.254.169.254:80")
    assert (status, headers["x-tollgate-decision"]) == (403, "address_refused")
    assert "metadata" in body["message"]


@pytest.mark.parametrize("spelling", ["127.0.0.1", "127.1", "0x7f000001", "0177.0.0.1", "2130706433",
                                      "0x7f.0.0.1", "[::ffff:127.0.0.1]", "127.0.0.1."])
def test_ip_spellings_match_the_cidr_entry(env, gate, spelling):
    mark = gate.mark()
    sock, status, headers, _ = connect_tunnel(gate.port, f"{spelling}:{env.tls.port}")
    sock.close()
    assert status == 200, headers
    (event,) = gate.events_since(mark)
    assert event["destination"]["ip"] == "127.0.0.1"
    assert event["rule"]["id"] == "127.0.0.1/32"


@pytest.mark.parametrize("spelling", ["127.2", "0x7f000002", "0177.0.0.2", "2130706434", "[::ffff:127.0.0.2]"])
def test_unlisted_ip_in_any_spelling_is_denied(env, gate, spelling):
    status, headers, _ = refused(gate, f"{spelling}:{env.tls.port}")
    assert (status, headers["x-tollgate-decision"]) == (403, "ip_literal_not_allowed")


@pytest.fixture(scope="module")
def rebinding(env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rebind")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY.format(tls=env.tls.port, proxy=1, ca=env.pki.ca_cert_path))
    from tollgate.policy.loader import load_policy
    from tollgate.tls.ca import ensure_ca
    from tollgate.tls.scope import intercept_scope
    ensure_ca(tmp / "ca", intercept_scope(load_policy(policy)))
    cert, key = env.pki.issue(dns=["rebind.test"])
    decoy = Upstream.start(host="127.0.0.2", port=env.tls.port, cert=cert, key=key)  # where a re-lookup would lead
    proxy = mitmdump_run(tmp, policy, tmp / "ca", str(REPO / "tests" / "support" / "rebinding.py")).start()
    yield proxy, decoy
    proxy.stop()
    decoy.stop()


def test_dns_rebinding_cannot_redirect_the_connection(env, rebinding):
    proxy, decoy = rebinding
    env.tls.clear()
    # First lookup: 127.0.0.1 (allowed). The connection goes there and stays there: two
    # requests on the tunnel, and never a second lookup that would answer 127.0.0.2.
    sock, status, _, _ = connect_tunnel(proxy.port, f"rebind.test:{env.tls.port}")
    assert status == 200
    tls = tls_over(sock, proxy.root_ca, "rebind.test")
    for i in range(2):
        tls.sendall(f"GET /pinned{i} HTTP/1.1\r\nHost: rebind.test:{env.tls.port}\r\n\r\n".encode())
        status, _, _ = read_http_response(tls)
        assert status == 200
    tls.close()
    assert decoy.connections == 0
    assert [e["destination"]["ip"] for e in proxy.events() if e["event"]["action"] == "connection-allowed"] == ["127.0.0.1"]
    # A new connection looks the name up again, gets 127.0.0.2 and is refused.
    sock, status, headers, _ = connect_tunnel(proxy.port, f"rebind.test:{env.tls.port}")
    sock.close()
    assert (status, headers["x-tollgate-decision"]) == (403, "address_refused")
    assert decoy.connections == 0
