"""Metrics derived from audit events."""

from __future__ import annotations

from tollgate.audit.events import decision_event, lifecycle_event
from tollgate.gates.decision import Decision, Reason
from tollgate.metrics import Metrics


def value(m: Metrics, name: str, **labels) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def test_decisions_findings_and_tls_failures_are_counted():
    m = Metrics()
    m.observe(decision_event("connection-denied", Decision(Reason.DESTINATION_NOT_ALLOWED, "x"), stage="destination",
                             source=None))
    m.observe(decision_event("request-blocked", Decision(Reason.DLP_BLOCKED, "x"), stage="dlp", source=None,
                             extra={"dlp": {"findings": [{"detector": "jwt", "action": "block"}] * 2}}))
    m.observe(decision_event("upstream-tls-failed", Decision(Reason.UPSTREAM_PIN_MISMATCH, "x"), stage="tls", source=None))
    assert value(m, "tollgate_decisions_total", stage="destination", action="connection-denied", outcome="failure",
                 reason="destination_not_allowed") == 1
    assert value(m, "tollgate_dlp_findings_total", detector="jwt", action="block") == 2
    assert value(m, "tollgate_upstream_tls_failures_total", reason="upstream_pin_mismatch") == 1


def test_policy_info_follows_reloads_and_lifecycle_is_not_a_decision():
    m = Metrics()
    m.observe(lifecycle_event("policy-loaded", "x", policy={"sha256": "aaa"}))
    m.observe(lifecycle_event("policy-reloaded", "x", policy={"sha256": "bbb"}))
    m.observe(lifecycle_event("policy-reload-failed", "x", outcome="failure", policy={"sha256": "bbb"}))
    assert value(m, "tollgate_policy_info", sha256="bbb") == 1
    assert value(m, "tollgate_policy_info", sha256="aaa") == 0
    assert value(m, "tollgate_policy_reloads_total", result="success") == 1
    assert value(m, "tollgate_policy_reloads_total", result="failure") == 1
    assert b"tollgate_decisions_total{" not in m.render()
