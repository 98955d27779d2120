"""DLP through the real proxy: blocked data never reaches the upstream (in any encoding),
redacted requests arrive well-formed, nothing raw reaches the audit or console log."""

from __future__ import annotations

import base64
import gzip
import json
import ssl
from urllib.parse import quote, urlencode

import httpx
import pytest
import websockets.sync.client

from tests.support.proxy import tollgate_run
from tests.support.secrets import POSITIVE

pytestmark = pytest.mark.integration

AWS = POSITIVE["aws_access_key_id"][1]
GITHUB = POSITIVE["github_token"][1]
CARD = "4111 1111 1111 1111"

POLICY = """\
version: 1
clients: [{{name: ops, cidrs: [127.0.0.1/32]}}]
destinations:
  - {{host: api.allowed.test, ports: [{tls}], clients: [ops], mode: intercept}}
  - {{host: h2.allowed.test, ports: [{tls}], clients: [ops], mode: intercept, dlp: {{allow: [payment_card]}}}}
dlp:
  default_action: block
  detectors:
    payment_card: redact
    email: {{action: report, block_at: 3}}
  custom:
    - {{id: case_ref, pattern: 'CASE-[0-9]{{8}}', keywords: [CASE-], action: block}}
  uninspectable: block
  max_body_bytes: 1048576
network:
  allow_cidrs: [127.0.0.1/32]
  resolve: {{api.allowed.test: 127.0.0.1, h2.allowed.test: 127.0.0.1}}
upstream:
  extra_ca_files: [{ca}]
"""


@pytest.fixture(scope="module")
def dlp(env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dlp")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY.format(tls=env.tls.port, ca=env.pki.ca_cert_path))
    proxy = tollgate_run(tmp, policy).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def client(dlp, env):
    env.tls.clear()
    ctx = ssl.create_default_context(cafile=str(dlp.root_ca))
    with httpx.Client(proxy=dlp.url, verify=ctx, timeout=20) as c:
        yield c


def url(env, path="/", host="api.allowed.test"):
    return f"https://{host}:{env.tls.port}{path}"


def every_encoding(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw), quote(value, safe="").encode(), raw.hex().encode(),
            json.dumps(value).encode()[1:-1]]


def assert_nowhere(env, dlp, value: str):
    # Booleans first: on a failure, pytest would print both operands of an `in`.
    received = env.tls.received_bytes()
    leaked = [form in received for form in every_encoding(value)]
    assert not any(leaked), f"the secret reached the upstream (in encoding #{leaked.index(True)})"
    logged = [value.encode() in text for text in (dlp.audit_path.read_bytes(), dlp.output().encode())]
    assert logged == [False, False], "the secret was written to the audit log / the console log"


def test_blocked_secret_never_reaches_upstream(env, dlp, client):
    mark = dlp.mark()
    r = client.post(url(env, "/upload"), json={"config": {"aws_access_key_id": AWS}})
    assert r.status_code == 403
    body = r.json()
    assert body["reason"] == "dlp_blocked" and body["detectors"] == ["aws_access_key_id"]
    assert AWS not in r.text
    assert not env.tls.requests
    (event,) = [e for e in dlp.events_since(mark) if e["event"]["action"] == "request-blocked"]
    (finding,) = event["tollgate"]["dlp"]["findings"]
    assert finding["detector"] == "aws_access_key_id" and finding["where"] == "body:$.config.aws_access_key_id"
    assert finding["preview"] == "AKIA…[20 chars]" and finding["fingerprint"].startswith("hmac-sha256:")
    assert event["tollgate"]["incident"] == body["incident"]
    assert_nowhere(env, dlp, AWS)


@pytest.mark.parametrize("where", ["header", "query", "base64_body", "gzip_body", "form"])
def test_secret_blocked_wherever_it_is(env, dlp, client, where):
    kwargs = {
        "header": {"headers": {"Authorization": f"token {GITHUB}"}},
        "query": {"params": {"t": GITHUB}},
        "base64_body": {"content": base64.b64encode(f"token={GITHUB}".encode()), "headers": {"Content-Type": "text/plain"}},
        "gzip_body": {"content": gzip.compress(json.dumps({"t": GITHUB}).encode()),
                      "headers": {"Content-Encoding": "gzip", "Content-Type": "application/json"}},
        "form": {"data": {"token": GITHUB}},
    }[where]
    r = client.post(url(env, "/x"), **kwargs)
    assert r.status_code == 403, where
    assert r.json()["detectors"] == ["github_token"]
    assert not env.tls.requests
    assert_nowhere(env, dlp, GITHUB)


def test_card_in_json_is_redacted_and_stays_valid_json(env, dlp, client):
    mark = dlp.mark()
    r = client.post(url(env, "/pay"), json={"card": CARD, "amount": 1200, "note": "thanks"})
    assert r.status_code == 200
    (received,) = env.tls.requests
    assert json.loads(received.body) == {"card": "[REDACTED:payment_card:1111]", "amount": 1200, "note": "thanks"}
    assert int(received.header("content-length")) == len(received.body)
    assert [e["event"]["action"] for e in dlp.events_since(mark)][-1] == "request-redacted"
    assert_nowhere(env, dlp, CARD)


