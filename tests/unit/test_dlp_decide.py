"""decide(): one row per precedence boundary."""

from __future__ import annotations

import pytest

from tollgate.dlp.decide import Finding, decide
from tollgate.policy.loader import parse_policy

POLICY = parse_policy(b"""
version: 1
clients: [{name: a, cidrs: [10.0.0.0/8]}]
destinations:
  - {host: api.stripe.com, clients: "*", mode: intercept, dlp: {allow: [payment_card]}}
  - {host: partner.example, clients: "*", mode: intercept}
dlp:
  default_action: block
  detectors:
    payment_card: redact
    email: {action: report, block_at: 3}
    jwt: report
  custom:
    - {id: case_ref, pattern: 'CASE-[0-9]{8}', action: redact}
""")
STRIPE, PARTNER = POLICY.destinations


def f(detector, rewritable=True, placeholder=False):
    return Finding(detector, "body", (), "value", 0, 5, rewritable, placeholder, 0 if rewritable else -1)


@pytest.mark.parametrize("findings, destination, host, action, whys", [
    ([f("payment_card")], STRIPE, "api.stripe.com", "allow", ["allowed_for_destination"]),
    ([f("payment_card")], PARTNER, "partner.example", "redact", ["policy"]),
    ([f("payment_card", rewritable=False)], PARTNER, "partner.example", "block", ["not_redactable"]),
    ([f("stripe_secret_key")], STRIPE, "api.stripe.com", "allow", ["own_issuer"]),
    ([f("stripe_secret_key")], PARTNER, "partner.example", "block", ["policy"]),  # default_action
    ([f("github_token")], None, "api.github.com", "allow", ["own_issuer"]),
    ([f("aws_access_key_id", placeholder=True)], PARTNER, "partner.example", "report", ["placeholder"]),
    ([f("email"), f("email")], PARTNER, "partner.example", "report", ["policy", "policy"]),
    ([f("email")] * 3, PARTNER, "partner.example", "block", ["block_at"] * 3),
    ([f("jwt"), f("payment_card")], PARTNER, "partner.example", "redact", ["policy", "policy"]),
    ([f("jwt"), f("aws_access_key_id")], PARTNER, "partner.example", "block", ["policy", "policy"]),
    ([f("case_ref")], PARTNER, "partner.example", "redact", ["policy"]),
    ([], PARTNER, "partner.example", "allow", []),
], ids=["allowed-class", "redact", "redact-impossible-blocks", "own-issuer", "default-action", "github-issuer",
        "placeholder", "below-block_at", "block_at", "strongest-redact", "strongest-block", "custom-action", "clean"])
def test_decide(findings, destination, host, action, whys):
    decision = decide(findings, POLICY.dlp, destination, host)
    assert decision.action == action
    assert [j.why for j in decision.judged] == whys


REPORT_DETECTOR = parse_policy(b"""
version: 1
clients: [{name: a, cidrs: [10.0.0.0/8]}]
destinations: [{host: partner.example, clients: "*", mode: intercept}]
dlp:
  detectors:
    payment_card: {action: redact, mode: report}
    email: {action: report, block_at: 2}
  custom:
    - {id: case_ref, pattern: 'CASE-[0-9]{8}', action: block, mode: report}
""")


def test_report_only_request_keeps_what_it_would_have_done():
    decision = decide([f("stripe_secret_key"), f("payment_card")], POLICY.dlp, PARTNER, "partner.example", report_only=True)
    assert (decision.action, decision.would) == ("report", "block")
    assert [(j.action, j.would) for j in decision.judged] == [("report", "block"), ("report", "redact")]


def test_report_only_detectors_only_soften_themselves():
    dlp, dest = REPORT_DETECTOR.dlp, REPORT_DETECTOR.destinations[0]
    assert (decide([f("payment_card")], dlp, dest, "partner.example").action,
            decide([f("payment_card")], dlp, dest, "partner.example").would) == ("report", "redact")
    assert decide([f("case_ref")], dlp, dest, "partner.example").would == "block"
    # an enforced detector in the same request still bites; would records the strongest
    mixed = decide([f("case_ref"), f("email"), f("email")], dlp, dest, "partner.example")
    assert (mixed.action, mixed.would) == ("block", None)
    both = decide([f("case_ref"), f("payment_card")], dlp, dest, "partner.example")
    assert (both.action, both.would) == ("report", "block")


def test_enforced_decisions_have_no_would():
    decision = decide([f("stripe_secret_key")], POLICY.dlp, PARTNER, "partner.example")
    assert (decision.action, decision.would) == ("block", None)
