"""StreamScanner: a body scanned as it passes, in windows with a held-back overlap.

What a user relies on: a clean body goes out byte for byte; no byte of a secret goes out,
wherever the chunks are cut; compressed bodies are scanned decoded, bombs and truncation
are refused. Assertions compare offsets and lengths, never print the test secrets.
"""

from __future__ import annotations

import gzip
import json
import zlib

import brotli
import pytest
import zstandard

from tests.support.corpus import filler
from tests.support.secrets import POSITIVE
from tollgate.dlp.content import Uninspectable
from tollgate.dlp.engine import Engine
from tollgate.dlp.stream import OVERLAP, WINDOW, StreamScanner, streaming_decoder
from tollgate.policy.loader import parse_policy

POLICY = parse_policy(b"""
version: 1
clients: [{name: a, cidrs: [10.0.0.0/8]}]
destinations: [{host: partner.example, clients: "*", mode: intercept}]
dlp:
  default_action: block
  detectors: {payment_card: redact, email: {action: report, block_at: 3}}
  large_bodies: stream
  max_body_bytes: 65536
  stream_max_bytes: 4000000
""")
ENGINE = Engine.for_policy(POLICY.dlp)
KEY = b"k" * 32

def scanner(encoding: str = "", report_only: bool = False, policy=POLICY, content_type: str = "") -> StreamScanner:
    return StreamScanner(ENGINE, policy.dlp, KEY, "partner.example", policy.destinations[0], encoding, content_type,
                         report_only=report_only)


def run(s: StreamScanner, data: bytes, cuts: list[int]) -> bytes:
    """Feed `data` cut at `cuts`; what went out, checking no chunk is ever empty."""
    out = []
    bounds = [0, *sorted(cuts), len(data)]
    for a, b in zip(bounds, bounds[1:]):
        out += s.feed(data[a:b])
    out += s.finish()
    assert all(out), "an empty chunk would end a chunked upstream body early"
    return b"".join(out)


@pytest.mark.parametrize("cuts", [[], [1], [OVERLAP], [WINDOW - 1, WINDOW + 7], list(range(1000, 200_000, 4099))])
def test_a_clean_body_goes_out_byte_for_byte(cuts):
    data = filler(200_000)
    s = scanner()
    assert run(s, data, cuts) == data
    assert s.stopped is None and s.outcome().action == "allow"
    assert s.forwarded == s.received == len(data)


def _embedded(label: str, at: int = 100_000) -> tuple[bytes, int, int]:
    secret = POSITIVE[label][1].encode()
    data = filler(at) + b" " + secret + b" " + filler(50_000, seed=2)
    return data, at + 1, at + 1 + len(secret)


def _assert_held_before(out: bytes, data: bytes, start: int, label: str) -> None:
    assert data.startswith(out), f"{label}: what went out is not a prefix of the body"
    assert len(out) <= start, f"{label}: {len(out) - start} bytes of the match went out"


@pytest.mark.parametrize("label", [k for k, (d, _) in POSITIVE.items()
                                   if d not in ("email", "phone", "payment_card")])
