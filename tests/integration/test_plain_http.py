"""Plain-HTTP proxy requests (absolute-form, no CONNECT) go through the same gates."""

from __future__ import annotations

import socket

import pytest

from tests.support.clients import curl, read_http_response

pytestmark = pytest.mark.integration


def test_plain_http_allowed(fresh):
    mark = fresh.proxy.mark()
    r = curl(f"http://plain.test:{fresh.plain.port}/hello?q=secret-value", proxy=fresh.proxy.url)
    assert r.status == 200, r.stderr
    assert fresh.plain.requests[-1].path == "/hello?q=secret-value"
    (event,) = [e for e in fresh.proxy.events_since(mark) if e["event"]["action"] == "request-allowed"]
    assert event["url"]["full"] == f"http://plain.test:{fresh.plain.port}/hello?q="
    assert event["http"]["request"]["method"] == "GET"


def test_plain_http_unlisted_host_gets_json_403(fresh):
    connections = fresh.plain.connections
    r = curl(f"http://unlisted.test:{fresh.plain.port}/", proxy=fresh.proxy.url)
    assert r.status == 403
    assert r.json()["reason"] == "destination_not_allowed"
    assert "X-Tollgate-Decision: destination_not_allowed" in r.stderr
    assert fresh.plain.connections == connections


def test_plain_http_wrong_port(fresh):
    r = curl(f"http://plain.test:{fresh.tls.port}/", proxy=fresh.proxy.url)
    assert r.status == 403
    assert r.json()["reason"] == "port_not_allowed"


def test_plain_http_host_header_must_match_url(fresh):
    r = curl(f"http://plain.test:{fresh.plain.port}/", proxy=fresh.proxy.url, args=("-H", "Host: unlisted.test"))
    assert r.status == 421
    assert not fresh.plain.requests


def test_plain_http_from_unknown_client(fresh):
    sock = socket.create_connection(("127.0.0.1", fresh.proxy.port), source_address=("127.0.0.3", 0), timeout=10)
    sock.sendall(f"GET http://plain.test:{fresh.plain.port}/ HTTP/1.1\r\nHost: plain.test:{fresh.plain.port}\r\n\r\n".encode())
    status, headers, _ = read_http_response(sock)
    sock.close()
    assert (status, headers["x-tollgate-decision"]) == (403, "client_unknown")
    assert not fresh.plain.requests


def test_origin_form_request_to_the_proxy_itself_is_refused(fresh):
    # A request not meant for a proxy (Host names the proxy) must not reach anything.
    sock = socket.create_connection(("127.0.0.1", fresh.proxy.port), timeout=10)
    sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{fresh.proxy.port}\r\n\r\n".encode())
    status, headers, _ = read_http_response(sock)
    sock.close()
    assert status == 403
    assert headers["x-tollgate-decision"] in ("ip_literal_not_allowed", "port_not_allowed")
