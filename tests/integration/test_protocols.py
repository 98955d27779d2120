"""Protocols through the intercepting proxy: WebSocket, HTTP/2 → HTTP/1.1 bodies,
Expect: 100-continue, chunked bodies, redirects, and modes Tollgate refuses."""

from __future__ import annotations

import ssl
import subprocess

import httpx
import pytest
import websockets.sync.client

from tests.support.clients import curl
from tests.support.proxy import BIN, REPO, tollgate_run
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration


def test_websocket_to_allowed_intercepted_destination(fresh):
    ctx = ssl.create_default_context(cafile=str(fresh.proxy.root_ca))
    url = f"wss://api.allowed.test:{fresh.tls.port}/ws"
    with websockets.sync.client.connect(url, proxy=fresh.proxy.url, ssl=ctx, open_timeout=10) as ws:
        ws.send("hello upstream")
        assert ws.recv(timeout=10) == "hello upstream"
        ws.send(b"\x00binary")
        assert ws.recv(timeout=10) == b"\x00binary"
    assert [r.body for r in fresh.tls.requests if r.method == "WS"] == [b"hello upstream", b"\x00binary"]


def test_websocket_to_denied_destination(fresh):
    ctx = ssl.create_default_context(cafile=str(fresh.proxy.root_ca))
    with pytest.raises(Exception) as err:
        websockets.sync.client.connect(f"wss://unlisted.test:{fresh.tls.port}/ws", proxy=fresh.proxy.url, ssl=ctx,
                                       open_timeout=10)
    assert "403" in str(err.value)
    assert not fresh.tls.requests


def test_websocket_upgrade_with_a_second_host_is_refused(fresh):
    # websockets adds its own Host header, so this upgrade carries two: refused as such.
    ctx = ssl.create_default_context(cafile=str(fresh.proxy.root_ca))
    with pytest.raises(Exception) as err:
        websockets.sync.client.connect(f"wss://api.allowed.test:{fresh.tls.port}/ws", proxy=fresh.proxy.url, ssl=ctx,
                                       additional_headers={"Host": "other.test"}, open_timeout=10)
    assert "HTTP 400" in str(err.value)
    assert not fresh.tls.requests


@pytest.mark.parametrize("upstream", ["tls", "h2"])
def test_streamed_body_from_http2_client_arrives_intact(fresh, upstream):
    # httpx offers h2; the tunnel speaks what the upstream speaks (eager mode mirrors ALPN),
    # and a body without content-length reaches it whole, followed by a second request.
    server = getattr(fresh, upstream)
    host = "api.allowed.test" if upstream == "tls" else "h2.allowed.test"
    ctx = ssl.create_default_context(cafile=str(fresh.proxy.root_ca))
    body = b"x" * 5000 + b"END"
    with httpx.Client(proxy=fresh.proxy.url, verify=ctx, http2=True) as client:
        r = client.post(f"https://{host}:{server.port}/stream", content=iter([body[:2000], body[2000:]]))
        assert r.status_code == 200
        assert r.http_version == ("HTTP/2" if upstream == "h2" else "HTTP/1.1")
        assert client.get(f"https://{host}:{server.port}/after").status_code == 200
    assert [(q.path, q.body) for q in server.requests] == [("/stream", body), ("/after", b"")]


def test_expect_100_continue(fresh, tmp_path):
    payload = tmp_path / "body.bin"
    payload.write_bytes(b"p" * 200_000)
    r = curl(f"https://api.allowed.test:{fresh.tls.port}/upload", proxy=fresh.proxy.url, cacert=fresh.proxy.root_ca,
             args=("--http1.1", "-H", "Expect: 100-continue", "--data-binary", f"@{payload}"))
    assert r.status == 200, r.stderr
    assert fresh.tls.requests[-1].body == payload.read_bytes()


