"""decide_destination: one row per precedence boundary, reasons asserted verbatim."""

from __future__ import annotations

import pytest

from tollgate.gates.client import identify_client
from tollgate.gates.decision import Reason
from tollgate.gates.destination import decide_destination
from tollgate.policy.loader import parse_policy

POLICY = parse_policy("""
version: 1
clients:
  - {name: ops, cidrs: [10.0.0.1/32]}
  - {name: pay, cidrs: [10.0.0.2/32]}
destinations:
  - {host: api.example.com, clients: [ops], mode: intercept}
  - {host: "*.example.com", clients: "*", mode: passthrough, ports: [443, 8443]}
  - {host: "*.deep.example.com", clients: [pay], mode: intercept}
  - {host: bücher.example, clients: "*", mode: intercept}
  - {cidr: 192.0.2.0/28, ports: [8443], clients: [pay], mode: intercept}
""".encode())
OPS = identify_client(POLICY, "10.0.0.1")
PAY = identify_client(POLICY, "10.0.0.2")


@pytest.mark.parametrize("client, host, port, reason, rule", [
    (OPS, "api.example.com", 443, Reason.ALLOWED, "api.example.com"),
    (OPS, "API.EXAMPLE.COM.", 443, Reason.ALLOWED, "api.example.com"),
    # exact entry beats the wildcard (which would make it passthrough)
    (PAY, "api.example.com", 443, Reason.ALLOWED, "*.example.com"),
    (OPS, "www.example.com", 443, Reason.ALLOWED, "*.example.com"),
    (OPS, "example.com", 443, Reason.DESTINATION_NOT_ALLOWED, None),
    (OPS, "api.example.com", 8443, Reason.ALLOWED, "*.example.com"),  # next entry allows the port
    (OPS, "api.example.com", 22, Reason.PORT_NOT_ALLOWED, "api.example.com"),
    # longer wildcard suffix first: pay gets *.deep, ops falls back to *.example.com
    (PAY, "x.deep.example.com", 443, Reason.ALLOWED, "*.deep.example.com"),
    (OPS, "x.deep.example.com", 443, Reason.ALLOWED, "*.example.com"),
    (OPS, "xn--bcher-kva.example", 443, Reason.ALLOWED, "xn--bcher-kva.example"),
    (OPS, "bücher.example", 443, Reason.ALLOWED, "xn--bcher-kva.example"),
    (OPS, "evil.test", 443, Reason.DESTINATION_NOT_ALLOWED, None),
    (PAY, "192.0.2.5", 8443, Reason.ALLOWED, "192.0.2.0/28"),
    (PAY, "3221225989", 8443, Reason.ALLOWED, "192.0.2.0/28"),  # the same address as an integer
    (OPS, "192.0.2.5", 8443, Reason.CLIENT_NOT_ALLOWED, "192.0.2.0/28"),
    (PAY, "192.0.2.5", 443, Reason.PORT_NOT_ALLOWED, "192.0.2.0/28"),
    (PAY, "192.0.2.200", 8443, Reason.IP_LITERAL_NOT_ALLOWED, None),
    (PAY, "::1", 443, Reason.IP_LITERAL_NOT_ALLOWED, None),
    (OPS, "bad_-.example.com", 443, Reason.INVALID_DESTINATION, None),
])
def test_decide_destination(client, host, port, reason, rule):
    decision = decide_destination(POLICY, client, host, port)
    assert decision.reason is reason, decision.message
    assert (decision.rule.rule_id if decision.rule else None) == rule


def test_client_not_allowed_names_the_client():
    decision = decide_destination(POLICY, PAY, "bücher.example", 80)
    assert decision.reason is Reason.PORT_NOT_ALLOWED
    assert "bücher.example" in decision.message  # humans see the Unicode form
