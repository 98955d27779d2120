"""Under bad traffic (bounded in count and time, loopback only) the proxy keeps serving other
clients, answers each bad one with a clear error, and audits every decision."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time

import httpx
import pytest
import yaml

from tests.support.clients import read_http_response
from tests.support.proxy import tollgate_run

pytestmark = pytest.mark.integration

POLICY = """\
version: 1
clients: [{{name: ops, cidrs: [127.0.0.1/32]}}]
destinations:
  - {{host: api.allowed.test, ports: [{tls}], clients: [ops], mode: intercept}}
  - {{host: plain.test, ports: [{plain}], clients: [ops], mode: intercept}}
  - {{host: down.test, ports: [{down}], clients: [ops], mode: intercept}}
  - {{host: reset.test, ports: [{reset}], clients: [ops], mode: intercept}}
dlp:
  max_body_bytes: 1048576
network:
  allow_cidrs: [127.0.0.1/32]
  resolve: {{api.allowed.test: 127.0.0.1, plain.test: 127.0.0.1, down.test: 127.0.0.1, reset.test: 127.0.0.1}}
upstream:
  extra_ca_files: [{ca}]
"""


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resetting_server() -> socket.socket:
    """Reads the request head and a little of the body, then resets the connection."""
    server = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(4096)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            conn.close()

    threading.Thread(target=run, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def sturdy(env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    reset = resetting_server()
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY.format(tls=env.tls.port, plain=env.plain.port, down=closed_port(),
                                    reset=reset.getsockname()[1], ca=env.pki.ca_cert_path))
    proxy = tollgate_run(tmp, policy).start()
    yield proxy
    proxy.stop()
    reset.close()


def still_serving(env, proxy) -> None:
    verify = ssl.create_default_context(cafile=str(proxy.root_ca))
    with httpx.Client(proxy=proxy.url, verify=verify, timeout=10) as c:
        assert c.get(f"https://api.allowed.test:{env.tls.port}/ok").status_code == 200


def raw(proxy, data: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as s:
        s.sendall(data)
        return read_http_response(s)


def actions(proxy, mark) -> list[str]:
    return [e["event"]["action"] for e in proxy.events_since(mark)]


def wait_for_action(proxy, mark, action: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and action not in actions(proxy, mark):
        time.sleep(0.05)
    assert action in actions(proxy, mark), f"no {action} audited"


def policy_port(proxy, host: str) -> int:
    policy = yaml.safe_load(open(proxy.args[proxy.args.index("--policy") + 1]).read())
    return next(d["ports"][0] for d in policy["destinations"] if d["host"] == host)


def test_upstream_down_is_a_502_and_audited(env, sturdy):
    mark = sturdy.mark()
    port = policy_port(sturdy, "down.test")
    status, _, _ = raw(sturdy, b"GET http://down.test:%d/ HTTP/1.1\r\nHost: down.test:%d\r\n\r\n" % (port, port))
    assert status == 502
    assert "request-allowed" in actions(sturdy, mark) and "request-error" in actions(sturdy, mark)
    still_serving(env, sturdy)


def test_upstream_reset_mid_body_is_a_502_and_audited(env, sturdy):
    mark = sturdy.mark()
    port = policy_port(sturdy, "reset.test")
    body = b"x" * 200_000
    status, _, _ = raw(sturdy, b"POST http://reset.test:%d/ HTTP/1.1\r\nHost: reset.test:%d\r\nContent-Length: %d\r\n\r\n"
                       % (port, port, len(body)) + body)
    assert status == 502
    assert "request-error" in actions(sturdy, mark)
    still_serving(env, sturdy)


def test_slow_clients_do_not_starve_others(env, sturdy):
    # 100 slowloris connections that never finish their request head
    slow = []
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", sturdy.port), timeout=5)
        s.sendall(b"CONNECT api.allowed.test:443 HTTP/1.1\r\nX-Slow: ")
        slow.append(s)
    try:
        started = time.monotonic()
        still_serving(env, sturdy)
        assert time.monotonic() - started < 10
    finally:
        for s in slow:
            s.close()


def test_500_concurrent_connections_are_all_answered_and_audited(env, sturdy):
    mark = sturdy.mark()
    port = env.plain.port

    async def one(i: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", sturdy.port)
        writer.write(b"GET http://plain.test:%d/c%d HTTP/1.1\r\nHost: plain.test:%d\r\nConnection: close\r\n\r\n"
                     % (port, i, port))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 60)
        writer.close()
        return int(line.split()[1])

    async def all_of_them() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(500)))

    statuses = asyncio.run(all_of_them())
    assert statuses.count(200) == 500
    allowed = [a for a in actions(sturdy, mark) if a == "request-allowed"]
    assert len(allowed) == 500


def test_a_declared_1_gb_body_is_refused_before_it_is_read(env, sturdy):
    mark = sturdy.mark()
    port = env.plain.port
    with socket.create_connection(("127.0.0.1", sturdy.port), timeout=10) as s:
        s.sendall(b"POST http://plain.test:%d/big HTTP/1.1\r\nHost: plain.test:%d\r\nContent-Length: %d\r\n\r\n"
                  % (port, port, 1 << 30) + b"x" * 65536)
        status, _, _ = read_http_response(s)
    # mitmproxy's own cap answers (HTML); Tollgate audits the refusal with its reason first
    assert status == 413
    refused = [e for e in sturdy.events_since(mark) if e["event"]["action"] == "request-uninspectable"]
    assert [e["event"]["reason"] for e in refused] == ["body_too_large"]
    assert not [r for r in env.plain.requests if r.path == "/big"]
    still_serving(env, sturdy)


def test_a_streamed_oversized_body_is_cut_off(env, sturdy):
    """Chunked, so no length is declared: mitmproxy's cap (the policy limit + 1 MiB) stops it."""
    port = env.plain.port
    mark = sturdy.mark()
    with socket.create_connection(("127.0.0.1", sturdy.port), timeout=20) as s:
        s.sendall(b"POST http://plain.test:%d/stream HTTP/1.1\r\nHost: plain.test:%d\r\nTransfer-Encoding: chunked\r\n\r\n"
                  % (port, port))
        chunk = b"%x\r\n%s\r\n" % (65536, b"y" * 65536)
        try:
            for _ in range(64):  # 4 MiB, more than the cap
                s.sendall(chunk)
        except OSError:
            pass  # the proxy may stop reading and close: that is the point
        status, _, _ = read_http_response(s)
    assert status in (400, 413)
    assert actions(sturdy, mark), "the refusal was not audited"
    still_serving(env, sturdy)


