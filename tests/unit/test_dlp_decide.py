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
