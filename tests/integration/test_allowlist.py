"""The destination allowlist through a real proxy, with curl and httpx as clients."""

from __future__ import annotations

import json
import ssl

import httpx
import pytest

from tests.support.clients import connect_tunnel, curl

pytestmark = pytest.mark.integration


def https(env, host: str, path: str = "/", port: int | None = None) -> str:
    return f"https://{host}:{port or env.tls.port}{path}"


def test_allowed_host_reaches_upstream_through_interception(fresh):
    mark = fresh.proxy.mark()
    r = curl(https(fresh, "api.allowed.test", "/v1/ping?token=s3cr3t"), proxy=fresh.proxy.url, cacert=fresh.proxy.root_ca)
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    assert r.json()["host"] == f"api.allowed.test:{fresh.tls.port}"
    assert [q.path for q in fresh.tls.requests] == ["/v1/ping?token=s3cr3t"]
    # The client validated a certificate issued by Tollgate's CA, not the upstream's.
    assert "issuer: CN=Tollgate" in r.stderr or "Tollgate" in r.stderr
    actions = [(e["event"]["action"], e["event"]["reason"]) for e in fresh.proxy.events_since(mark)]
    assert ("connection-allowed", "allowed") in actions
    assert ("request-allowed", "allowed") in actions
    request_event = next(e for e in fresh.proxy.events_since(mark) if e["event"]["action"] == "request-allowed")
    assert request_event["tollgate"]["client"] == "ops"
    assert request_event["rule"]["id"] == "api.allowed.test"
    assert request_event["url"]["full"] == f"https://api.allowed.test:{fresh.tls.port}/v1/ping?token="
    assert "s3cr3t" not in fresh.proxy.audit_path.read_text()


def test_allowed_host_with_httpx(fresh):
    ctx = ssl.create_default_context(cafile=str(fresh.proxy.root_ca))
    with httpx.Client(proxy=fresh.proxy.url, verify=ctx) as client:
        r = client.post(https(fresh, "api.allowed.test", "/submit"), json={"a": 1})
    assert r.status_code == 200
    assert fresh.tls.requests[-1].body == b'{"a":1}'


def test_unlisted_host_gets_json_403_and_no_connection(fresh):
    connections_before = fresh.tls.connections
    mark = fresh.proxy.mark()
    r = curl(https(fresh, "unlisted.test"), proxy=fresh.proxy.url, cacert=fresh.proxy.root_ca)
    assert r.returncode != 0
    assert "CONNECT tunnel failed, response 403" in r.stderr
    assert "X-Tollgate-Decision: destination_not_allowed" in r.stderr
    # unlisted.test resolves (override) to the live upstream: it must never see a connection.
    assert fresh.tls.connections == connections_before
    (event,) = [e for e in fresh.proxy.events_since(mark)]
    assert event["event"]["action"] == "connection-denied"
    assert event["event"]["outcome"] == "failure"
    assert event["destination"] == {"domain": "unlisted.test", "port": fresh.tls.port}
    assert event["source"]["ip"] == "127.0.0.1"


def test_denied_connect_body_is_json_with_incident(fresh):
    sock, status, headers, body = connect_tunnel(fresh.proxy.port, f"unlisted.test:{fresh.tls.port}")
    sock.close()
    assert status == 403
    assert headers["content-type"] == "application/json"
    assert headers["x-tollgate-decision"] == "destination_not_allowed"
    payload = json.loads(body)
    assert payload["reason"] == "destination_not_allowed"
    assert payload["error"] == "forbidden"
    assert payload["incident"] == headers["x-tollgate-incident"]
    assert payload["incident"].startswith("tg-")


def test_unresolvable_unlisted_host_is_denied_without_dns(fresh):
    # No override and no DNS for this name: a lookup would give resolve_failed (502), not 403.
    sock, status, headers, _ = connect_tunnel(fresh.proxy.port, "nowhere.invalid:443")
    sock.close()
    assert (status, headers["x-tollgate-decision"]) == (403, "destination_not_allowed")


def test_wrong_port(fresh):
    sock, status, headers, body = connect_tunnel(fresh.proxy.port, "api.allowed.test:8443")
    sock.close()
    assert status == 403
    assert headers["x-tollgate-decision"] == "port_not_allowed"
    assert str(fresh.tls.port) in json.loads(body)["message"]


def test_wrong_client_is_refused_for_that_destination(fresh):
    # other.test is allowed only for client "other" (127.0.0.2); we connect from 127.0.0.1.
    r = curl(https(fresh, "other.test"), proxy=fresh.proxy.url, cacert=fresh.proxy.root_ca)
    assert "X-Tollgate-Decision: client_not_allowed" in r.stderr
    # ...and works from 127.0.0.2, which is the "other" client.
    r = curl(https(fresh, "other.test"), proxy=fresh.proxy.url, cacert=fresh.proxy.root_ca,
             args=("--interface", "127.0.0.2"))
    assert r.status == 200, r.stderr


