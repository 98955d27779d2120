"""Report-only mode through the real proxy: refusals are audited as would-deny/would-block and
the traffic passes; the address gate stays enforced. Top level, per destination, per detector."""

from __future__ import annotations

import re
import ssl

import httpx
import pytest
import websockets.sync.client

from tests.support.proxy import REPO, tollgate_run
from tests.support.secrets import POSITIVE

pytestmark = pytest.mark.integration

AWS = POSITIVE["aws_access_key_id"][1]
CASE = "CASE-12345678"
CARD = "4111 1111 1111 1111"

RESOLVE = """\
network:
  allow_cidrs: [127.0.0.1/32]
  resolve: {{api.allowed.test: 127.0.0.1, x.wild.test: 127.0.0.1, other.test: 127.0.0.1, unlisted.test: 127.0.0.1,
            metadata.test: 169.254.169.254}}
upstream:
  extra_ca_files: [{ca}]
"""
EVERYTHING_REPORTED = """\
version: 1
mode: report
clients: [{{name: ops, cidrs: [127.0.0.1/32]}}, {{name: other, cidrs: [127.0.0.2/32]}}]
destinations:
  - {{host: api.allowed.test, ports: [{tls}], clients: [ops], mode: intercept}}
  - {{host: other.test, ports: [{tls}], clients: [other], mode: intercept}}
  - {{host: metadata.test, ports: [{tls}], clients: [ops], mode: intercept}}
dlp:
  default_action: block
  detectors: {{payment_card: redact}}
""" + RESOLVE
ONE_OF_EACH = """\
version: 1
clients: [{{name: ops, cidrs: [127.0.0.1/32]}}]
destinations:
  - {{host: api.allowed.test, ports: [{tls}], clients: [ops], mode: intercept, enforcement: report}}
  - {{host: x.wild.test, ports: [{tls}], clients: [ops], mode: intercept}}
dlp:
  default_action: block
  custom:
    - {{id: case_ref, pattern: 'CASE-[0-9]{{8}}', keywords: [CASE-], action: block, mode: report}}
""" + RESOLVE


def start(env, tmp_path_factory, template: str):
    tmp = tmp_path_factory.mktemp("report")
    policy = tmp / "policy.yaml"
    policy.write_text(template.format(tls=env.tls.port, ca=env.pki.ca_cert_path))
    return tollgate_run(tmp, policy).start()


@pytest.fixture(scope="module")
def reported(env, tmp_path_factory):
    proxy = start(env, tmp_path_factory, EVERYTHING_REPORTED)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def mixed(env, tmp_path_factory):
    proxy = start(env, tmp_path_factory, ONE_OF_EACH)
    yield proxy
    proxy.stop()


def client(proxy, env) -> httpx.Client:
    verify = ssl.create_default_context(cafile=str(proxy.root_ca))
    verify.load_verify_locations(cafile=str(env.pki.ca_cert_path))  # for tunnels that are not decrypted
    return httpx.Client(proxy=proxy.url, verify=verify, timeout=10)


def actions(proxy, mark) -> list[tuple[str, str, str]]:
    return [(e["event"]["action"], e["event"]["reason"], e["event"]["outcome"]) for e in proxy.events_since(mark)]


def secret_reached_upstream(env) -> bool:
    return any(AWS.encode() in r.body for r in env.tls.requests)


def test_dlp_block_becomes_would_block_and_passes(env, reported):
    env.tls.clear()
    mark = reported.mark()
    with client(reported, env) as c:
        r = c.post(f"https://api.allowed.test:{env.tls.port}/upload", json={"key": AWS})
    assert r.status_code == 200
    forwarded = secret_reached_upstream(env)
    assert forwarded, "report-only must forward the request unchanged"
    event = next(e for e in reported.events_since(mark) if e["event"]["action"] == "request-would-block")
    assert (event["event"]["outcome"], event["tollgate"]["enforcement"], event["tollgate"]["dlp"]["would"]) == (
        "success", "report", "block")
    (finding,) = event["tollgate"]["dlp"]["findings"]
    assert (finding["detector"], finding["action"], finding["would"]) == ("aws_access_key_id", "report", "block")
    leaked = AWS in reported.audit_path.read_text() or AWS in reported.output()
    assert not leaked, "the raw key was written to the audit or console log"


