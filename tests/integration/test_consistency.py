"""SNI, Host, :authority and absolute-form authority must all name the CONNECT host."""

from __future__ import annotations

import json
import ssl

import httpx
import pytest

from tests.support.clients import connect_tunnel, curl, read_http_response, tls_over

pytestmark = pytest.mark.integration


def test_sni_mismatch_fails_the_handshake_and_is_audited(fresh):
    mark = fresh.proxy.mark()
    handshakes_before = fresh.tls.connections
    sock, status, _, _ = connect_tunnel(fresh.proxy.port, f"api.allowed.test:{fresh.tls.port}")
    assert status == 200
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_over(sock, fresh.proxy.root_ca, "other.test").do_handshake()
    sock.close()
    events = fresh.proxy.events_since(mark)
    assert [e["event"]["reason"] for e in events if e["event"]["action"] == "tls-denied"] == ["sni_mismatch"]
    # Eager mode opened TCP to the allowed destination, but no TLS or request reached it.
    assert not fresh.tls.requests
    assert fresh.tls.connections - handshakes_before <= 1


def test_matching_sni_passes(fresh):
    sock, status, _, _ = connect_tunnel(fresh.proxy.port, f"api.allowed.test:{fresh.tls.port}")
    tls = tls_over(sock, fresh.proxy.root_ca, "api.allowed.test")
    tls.sendall(f"GET /sni HTTP/1.1\r\nHost: api.allowed.test:{fresh.tls.port}\r\nConnection: close\r\n\r\n".encode())
    status, _, _ = read_http_response(tls)
    tls.close()
    assert status == 200


def test_passthrough_tunnels_only_with_matching_sni(fresh):
    # Passthrough: the client sees the upstream's own certificate (the test PKI), not Tollgate's.
    ok = curl(f"https://passthrough.test:{fresh.tls.port}/pt", proxy=fresh.proxy.url, cacert=fresh.pki.ca_cert_path)
    assert ok.status == 200, ok.stderr
    mark = fresh.proxy.mark()
    sock, status, _, _ = connect_tunnel(fresh.proxy.port, f"passthrough.test:{fresh.tls.port}")
    assert status == 200
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_over(sock, fresh.pki.ca_cert_path, "other.test").do_handshake()
    sock.close()
    assert [e["event"]["reason"] for e in fresh.proxy.events_since(mark)
            if e["event"]["action"] == "tls-denied"] == ["sni_mismatch"]
    assert [r.sni for r in fresh.tls.requests] == ["passthrough.test"]


def test_passthrough_without_sni_is_refused(fresh):
    sock, status, _, _ = connect_tunnel(fresh.proxy.port, f"passthrough.test:{fresh.tls.port}")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_over(sock, fresh.pki.ca_cert_path, None).do_handshake()
    sock.close()
    assert not fresh.tls.requests


def test_host_header_mismatch_http1_is_421(fresh):
    r = curl(f"https://api.allowed.test:{fresh.tls.port}/", proxy=fresh.proxy.url, cacert=fresh.proxy.root_ca,
             args=("-H", "Host: other.test", "--http1.1"))
    assert r.status == 421, r.stderr
    assert r.json()["reason"] == "host_mismatch"
    assert not fresh.tls.requests


def test_host_header_with_wrong_port_is_421(fresh):
    r = curl(f"https://api.allowed.test:{fresh.tls.port}/", proxy=fresh.proxy.url, cacert=fresh.proxy.root_ca,
             args=("-H", "Host: api.allowed.test:1", "--http1.1"))
    assert r.status == 421


def test_authority_mismatch_http2_is_421(fresh):
    ctx = ssl.create_default_context(cafile=str(fresh.proxy.root_ca))
    with httpx.Client(proxy=fresh.proxy.url, verify=ctx, http2=True, http1=False) as client:
        ok = client.get(f"https://h2.allowed.test:{fresh.h2.port}/fine")
        assert ok.status_code == 200 and ok.http_version == "HTTP/2"
        bad = client.get(f"https://h2.allowed.test:{fresh.h2.port}/front", headers={"Host": "other.test"})
    assert bad.status_code == 421
    assert bad.headers["x-tollgate-decision"] == "host_mismatch"
    assert [r.path for r in fresh.h2.requests] == ["/fine"]


def test_authority_mismatch_http2_with_curl(fresh):
    r = curl(f"https://h2.allowed.test:{fresh.h2.port}/", proxy=fresh.proxy.url, cacert=fresh.proxy.root_ca,
             args=("--http2", "-H", "Host: other.test"))
    assert r.status == 421, r.stderr
    assert not fresh.h2.requests


def _inner_request(env, raw: bytes) -> tuple[int, dict, bytes]:
    sock, status, _, _ = connect_tunnel(env.proxy.port, f"api.allowed.test:{env.tls.port}")
    tls = tls_over(sock, env.proxy.root_ca, "api.allowed.test")
    tls.sendall(raw)
    result = read_http_response(tls)
    tls.close()
    return result


def test_absolute_form_authority_inside_tunnel_is_421(fresh):
    status, headers, body = _inner_request(
        fresh, f"GET https://other.test:{fresh.tls.port}/x HTTP/1.1\r\nHost: api.allowed.test:{fresh.tls.port}\r\n\r\n".encode())
    assert status == 421
    assert json.loads(body)["reason"] == "host_mismatch"
    assert not fresh.tls.requests


def test_duplicate_host_headers_are_refused(fresh):
    status, headers, body = _inner_request(
        fresh, f"GET / HTTP/1.1\r\nHost: api.allowed.test:{fresh.tls.port}\r\nHost: other.test\r\n\r\n".encode())
    assert status == 400
    assert headers["x-tollgate-decision"] == "duplicate_host"
    assert not fresh.tls.requests


def test_non_http_bytes_in_intercepted_tunnel_are_not_forwarded(fresh):
    sock, status, _, _ = connect_tunnel(fresh.proxy.port, f"api.allowed.test:{fresh.tls.port}")
    tls = tls_over(sock, fresh.proxy.root_ca, "api.allowed.test")
    tls.sendall(b"\x00\x01SSH-2.0-exfil NOT-HTTP-PAYLOAD-123\r\n\r\n")
    tls.settimeout(5)
    try:
        tls.recv(4096)
    except (OSError, ssl.SSLError):
        pass
    tls.close()
    assert b"NOT-HTTP-PAYLOAD-123" not in fresh.tls.received_bytes()
    assert not fresh.tls.requests
