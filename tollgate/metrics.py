"""Prometheus metrics, derived from the audit events the proxy writes anyway: every decision
is counted where it is recorded, so the numbers and the log cannot disagree. No mitmproxy."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter("tollgate_decisions", "Audited decisions by stage, action and outcome",
                                 ["stage", "action", "outcome", "reason"], registry=r)
        self.findings = Counter("tollgate_dlp_findings", "DLP findings by detector and the action taken",
                                ["detector", "action"], registry=r)
        self.upstream_tls = Counter("tollgate_upstream_tls_failures", "Upstream TLS failures by reason",
                                    ["reason"], registry=r)
        self.request_seconds = Histogram("tollgate_request_duration_seconds",
                                         "From the request's first byte to the response's last, by result",
                                         ["result"], buckets=LATENCY_BUCKETS, registry=r)
        self.scan_seconds = Histogram("tollgate_dlp_scan_seconds", "Time to inspect one request body",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.policy = Gauge("tollgate_policy_info", "The policy in force (value 1), by content hash",
                            ["sha256"], registry=r)
        self.reloads = Counter("tollgate_policy_reloads", "Policy reloads by result", ["result"], registry=r)
        self.audit_errors = Counter("tollgate_audit_write_errors", "Audit events that could not be written",
                                    registry=r)
        # Read when scraped (set_function): what the proxy holds now, so growth shows.
        self.in_flight = Gauge("tollgate_requests_in_flight", "Requests received and not yet answered or failed",
                               registry=r)
        self.connections = Gauge("tollgate_client_connections", "Client connections the proxy keeps state for",
                                 registry=r)
        self._policy_sha: str | None = None

    def observe(self, event: dict[str, Any]) -> None:
        ev, tg = event.get("event", {}), event.get("tollgate", {})
        action = ev.get("action", "")
        if action == "policy-reloaded":
            self.reloads.labels("success").inc()
        elif action == "policy-reload-failed":
            self.reloads.labels("failure").inc()
        if action in ("policy-loaded", "policy-reloaded"):
            self.set_policy(tg.get("policy", {}).get("sha256", ""))
        if "configuration" in ev.get("category", []):
            return
        self.decisions.labels(tg.get("stage", ""), action, ev.get("outcome", ""), ev.get("reason", "")).inc()
        if action == "upstream-tls-failed":
            self.upstream_tls.labels(ev.get("reason", "")).inc()
        for f in tg.get("dlp", {}).get("findings", []) if isinstance(tg.get("dlp"), dict) else []:
            self.findings.labels(f.get("detector", ""), f.get("action", "")).inc()

    def set_policy(self, sha256: str) -> None:
        if self._policy_sha is not None:
            self.policy.remove(self._policy_sha)
        self._policy_sha = sha256
        self.policy.labels(sha256).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
