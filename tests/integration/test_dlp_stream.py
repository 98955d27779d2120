"""dlp.large_bodies: stream, through the real proxy: a body over max_body_bytes is scanned as
it passes. Clean bodies arrive byte for byte; a secret deep in a large body never reaches the
upstream, which gets an incomplete request and a closed connection; the audit log says so."""

from __future__ import annotations

import gzip
import hashlib
import ssl
import time

import httpx
import pytest

from tests.support.clients import curl
from tests.support.corpus import filler
from tests.support.proxy import tollgate_run
from tests.support.secrets import POSITIVE

pytestmark = pytest.mark.integration

AWS = POSITIVE["aws_access_key_id"][1]
CARD = "4111 1111 1111 1111"
LIMIT = 65536

POLICY = """\
version: 1
clients: [{{name: ops, cidrs: [127.0.0.1/32]}}]
destinations:
  - {{host: api.allowed.test, ports: [{tls}, {h2}], clients: [ops], mode: intercept}}
dlp:
  default_action: block
  detectors: {{payment_card: redact, email: report}}
  max_body_bytes: {limit}
  large_bodies: stream
  stream_max_bytes: 8000000
network:
  allow_cidrs: [127.0.0.1/32]
  resolve: {{api.allowed.test: 127.0.0.1}}
upstream:
  extra_ca_files: [{ca}]
"""

@pytest.fixture(scope="module")
def proxy(env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dlp-stream")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY.format(tls=env.tls.port, h2=env.h2.port, limit=LIMIT, ca=env.pki.ca_cert_path))
    p = tollgate_run(tmp, policy).start()
    yield p
    p.stop()


def client(proxy, http2: bool = False) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(proxy.root_ca))
    return httpx.Client(proxy=proxy.url, verify=ctx, timeout=30, http2=http2)


def post_cut(proxy, url: str, http2: bool = False, **kwargs) -> None:
    """A POST whose stream the proxy cuts: the client gets mitmproxy's 502, or, when it is
    still sending, a closed connection."""
    with client(proxy, http2) as c:
        try:
            status = c.post(url, **kwargs).status_code
        except httpx.TransportError:
            status = None
    assert status in (502, None), status


def upstream_url(port: int, path: str = "/upload") -> str:
    return f"https://api.allowed.test:{port}{path}"


def assert_never_sent(env, proxy, upstream, value: str) -> None:
    # Booleans first: on a failure, pytest would print both operands of an `in`.
    received = upstream.received_bytes()
    whole, start = value.encode() in received, value[:8].encode() in received
    assert not whole, "the secret reached the upstream"
    assert not start, "the start of the secret reached the upstream"
    logged = [value.encode() in text for text in (proxy.audit_path.read_bytes(), proxy.output().encode())]
    assert logged == [False, False], "the secret was written to the audit log / the console log"


def dlp_events(proxy, mark: int) -> list[dict]:
    return [e for e in proxy.events_since(mark) if e["event"]["action"].startswith("request-") and
            e["event"]["action"] not in ("request-allowed",)]


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_a_large_clean_body_arrives_byte_for_byte(env, proxy, http2):
    upstream = env.h2 if http2 else env.tls
    upstream.clear()
    body = filler(3_000_000)
    mark = proxy.mark()
    with client(proxy, http2) as c:
        r = c.post(upstream_url(upstream.port), content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 200
    (got,) = upstream.requests
    assert len(got.body) == len(body) and hashlib.sha256(got.body).digest() == hashlib.sha256(body).digest()
    assert dlp_events(proxy, mark) == []


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_a_secret_deep_in_a_large_body_never_leaves(env, proxy, http2):
    upstream = env.h2 if http2 else env.tls
    upstream.clear()
    at = 2_000_000
    body = filler(at) + f" aws_access_key_id={AWS} ".encode() + filler(1_000_000, seed=8)
    mark = proxy.mark()
    post_cut(proxy, upstream_url(upstream.port), http2, content=body, headers={"Content-Type": "text/plain"})
    assert upstream.requests == [], "the upstream got a complete request"
    assert_never_sent(env, proxy, upstream, AWS)
    (event,) = dlp_events(proxy, mark)
    assert event["event"]["action"] == "request-blocked"
    assert [f["detector"] for f in event["tollgate"]["dlp"]["findings"]] == ["aws_access_key_id"]
    stream = event["tollgate"]["stream"]
    assert stream["upstream_closed"] is True
    assert 0 < stream["forwarded_bytes"] < at + len(" aws_access_key_id=")
    assert event["tollgate"]["incident"]
    # The proxy keeps serving.
    with client(proxy) as c:
        assert c.get(upstream_url(env.tls.port, "/after")).status_code == 200


def test_a_secret_split_across_two_sends_never_leaves(env, proxy):
    """The client pauses in the middle of the secret: the proxy has its first half before it
    has the second, and must hold that half back."""
    env.tls.clear()
    head = filler(300_000) + b" aws_access_key_id="
    body = head + AWS.encode() + b" " + filler(300_000, seed=5)
    cut = len(head) + len(AWS) // 2

    def slowly():
        yield body[:cut]
        time.sleep(0.5)
        yield body[cut:]

    mark = proxy.mark()
    post_cut(proxy, upstream_url(env.tls.port), content=slowly(), headers={"Content-Length": str(len(body))})
    assert env.tls.requests == []
    assert_never_sent(env, proxy, env.tls, AWS)
    (event,) = dlp_events(proxy, mark)
    assert event["event"]["action"] == "request-blocked"
    assert event["tollgate"]["stream"]["forwarded_bytes"] <= len(head)


def test_a_gzip_body_is_scanned_decoded_as_it_passes(env, proxy):
    env.tls.clear()
    plain = filler(2_000_000, seed=3) + f" token={AWS} ".encode() + filler(500_000, seed=4)
    wire = gzip.compress(plain)
    assert len(wire) > LIMIT
    mark = proxy.mark()
    post_cut(proxy, upstream_url(env.tls.port), content=wire,
             headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})
    assert env.tls.requests == []
    (event,) = dlp_events(proxy, mark)
    assert event["event"]["action"] == "request-blocked"


