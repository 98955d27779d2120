"""Every audit event type, produced by real traffic through one proxy, is documented in
docs/audit-events.md; no test secret appears in any log file."""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading

import httpx
import pytest
import websockets.sync.client

from tests.support.clients import connect_tunnel, curl, tls_over
from tests.support.proxy import REPO, tollgate_run
from tests.support.secrets import POSITIVE
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration
AWS = POSITIVE["aws_access_key_id"][1]
CARD = "4111 1111 1111 1111"

POLICY = """\
version: 1
clients: [{{name: ops, cidrs: [127.0.0.1/32]}}]
destinations:
  - {{host: api.allowed.test, ports: [{tls}], clients: [ops], mode: intercept}}
  - {{host: passthrough.test, ports: [{tls}], clients: [ops], mode: passthrough}}
  - {{host: bad-cert.test, ports: [{bad}], clients: [ops], mode: intercept}}
  - {{host: metadata.test, ports: [{tls}], clients: [ops], mode: intercept}}
  - {{host: plain.test, ports: [{closing}], clients: [ops], mode: intercept}}
dlp:
  detectors: {{payment_card: redact, email: report}}
  max_body_bytes: 100000
network:
  allow_cidrs: [127.0.0.1/32]
  resolve: {{api.allowed.test: 127.0.0.1, passthrough.test: 127.0.0.1, bad-cert.test: 127.0.0.1,
            metadata.test: 169.254.169.254, plain.test: 127.0.0.1}}
upstream:
  extra_ca_files: [{ca}]
"""


def closing_server() -> socket.socket:
    """Accepts, reads the request, closes without answering: a transport error."""
    server = socket.create_server(("127.0.0.1", 0))

    def run():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()

    threading.Thread(target=run, daemon=True).start()
    return server


def produce_every_event(env, tmp_path):
    bad_cert, bad_key = env.pki.self_signed(["bad-cert.test"])
    bad = Upstream.start(cert=bad_cert, key=bad_key)
    closing = closing_server()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(tls=env.tls.port, bad=bad.port, closing=closing.getsockname()[1],
                                    ca=env.pki.ca_cert_path))
    proxy = tollgate_run(tmp_path, policy).start()
    tls = env.tls.port
    ctx = ssl.create_default_context(cafile=str(proxy.root_ca))
    try:
        with httpx.Client(proxy=proxy.url, verify=ctx, timeout=20) as client:
            client.get(f"https://api.allowed.test:{tls}/ok")                                # connection/request-allowed
            client.post(f"https://api.allowed.test:{tls}/leak", json={"k": AWS})            # request-blocked
            client.post(f"https://api.allowed.test:{tls}/pay", json={"card": CARD})         # request-redacted
            client.post(f"https://api.allowed.test:{tls}/mail", json={"to": "a@example.org"})  # request-reported
            client.post(f"https://api.allowed.test:{tls}/big", content=b"x" * 200_000)       # request-uninspectable
            client.get(f"https://bad-cert.test:{bad.port}/")                                 # upstream-tls-failed
        curl(f"https://api.allowed.test:{tls}/", proxy=proxy.url, cacert=proxy.root_ca,
             args=("-H", "Host: other.test", "--http1.1"))                                   # request-denied
        for target, source in ((f"unlisted.test:{tls}", "127.0.0.1"), (f"metadata.test:{tls}", "127.0.0.1"),
                               (f"api.allowed.test:{tls}", "127.0.0.3")):                    # denied, refused
            sock, *_ = connect_tunnel(proxy.port, target, source=source)
            sock.close()
        sock, *_ = connect_tunnel(proxy.port, f"api.allowed.test:{tls}")                    # tls-denied
        with pytest.raises((ssl.SSLError, OSError)):
            tls_over(sock, proxy.root_ca, "other.test").do_handshake()
        sock.close()
        curl(f"https://passthrough.test:{tls}/", proxy=proxy.url, cacert=env.pki.ca_cert_path)  # tunnel-passthrough
        curl(f"http://plain.test:{closing.getsockname()[1]}/", proxy=proxy.url)              # request-error
        with websockets.sync.client.connect(f"wss://api.allowed.test:{tls}/ws", proxy=proxy.url, ssl=ctx,
                                            open_timeout=10) as ws:
            ws.send(f"key {AWS}")                                                            # message-blocked
            ws.send(f"pay {CARD}")                                                           # message-redacted
            ws.recv(timeout=10)
            ws.send("mail a@example.org")                                                    # message-reported
            ws.recv(timeout=10)
    finally:
        proxy.stop()                                                                         # proxy-stopped
        bad.stop()
        closing.close()
    return proxy


EXPECTED = {
    "proxy-started", "policy-loaded", "proxy-stopped", "client-refused", "connection-allowed", "connection-denied",
    "request-allowed", "request-denied", "tls-denied", "tunnel-passthrough", "upstream-tls-failed", "request-blocked",
    "request-redacted", "request-reported", "request-uninspectable", "request-error", "message-blocked",
    "message-redacted", "message-reported",
}


def test_every_event_type_from_real_traffic_is_documented(env, tmp_path):
    proxy = produce_every_event(env, tmp_path)
    events = proxy.events()
    actions = {e["event"]["action"] for e in events}
    assert EXPECTED <= actions, EXPECTED - actions
    docs = (REPO / "docs" / "audit-events.md").read_text()
    documented = set(re.findall(r"^### `([a-z-]+)`", docs, re.M))
    # Also produced by test_failclosed.py (injected faults): internal-error, upstream-refused.
    assert actions | {"internal-error", "upstream-refused"} <= documented
    for action in documented:
        assert re.search(rf"### `{action}`\n(?:.*\n)*?```json\n\{{", docs), f"{action} has no example"
    # No raw secret anywhere the proxy writes.
    for text in (proxy.audit_path.read_text(), proxy.output()):
        assert AWS not in text and CARD not in text and CARD.replace(" ", "") not in text
    denied = [e for e in events if e["event"]["action"] == "connection-denied"]
    assert {e["tollgate"]["stage"] for e in denied} == {"destination", "address"}
    for e in events:
        json.dumps(e)  # plain JSON, ECS-shaped
        assert e["@timestamp"].endswith("Z") and e["event"]["kind"] == "event"