def test_card_in_form_and_gzip_json_are_redacted_in_place(env, dlp, client):
    r = client.post(url(env, "/form"), data={"name": "Jane", "pan": CARD})
    assert r.status_code == 200
    assert env.tls.requests[-1].body == urlencode({"name": "Jane", "pan": "[REDACTED:payment_card:1111]"}).encode()
    r = client.post(url(env, "/gz"), content=gzip.compress(json.dumps({"pan": CARD}).encode()),
                    headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 200
    received = env.tls.requests[-1]
    assert received.header("content-encoding") == "gzip"
    assert json.loads(gzip.decompress(received.body)) == {"pan": "[REDACTED:payment_card:1111]"}
    assert_nowhere(env, dlp, CARD)


def test_card_inside_base64_cannot_be_redacted_so_it_is_blocked(env, dlp, client):
    r = client.post(url(env, "/b64"), json={"blob": base64.b64encode(f"pan {CARD}".encode()).decode()})
    assert r.status_code == 403 and r.json()["detectors"] == ["payment_card"]
    assert not env.tls.requests


def test_card_allowed_for_its_destination(env, dlp, client):
    r = client.post(url(env, "/charge", host="h2.allowed.test"), json={"card": CARD})
    assert r.status_code == 200
    assert json.loads(env.tls.requests[-1].body) == {"card": CARD}


def test_reported_findings_pass_and_block_at_threshold_blocks(env, dlp, client):
    mark = dlp.mark()
    r = client.post(url(env, "/notify"), json={"to": "jane.doe@example.org"})
    assert r.status_code == 200
    event = [e for e in dlp.events_since(mark) if e["event"]["action"] == "request-reported"][-1]
    assert event["tollgate"]["dlp"]["findings"][0]["preview"] == "…@example.org"
    many = client.post(url(env, "/notify"), json={"to": [f"user{i}@example.org" for i in range(3)]})
    assert many.status_code == 403 and many.json()["detectors"] == ["email"]


def test_custom_detector_and_documentation_placeholder(env, dlp, client):
    r = client.post(url(env, "/c"), json={"ref": "CASE-12345678"})
    assert r.status_code == 403 and r.json()["detectors"] == ["case_ref"]
    r = client.post(url(env, "/docs"), json={"example": "AKIAIOSFODNN7EXAMPLE"})
    assert r.status_code == 200  # reported, not blocked


def test_same_value_same_fingerprint(env, dlp, client):
    mark = dlp.mark()
    for _ in range(2):
        client.post(url(env, "/again"), json={"k": AWS})
    prints = [e["tollgate"]["dlp"]["findings"][0]["fingerprint"] for e in dlp.events_since(mark)
              if e["event"]["action"] == "request-blocked"]
    assert len(prints) == 2 and prints[0] == prints[1]


@pytest.mark.parametrize("body, headers, reason, status", [
    (gzip.compress(b"\0" * (60 * 1024 * 1024)), {"Content-Encoding": "gzip"}, "uninspectable", 403),
    (b"definitely not gzip", {"Content-Encoding": "gzip"}, "uninspectable", 403),
    (b"x" * 2_000_000, {}, "body_too_large", 413),
], ids=["bomb", "corrupt", "too-large"])
def test_uninspectable_bodies_are_blocked(env, dlp, client, body, headers, reason, status):
    r = client.post(url(env, "/u"), content=body, headers={"Content-Type": "text/plain", **headers})
    assert r.status_code == status
    assert r.json()["reason"] == reason
    assert not env.tls.requests


@pytest.mark.parametrize("body", [b"p" * 900_000, b"aB" * 450_000, b"1 " * 450_000, b"%41" * 300_000],
                         ids=["letters", "mixed-case", "spaced-digits", "percent"])
def test_pathological_bodies_are_answered_promptly(env, dlp, client, body):
    # Regression: a quadratic pattern once stalled the scan on a long run of letters.
    r = client.post(url(env, "/big"), content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code in (200, 403)  # scanned (or refused as uninspectable), within httpx's timeout
    assert r.elapsed.total_seconds() < 10


def test_websocket_messages_are_scanned(env, dlp):
    env.tls.clear()
    ctx = ssl.create_default_context(cafile=str(dlp.root_ca))
    mark = dlp.mark()
    with websockets.sync.client.connect(f"wss://api.allowed.test:{env.tls.port}/ws", proxy=dlp.url, ssl=ctx,
                                        open_timeout=10) as ws:
        ws.send(f"key={AWS}")  # dropped
        ws.send(f"pay {CARD}")  # redacted
        ws.send("hello")
        assert ws.recv(timeout=10) == "pay [REDACTED:payment_card:1111]"
        assert ws.recv(timeout=10) == "hello"
    assert [r.body for r in env.tls.requests if r.method == "WS"] == [b"pay [REDACTED:payment_card:1111]", b"hello"]
    actions = [e["event"]["action"] for e in dlp.events_since(mark)]
    assert "message-blocked" in actions and "message-redacted" in actions
    assert_nowhere(env, dlp, AWS)