@pytest.mark.parametrize("case", ["truncated", "bomb"])
def test_a_stream_that_stops_decoding_is_cut_and_audited_once(env, proxy, case):
    env.tls.clear()
    wire = gzip.compress(filler(1_000_000))[:-20] if case == "truncated" else gzip.compress(b"\0" * 200_000_000)
    assert len(wire) > LIMIT
    mark = proxy.mark()
    post_cut(proxy, upstream_url(env.tls.port), content=wire, headers={"Content-Encoding": "gzip"})
    assert env.tls.requests == []
    (event,) = dlp_events(proxy, mark)
    assert event["event"]["action"] == "request-uninspectable"
    expected = "corrupt_encoding" if case == "truncated" else "decompression_bomb"
    assert event["tollgate"]["dlp"]["uninspectable"] == expected
    assert event["tollgate"]["stream"]["upstream_closed"] is True


def test_a_chunked_body_is_streamed_and_a_redaction_blocks(env, proxy):
    """No declared length: in stream mode it is scanned as a stream, where a card cannot be
    redacted in place, so it blocks."""
    env.tls.clear()
    mark = proxy.mark()
    r = curl(upstream_url(env.tls.port), proxy=proxy.url, cacert=proxy.root_ca,
             args=("-H", "Transfer-Encoding: chunked", "-H", "Content-Type: application/json",
                   "--data-binary", '{"card": "%s", "amount": 12}' % CARD))
    assert r.status in (502, None), r.status
    assert env.tls.requests == []
    head, _, body = env.tls.received_bytes().partition(b"\r\n\r\n")
    assert head.startswith(b"POST /upload") and body == b"", "part of the body, or its end, went out"
    (event,) = dlp_events(proxy, mark)
    assert event["event"]["action"] == "request-blocked"
    (finding,) = event["tollgate"]["dlp"]["findings"]
    assert finding["detector"] == "payment_card" and finding["why"] == "not_redactable"


def test_a_small_chunked_clean_body_goes_through(env, proxy):
    env.tls.clear()
    r = curl(upstream_url(env.tls.port), proxy=proxy.url, cacert=proxy.root_ca,
             args=("-H", "Transfer-Encoding: chunked", "--data-binary", '{"hello": "world"}'))
    assert r.status == 200
    (got,) = env.tls.requests
    assert got.body == b'{"hello": "world"}'


def test_curl_uploads_a_large_file_with_expect_100_continue(env, proxy, tmp_path):
    env.tls.clear()
    upload = tmp_path / "export.csv"
    upload.write_bytes(filler(2_500_000, seed=11))
    r = curl(upstream_url(env.tls.port), proxy=proxy.url, cacert=proxy.root_ca,
             args=("--data-binary", f"@{upload}", "-H", "Content-Type: text/csv"))
    assert r.status == 200
    assert "Expect: 100-continue" in r.stderr  # curl asked first, as it does for large bodies
    (got,) = env.tls.requests
    assert got.body == upload.read_bytes()