def test_chunked_request_body(fresh, tmp_path):
    payload = tmp_path / "body.bin"
    payload.write_bytes(b"chunk-me " * 3000)
    r = curl(f"https://api.allowed.test:{fresh.tls.port}/chunked", proxy=fresh.proxy.url, cacert=fresh.proxy.root_ca,
             args=("--http1.1", "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{payload}"))
    assert r.status == 200, r.stderr
    assert fresh.tls.requests[-1].body == payload.read_bytes()


def test_redirect_follow_up_goes_through_the_gates(fresh):
    target = f"https://unlisted.test:{fresh.tls.port}/landed"
    mark = fresh.proxy.mark()
    r = curl(f"https://api.allowed.test:{fresh.tls.port}/redirect?to={target}", proxy=fresh.proxy.url,
             cacert=fresh.proxy.root_ca, args=("-L",))
    assert "X-Tollgate-Decision: destination_not_allowed" in r.stderr
    assert [q.path for q in fresh.tls.requests] == [f"/redirect?to={target}"]
    denied = [e for e in fresh.proxy.events_since(mark) if e["event"]["action"] == "connection-denied"]
    assert denied and denied[0]["destination"]["domain"] == "unlisted.test"


def test_redirect_to_allowed_host_is_followed(fresh):
    target = f"https://x.wild.test:{fresh.tls.port}/landed"
    r = curl(f"https://api.allowed.test:{fresh.tls.port}/redirect?to={target}", proxy=fresh.proxy.url,
             cacert=fresh.proxy.root_ca, args=("-L",))
    assert r.status == 200
    assert fresh.tls.requests[-1].path == "/landed"


@pytest.mark.parametrize("mode", ["socks5", "transparent"])
def test_socks_and_transparent_modes_are_refused_at_startup(env, tmp_path, mode):
    done = subprocess.run([str(BIN / "mitmdump"), "-s", str(REPO / "addons" / "tollgate.py"), "--mode", mode,
                           "--set", f"tollgate_policy={env.policy}", "--set", f"confdir={env.proxy.ca_dir}",
                           "--set", f"tollgate_audit_path={tmp_path / 'a.jsonl'}",
                           "--listen-host", "127.0.0.1", "--listen-port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Tollgate runs as a regular (explicit) proxy only" in done.stdout + done.stderr


def test_upstream_goaway_is_a_clear_502_and_never_lost(pki, tmp_path):
    # The upstream answers the first request with GOAWAY(last_stream_id=0): it processed
    # nothing. The client gets a 502 for it (safe to retry); the next request succeeds on
    # a new upstream connection, and the failure is audited.
    cert, key = pki.issue(["ga.test"])
    server = Upstream.start(cert=cert, key=key, http2=True, goaway_first=True)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""version: 1
clients: [{{name: ops, cidrs: [127.0.0.1/32]}}]
destinations: [{{host: ga.test, ports: [{server.port}], clients: [ops], mode: intercept}}]
network: {{allow_cidrs: [127.0.0.1/32], resolve: {{ga.test: 127.0.0.1}}}}
upstream: {{extra_ca_files: [{pki.ca_cert_path}]}}
""")
    proxy = tollgate_run(tmp_path, policy).start()
    ctx = ssl.create_default_context(cafile=str(proxy.root_ca))
    try:
        with httpx.Client(proxy=proxy.url, verify=ctx, http2=True) as client:
            first = client.post(f"https://ga.test:{server.port}/first", content=b"payload")
            second = client.post(f"https://ga.test:{server.port}/second", content=b"payload")
        assert first.status_code == 502
        assert "closed" in first.text  # "HTTP/2 connection closed" or "peer closed connection"
        assert second.status_code == 200
        assert server.goaways == 1
        assert [q.path for q in server.requests] == ["/second"]
        errors = [e for e in proxy.events() if e["event"]["action"] == "request-error"]
        assert [e["event"]["reason"] for e in errors] == ["transport_error"]
        assert "closed" in errors[0]["message"]
    finally:
        proxy.stop()
        server.stop()