def test_client_not_allowed_becomes_would_deny(env, reported):
    env.tls.clear()
    mark = reported.mark()
    with client(reported, env) as c:
        r = c.get(f"https://other.test:{env.tls.port}/x")
    assert r.status_code == 200 and env.tls.requests[-1].path == "/x"
    assert ("connection-would-deny", "client_not_allowed", "success") in actions(reported, mark)
    assert ("request-would-deny", "client_not_allowed", "success") in actions(reported, mark)


def test_unlisted_destination_is_tunnelled_not_decrypted(env, reported):
    env.tls.clear()
    mark = reported.mark()
    with client(reported, env) as c:
        r = c.get(f"https://unlisted.test:{env.tls.port}/y")
    assert r.status_code == 200 and env.tls.requests[-1].path == "/y"
    assert [a[0] for a in actions(reported, mark)] == ["connection-would-deny", "tunnel-passthrough"]
    assert actions(reported, mark)[0][1] == "destination_not_allowed"


def test_address_gate_is_enforced_even_in_report_mode(env, reported):
    mark = reported.mark()
    with client(reported, env) as c, pytest.raises(httpx.ProxyError, match="403"):
        c.get(f"https://metadata.test:{env.tls.port}/")
    assert actions(reported, mark) == [("connection-denied", "address_refused", "failure")]


def test_report_only_destination_passes_and_enforced_one_blocks(env, mixed):
    env.tls.clear()
    mark = mixed.mark()
    with client(mixed, env) as c:
        reported = c.post(f"https://api.allowed.test:{env.tls.port}/a", json={"key": AWS})
        blocked = c.post(f"https://x.wild.test:{env.tls.port}/b", json={"key": AWS})
    assert reported.status_code == 200 and blocked.status_code == 403
    assert blocked.json()["reason"] == "dlp_blocked"
    assert [r.path for r in env.tls.requests] == ["/a"]
    got = actions(mixed, mark)
    assert ("request-would-block", "dlp_blocked", "success") in got and ("request-blocked", "dlp_blocked", "failure") in got


def test_report_only_detector_passes_on_an_enforced_destination(env, mixed):
    env.tls.clear()
    mark = mixed.mark()
    with client(mixed, env) as c:
        r = c.post(f"https://x.wild.test:{env.tls.port}/c", json={"ref": CASE})
    assert r.status_code == 200 and CASE.encode() in env.tls.requests[-1].body
    event = next(e for e in mixed.events_since(mark) if e["event"]["action"] == "request-would-block")
    assert event["tollgate"]["dlp"]["findings"][0]["detector"] == "case_ref"


def test_websocket_message_would_block_and_is_forwarded(env, mixed):
    env.tls.clear()
    ctx = ssl.create_default_context(cafile=str(mixed.root_ca))
    mark = mixed.mark()
    with websockets.sync.client.connect(f"wss://x.wild.test:{env.tls.port}/ws", proxy=mixed.url, ssl=ctx,
                                        open_timeout=10) as ws:
        ws.send(f"ref {CASE}")
        assert ws.recv(timeout=10) == f"ref {CASE}"
    assert ("message-would-block", "dlp_blocked", "success") in actions(mixed, mark)


def test_redact_becomes_would_redact_and_the_body_is_unchanged(env, reported):
    env.tls.clear()
    mark = reported.mark()
    with client(reported, env) as c:
        r = c.post(f"https://api.allowed.test:{env.tls.port}/pay", json={"card": CARD})
    assert r.status_code == 200
    assert env.tls.requests[-1].body == ('{"card":"%s"}' % CARD).encode()
    assert ("request-would-redact", "allowed", "success") in actions(reported, mark)


def test_every_report_only_event_is_documented(reported, mixed):
    docs = (REPO / "docs" / "audit-events.md").read_text()
    produced = {e["event"]["action"] for p in (reported, mixed) for e in p.events()}
    would = {a for a in produced if "-would-" in a}
    assert would >= {"connection-would-deny", "request-would-deny", "request-would-block", "request-would-redact",
                     "message-would-block"}
    for action in would:
        assert re.search(rf"^### `{action}`\n(?:.*\n)*?```json\n\{{", docs, re.M), f"{action} is not documented"