def test_a_malformed_request_line_is_a_400_audited_without_its_bytes(env, sturdy):
    mark = sturdy.mark()
    status, _, _ = raw(sturdy, b"GARBAGE-SECRET-abc123\r\n\r\n")
    assert status == 400
    wait_for_action(sturdy, mark, "request-error")  # mitmproxy answers first, then logs
    (event,) = [e for e in sturdy.events_since(mark) if e["event"]["action"] == "request-error"]
    assert event["message"] == "client protocol error: Bad HTTP request line"
    assert event["source"]["ip"] == "127.0.0.1"
    time.sleep(0.2)
    assert "GARBAGE-SECRET-abc123" not in sturdy.output() + sturdy.audit_path.read_text()
    still_serving(env, sturdy)


def test_an_unfinished_request_head_is_audited_without_its_bytes(env, sturdy):
    mark = sturdy.mark()
    with socket.create_connection(("127.0.0.1", sturdy.port), timeout=10) as s:
        s.sendall(b"GET http://plain.test/ HTTP/1.1\r\nAuthorization: Bearer half-sent-token-xyz\r\n")
    wait_for_action(sturdy, mark, "request-error")
    assert "half-sent-token-xyz" not in sturdy.output() + sturdy.audit_path.read_text()


@pytest.mark.parametrize("flood", [
    b"".join(b"X-Flood-%d: y\r\n" % i for i in range(20000)),
    b"X-Big: " + b"z" * (1 << 20) + b"\r\n",
], ids=["20000-headers", "1-MiB-header"])
def test_header_floods_get_a_431_and_never_reach_the_upstream(env, sturdy, flood):
    env.plain.clear()
    mark = sturdy.mark()
    port = env.plain.port
    status, headers, _ = raw(sturdy, b"GET http://plain.test:%d/flood HTTP/1.1\r\nHost: plain.test:%d\r\n" % (port, port)
                             + flood + b"\r\n")
    assert (status, headers["x-tollgate-decision"]) == (431, "headers_too_large")
    assert env.plain.requests == []
    assert ("request-denied") in actions(sturdy, mark)
    still_serving(env, sturdy)
