"""Thousands of realistic clean requests: none may be blocked or redacted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.support.corpus import generate
from tollgate.dlp.engine import Engine
from tollgate.dlp.inspect import RequestFacts, inspect_request
from tollgate.policy.loader import load_policy

POLICY = load_policy(Path(__file__).resolve().parents[2] / "policies" / "example.yaml")


def test_benign_corpus_produces_no_block():
    engine = Engine.for_policy(POLICY.dlp)
    actions: Counter = Counter()
    detectors: Counter = Counter()
    for i, (content_type, body) in enumerate(generate(3000)):
        outcome = inspect_request(engine, POLICY.dlp, b"k" * 32, RequestFacts(
            f"/api/v1/items/{i}?page=2", [("Accept", "application/json")], body, "", content_type,
            "partner.example", None))
        actions[outcome.action] += 1
        detectors.update(f["detector"] for f in outcome.findings)
    assert actions["block"] == 0 and actions["redact"] == 0 and actions["uninspectable"] == 0, (actions, detectors)
    assert actions["allow"] == 3000


def test_benign_corpus_streamed_produces_no_block():
    """The same bodies through the stream scan (dlp.large_bodies: stream), which sees text,
    not structure: in two pieces cut mid-body, none may be stopped."""
    from tollgate.dlp.stream import StreamScanner

    engine = Engine.for_policy(POLICY.dlp)
    actions: Counter = Counter()
    detectors: Counter = Counter()
    for content_type, body in generate(3000):
        scanner = StreamScanner(engine, POLICY.dlp, b"k" * 32, "partner.example", None, "", content_type)
        out = scanner.feed(body[:len(body) // 2]) + scanner.feed(body[len(body) // 2:]) + scanner.finish()
        outcome = scanner.outcome()
        actions[outcome.action] += 1
        detectors.update(f["detector"] for f in outcome.findings)
        assert b"".join(out) == body or outcome.action != "allow"
    assert actions["allow"] == 3000, (actions, detectors)