def test_unknown_client_is_refused_and_audited(fresh):
    mark = fresh.proxy.mark()
    sock, status, headers, _ = connect_tunnel(fresh.proxy.port, f"api.allowed.test:{fresh.tls.port}", source="127.0.0.3")
    sock.close()
    assert (status, headers["x-tollgate-decision"]) == (403, "client_unknown")
    (event,) = fresh.proxy.events_since(mark)
    assert event["event"]["action"] == "client-refused"
    assert event["source"]["ip"] == "127.0.0.3"


def test_forwarded_headers_do_not_change_the_client(fresh):
    # 127.0.0.3 is unknown; claiming to be 127.0.0.1 in a header changes nothing.
    sock, status, headers, _ = connect_tunnel(
        fresh.proxy.port, f"api.allowed.test:{fresh.tls.port}", source="127.0.0.3",
        extra_headers="X-Forwarded-For: 127.0.0.1\r\nForwarded: for=127.0.0.1\r\nX-Real-IP: 127.0.0.1\r\n")
    sock.close()
    assert (status, headers["x-tollgate-decision"]) == (403, "client_unknown")


@pytest.mark.parametrize("host", ["x.wild.test", "deep.x.wild.test"])
def test_wildcard_matches_subdomains(fresh, host):
    r = curl(https(fresh, host), proxy=fresh.proxy.url, cacert=fresh.proxy.root_ca)
    assert r.status == 200, r.stderr


def test_wildcard_never_matches_apex(fresh):
    r = curl(https(fresh, "wild.test"), proxy=fresh.proxy.url, cacert=fresh.proxy.root_ca)
    assert "X-Tollgate-Decision: destination_not_allowed" in r.stderr


@pytest.mark.parametrize("spelling", ["API.Allowed.TEST", "api.allowed.test.", "Api.Allowed.Test."])
def test_case_and_trailing_dot_are_normalised(fresh, spelling):
    sock, status, headers, _ = connect_tunnel(fresh.proxy.port, f"{spelling}:{fresh.tls.port}")
    sock.close()
    assert status == 200, headers


@pytest.mark.parametrize("spelling", ["bücher.test", "xn--bcher-kva.test", "XN--BCHER-KVA.test"])
def test_idn_in_either_form_matches(fresh, spelling):
    r = curl(https(fresh, spelling), proxy=fresh.proxy.url, cacert=fresh.proxy.root_ca)
    assert r.status == 200, r.stderr
    assert fresh.tls.requests[-1].sni == "xn--bcher-kva.test"


def test_policy_in_punycode_matches_unicode_request(fresh):
    # The policy lists xn--caf-dma.test; the client asks for café.test.
    r = curl(https(fresh, "café.test"), proxy=fresh.proxy.url, cacert=fresh.proxy.root_ca)
    assert r.status == 200, r.stderr
    assert fresh.tls.requests[-1].sni == "xn--caf-dma.test"


def test_raw_unicode_connect_target_is_refused(fresh):
    # HTTP/1.1 request targets are ASCII: a raw U-label is rejected before any gate, unforwarded.
    connections = fresh.tls.connections
    sock, status, _, _ = connect_tunnel(fresh.proxy.port, f"bücher.test:{fresh.tls.port}")
    sock.close()
    assert status == 400
    assert fresh.tls.connections == connections


def test_homoglyph_does_not_match(fresh):
    # Cyrillic "а" (U+0430) in place of the Latin "a".
    sock, status, headers, _ = connect_tunnel(fresh.proxy.port, f"xn--pi-6kc.allowed.test:{fresh.tls.port}")
    sock.close()
    assert headers["x-tollgate-decision"] == "destination_not_allowed"


def test_listed_ip_literal_is_allowed(fresh):
    r = curl(f"https://127.0.0.1:{fresh.tls.port}/ip", proxy=fresh.proxy.url, cacert=fresh.proxy.root_ca)
    assert r.status == 200, r.stderr
    assert fresh.tls.requests[-1].path == "/ip"


@pytest.mark.parametrize("literal", ["127.0.0.9", "127.9", "[::1]"])
def test_unlisted_ip_literal_is_denied(fresh, literal):
    sock, status, headers, _ = connect_tunnel(fresh.proxy.port, f"{literal}:{fresh.tls.port}")
    sock.close()
    assert (status, headers["x-tollgate-decision"]) == (403, "ip_literal_not_allowed")


def test_ip_literal_does_not_match_a_host_entry(fresh):
    # api.allowed.test resolves to 127.0.0.1, but that does not allow other IPs on a host rule
    # (127.0.0.1 is listed by cidr; 127.0.0.1 on another port is not).
    sock, status, headers, _ = connect_tunnel(fresh.proxy.port, f"127.0.0.1:{fresh.h2.port}")
    sock.close()
    assert headers["x-tollgate-decision"] == "port_not_allowed"