def test_an_http2_body_of_unknown_length_is_streamed(env, proxy):
    """HTTP/2 without content-length: no length to go by, so it is scanned as a stream; a GET
    on the same connection is untouched."""
    env.h2.clear()
    body = filler(300_000, seed=12)
    secret_body = filler(100_000, seed=13) + b" " + AWS.encode() + b" "

    def pieces(data):
        for i in range(0, len(data), 50_000):
            yield data[i:i + 50_000]

    mark = proxy.mark()
    with client(proxy, http2=True) as c:
        r = c.post(upstream_url(env.h2.port), content=pieces(body))
        assert r.http_version == "HTTP/2" and r.status_code == 200
        assert c.get(upstream_url(env.h2.port, "/plain-get")).status_code == 200
    post, get = env.h2.requests
    assert post.body == body and post.header("content-length") is None and get.body == b""
    assert dlp_events(proxy, mark) == []
    post_cut(proxy, upstream_url(env.h2.port), http2=True, content=pieces(secret_body))
    assert len(env.h2.requests) == 2
    assert_never_sent(env, proxy, env.h2, AWS)


def test_reported_findings_in_a_stream_are_audited_at_its_end(env, proxy):
    env.tls.clear()
    body = filler(200_000) + b" jane.doe@example.org " + filler(200_000, seed=9)
    mark = proxy.mark()
    with client(proxy) as c:
        r = c.post(upstream_url(env.tls.port), content=body)
    assert r.status_code == 200
    assert env.tls.requests[0].body == body
    (event,) = dlp_events(proxy, mark)
    assert event["event"]["action"] == "request-reported"
    assert event["tollgate"]["stream"] == {"received_bytes": len(body), "forwarded_bytes": len(body)}


def test_a_secret_in_a_header_of_a_streamed_request_is_refused_before_it_starts(env, proxy):
    env.tls.clear()
    with client(proxy) as c:
        r = c.post(upstream_url(env.tls.port), content=filler(200_000), headers={"X-Key": AWS})
    assert r.status_code == 403 and r.json()["detectors"] == ["aws_access_key_id"]
    assert env.tls.received_bytes() == b""


def test_a_declared_length_over_stream_max_bytes_is_refused_before_it_is_read(env, proxy):
    env.tls.clear()
    mark = proxy.mark()
    r = curl(upstream_url(env.tls.port), proxy=proxy.url, cacert=proxy.root_ca,
             args=("-H", f"Content-Length: {1 << 30}", "--data-binary", "x" * 10, "--max-time", "10"))
    # mitmproxy's own cap (the stream cap + 1 MiB) answers; Tollgate audits the refusal first
    assert r.status == 413
    (event,) = [e for e in dlp_events(proxy, mark) if e["event"]["action"] == "request-uninspectable"]
    assert event["event"]["reason"] == "body_too_large"
    assert "stream_max_bytes" in event["message"]
    assert env.tls.received_bytes() == b""


def test_a_body_that_cannot_be_streamed_is_refused_before_it_starts(env, proxy):
    env.tls.clear()
    with client(proxy) as c:
        r = c.post(upstream_url(env.tls.port), content=filler(200_000),
                   headers={"Content-Encoding": "gzip, br", "Content-Type": "text/plain"})
    assert r.status_code == 403 and r.json()["reason"] == "uninspectable"
    assert env.tls.received_bytes() == b""


@pytest.fixture(scope="module")
def reporting(env, tmp_path_factory):
    """The same policy, but uninspectable bodies are only reported."""
    tmp = tmp_path_factory.mktemp("dlp-stream-report")
    policy = tmp / "policy.yaml"
    text = POLICY.format(tls=env.tls.port, h2=env.h2.port, limit=LIMIT, ca=env.pki.ca_cert_path)
    policy.write_text(text.replace("  large_bodies: stream\n", "  large_bodies: stream\n  uninspectable: report\n"))
    p = tollgate_run(tmp, policy).start()
    yield p
    p.stop()


def test_when_uninspectable_is_report_a_body_the_scanner_gives_up_on_arrives_whole(env, reporting):
    """A gzip body cut short: the scanner can only tell at its end. Reported, and every byte
    forwarded in order (the held-back tail included)."""
    env.tls.clear()
    wire = gzip.compress(filler(1_000_000))[:-20]
    mark = reporting.mark()
    with client(reporting) as c:
        r = c.post(upstream_url(env.tls.port), content=wire, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200
    (got,) = env.tls.requests
    assert got.body == wire
    (event,) = dlp_events(reporting, mark)
    assert event["event"]["action"] == "request-uninspectable"
    assert event["tollgate"]["dlp"]["uninspectable"] == "corrupt_encoding"
    stream = event["tollgate"]["stream"]  # as it stood when scanning stopped (at the end here)
    assert stream["received_bytes"] == len(wire) and stream["forwarded_bytes"] < len(wire)
    assert stream["rest_unscanned"] is True