def test_no_byte_of_a_secret_goes_out_wherever_the_chunks_are_cut(label):
    data, start, end = _embedded(label)
    for cut in sorted({start - 1, start, start + 1, (start + end) // 2, end - 1, end, end + 1}):
        s = scanner()
        out = run(s, data, [cut])
        _assert_held_before(out, data, start, f"{label} cut at {cut - start:+}")
        assert s.stopped is not None and s.stopped.action == "block", f"{label} cut at {cut - start:+}: not blocked"
        detectors = list(s.stopped.decision.detectors)
        assert POSITIVE[label][0] in detectors, f"{label} cut at {cut - start:+}: {detectors}"


def test_every_cut_inside_a_secret_is_caught():
    data, start, end = _embedded("aws_access_key_id")
    for cut in range(start - 2, end + 3):
        s = scanner()
        out = run(s, data, [cut, cut + 5])
        _assert_held_before(out, data, start, f"cut at {cut - start:+}")
        assert s.stopped is not None and s.stopped.action == "block", f"cut at {cut - start:+}"


def test_a_redact_action_blocks_a_stream():
    data, start, _ = _embedded("visa")
    s = scanner()
    out = run(s, data, [start + 3])
    _assert_held_before(out, data, start, "visa")
    assert s.stopped.action == "block"
    assert [j.why for j in s.stopped.decision.judged] == ["not_redactable"]


def test_reported_findings_go_out_and_are_counted_once():
    data = filler(30_000) + b" jane.doe@example.org " + filler(30_000, seed=3)
    s = scanner()
    assert run(s, data, list(range(0, len(data), 1000))) == data
    outcome = s.outcome()
    assert outcome.action == "report"
    assert [f["detector"] for f in outcome.findings] == ["email"]
    assert "jane.doe" not in str(outcome.findings)


def test_block_at_counts_across_windows():
    data = b"".join(filler(WINDOW + 500, seed=i) + f" person{i}@example.org ".encode() for i in range(3))
    s = scanner()
    run(s, data, list(range(0, len(data), 16_384)))
    assert s.stopped.action == "block"
    assert {j.why for j in s.stopped.decision.judged} == {"block_at"}


def test_report_only_forwards_and_says_what_it_would_do():
    data, _, _ = _embedded("aws_access_key_id")
    s = scanner(report_only=True)
    assert run(s, data, [50_000]) == data
    assert s.outcome().action == "report" and s.outcome().would == "block"


def _compress(encoding: str, data: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    if encoding == "br":
        return brotli.compress(data)
    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_compressed_bodies_are_scanned_decoded(encoding):
    clean = filler(300_000)
    wire = _compress(encoding, clean)
    s = scanner(encoding)
    assert run(s, wire, list(range(0, len(wire), 700))) == wire
    assert s.decoded == len(clean)

    data, start, _ = _embedded("github_token")
    wire = _compress(encoding, data)
    s = scanner(encoding)
    out = run(s, wire, list(range(0, len(wire), 700)))
    assert s.stopped is not None and s.stopped.action == "block"
    assert wire.startswith(out)
    seen = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(out) if encoding == "gzip" else None
    if seen is not None:  # what the upstream could decode from what it got
        _assert_held_before(seen, data, start, encoding)


def test_raw_deflate_is_accepted():
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    wire = c.compress(filler(50_000)) + c.flush()
    s = scanner("deflate")
    assert run(s, wire, [10]) == wire and s.stopped is None


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_a_decompression_bomb_is_refused_early(encoding):
    wire = _compress(encoding, b"\0" * 30_000_000)
    s = scanner(encoding)
    out = run(s, wire, list(range(0, len(wire), 4096)))
    assert s.stopped.uninspectable == "decompression_bomb"
    assert len(out) < len(wire)


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_a_truncated_compressed_body_is_uninspectable_and_its_end_held(encoding):
    wire = _compress(encoding, filler(100_000))[:-20]
    s = scanner(encoding)
    out = run(s, wire, [5000])
    assert s.stopped.uninspectable == "corrupt_encoding"
    assert len(out) < len(wire)


def test_corrupt_compression_is_uninspectable():
    s = scanner("gzip")
    assert run(s, b"\x1f\x8b\x08\x00not gzip at all" * 100, []) == b""
    assert s.stopped.uninspectable == "corrupt_encoding"


@pytest.mark.parametrize("encoding, reason", [("gzip, br", "unknown_encoding"), ("compress", "unknown_encoding")])
def test_encodings_that_cannot_be_streamed(encoding, reason):
    with pytest.raises(Uninspectable) as e:
        streaming_decoder(encoding)
    assert e.value.reason == reason


def test_a_body_over_stream_max_bytes_stops():
    s = scanner()
    out = []
    for i in range(50):
        out += s.feed(filler(100_000, seed=i))
    assert s.stopped.uninspectable == "too_large"
    assert sum(map(len, out)) <= POLICY.dlp.stream_max_bytes


def test_pass_rest_forwards_everything_after_a_stop_when_the_policy_only_reports():
    wire = gzip.compress(filler(100_000))[:-20]
    s = scanner("gzip")
    out = s.feed(wire[:5000]) + s.feed(wire[5000:])
    assert s.stopped is None
    out += s.finish()
    assert s.stopped.uninspectable == "corrupt_encoding"
    out += s.pass_rest() + s.feed(b"more") + s.finish()
    assert b"".join(out) == wire + b"more"
    assert s.forwarded == s.received == len(wire) + 4


def test_pass_rest_after_the_size_cap_loses_no_byte():
    s = scanner()
    chunks = [filler(100_000, seed=i) for i in range(45)]
    out = []
    fed = 0
    while s.stopped is None:
        out += s.feed(chunks[fed])
        fed += 1
    assert s.stopped.uninspectable == "too_large" and fed == 41  # 4,100,000 > stream_max_bytes
    out += s.pass_rest()
    for c in chunks[fed:]:
        out += s.feed(c)
    assert b"".join(out) == b"".join(chunks)


@pytest.mark.parametrize("content_type, ok", [("text/csv; charset=latin-1", True), ("text/plain; charset=Shift_JIS", True),
                                              ("text/plain; charset=utf-16", False), ("text/plain; charset=nope", False)])
def test_charsets_a_stream_can_be_scanned_in(content_type, ok):
    s = StreamScanner(ENGINE, POLICY.dlp, KEY, "partner.example", None, "", content_type)
    if ok:
        data = filler(20_000) + b" " + POSITIVE["aws_access_key_id"][1].encode() + b" "
        run(s, data, [10_000])
        assert s.stopped is not None and s.stopped.action == "block"
    else:  # stopped before any byte moves
        assert s.stopped is not None and s.stopped.uninspectable == "undecodable_text"
        assert s.feed(b"abc") == []


def test_a_streamed_form_is_scanned_with_plus_as_a_space():
    """`+` in a form is a space: `[1,+4372328177349]` is not an Austrian phone number."""
    s = scanner(content_type="application/x-www-form-urlencoded")
    data = filler(80_000) + b"&tags=%5B%27review%27%2C+4372328177349%5D&" + filler(1_000)
    assert run(s, data, [40_000]) == data and s.outcome().action == "allow"
    s = scanner(content_type="application/x-www-form-urlencoded")
    run(s, filler(80_000) + b"&phone=%2B44+20+7946+0958&" + POSITIVE["aws_access_key_id"][1].encode(), [])
    assert s.stopped is not None and s.stopped.action == "block"


@pytest.mark.parametrize("label", ["aws_access_key_id", "slack_webhook"])
def test_a_streamed_json_body_is_scanned_with_its_escapes_undone(label):
    escaped = json.dumps(POSITIVE[label][1]).replace("/", "\\/")  # as PHP writes every slash
    if label == "aws_access_key_id":
        escaped = '"\\u0041' + escaped[2:]  # the first letter as a \\u escape
    data = filler(80_000) + b' {"k": ' + escaped.encode() + b"} "
    s = scanner(content_type="application/json")
    run(s, data, [40_000])
    assert s.stopped is not None and s.stopped.action == "block"
    assert POSITIVE[label][0] in list(s.stopped.decision.detectors)


def test_data_after_the_end_stops_the_stream():
    """An empty HTTP/2 DATA frame reaches the scanner as "the end": what follows is refused."""
    s = scanner()
    s.feed(filler(20_000))
    s.finish()
    assert s.feed(b"more") == [] and s.stopped.uninspectable == "data_after_end"


def test_one_window_scans_within_one_pattern_budget(monkeypatch):
    # A window is scanned on the proxy's event loop, in several scans (all the text, the
    # body, its layers): they share one PATTERN_TIMEOUT, so a slow pattern holds the loop
    # for that long at most, and the stream stops as scan_incomplete, not a pass.
    import time

    from tollgate.dlp import engine as engine_module, stream as stream_module
    from tollgate.dlp.detectors import BUILTIN, compile_custom
    from tollgate.policy.model import CustomDetector

    slow = Engine(BUILTIN + (compile_custom(CustomDetector("slow_one", r"(a|aa)+c")),))
    text = "a" * 27 + "! ac"  # backtracks on the run of "a", then matches "ac"
    monkeypatch.setattr(engine_module, "PATTERN_TIMEOUT", 30.0)
    times = []
    for _ in range(3):
        started = time.monotonic()
        slow.scan(text)
        times.append(time.monotonic() - started)
    one_scan = min(times)
    budget = 2.5 * one_scan  # more than any one scan takes, less than a window's scans together
    monkeypatch.setattr(engine_module, "PATTERN_TIMEOUT", budget)
    monkeypatch.setattr(stream_module, "PATTERN_TIMEOUT", budget)
    s = StreamScanner(slow, POLICY.dlp, KEY, "partner.example", POLICY.destinations[0], "", "text/plain")
    started = time.monotonic()
    assert s.feed(text.encode()) == []
    assert s.stopped is not None and (s.stopped.action, s.stopped.uninspectable) == ("uninspectable", "scan_incomplete")
    assert time.monotonic() - started < 3 * one_scan
