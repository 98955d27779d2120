"""StreamGuard: what mitmproxy calls with each piece of a streamed body. It must never raise
into mitmproxy, must report a stop once, and must forward nothing after a failure."""

from __future__ import annotations

import gzip

from tests.support.secrets import POSITIVE
from tests.support.corpus import filler
from tests.unit.test_dlp_stream import ENGINE, KEY, POLICY
from tollgate.dlp.stream import StreamScanner
from tollgate.mitm.streaming import StreamGuard


def scanner(encoding: str = "") -> StreamScanner:
    return StreamScanner(ENGINE, POLICY.dlp, KEY, "partner.example", None, encoding)


class Exploding:
    def __init__(self):
        self.calls = 0

    def feed(self, data):
        self.calls += 1
        raise RuntimeError("a bug")


def test_a_failing_scan_forwards_nothing_more_and_is_refused_once():
    errors, stops = [], []
    exploding = Exploding()
    guard = StreamGuard(exploding, on_stop=stops.append, on_error=lambda: errors.append(1))
    assert guard(b"abc") == [] and guard(b"def") == [] and guard(b"") == []
    assert errors == [1] and stops == [] and guard.failed and exploding.calls == 1


def test_a_refusal_that_fails_itself_still_forwards_nothing():
    def broken_refusal():
        raise OSError("audit log unwritable")

    guard = StreamGuard(Exploding(), on_stop=lambda o: False, on_error=broken_refusal)
    assert guard(b"abc") == []  # logged, not raised into mitmproxy


def test_a_stop_is_reported_once_and_nothing_follows_a_block():
    stops = []
    guard = StreamGuard(scanner(), on_stop=lambda o: stops.append(o.action) or False, on_error=lambda: None)
    secret = POSITIVE["aws_access_key_id"][1].encode()
    out = guard(filler(100_000)) + guard(b" " + secret + b" ") + guard(filler(10_000)) + guard(b"")
    assert stops == ["block"]
    assert sum(map(len, out)) <= 100_000


def test_when_the_policy_only_reports_a_stop_the_whole_body_goes_out():
    wire = gzip.compress(filler(100_000))[:-20]  # truncated: uninspectable at the end
    stops = []
    guard = StreamGuard(scanner("gzip"), on_stop=lambda o: stops.append(o.uninspectable) or True, on_error=lambda: None)
    out = guard(wire[:3000]) + guard(wire[3000:]) + guard(b"")
    assert stops == ["corrupt_encoding"]
    assert b"".join(out) == wire
