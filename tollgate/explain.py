"""What the proxy would decide for one request, stage by stage, without running it. Pure
apart from name resolution; uses the same gates and DLP code as the addon."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tollgate.dlp.engine import Engine
from tollgate.dlp.inspect import RequestFacts, inspect_request
from tollgate.gates.address import ResolveError, choose_address, resolve
from tollgate.gates.client import identify_client
from tollgate.gates.destination import decide_destination
from tollgate.gates.request import check_authorities
from tollgate.policy.model import Policy

_EXPLAIN_KEY = b"tollgate-policy-test"  # fingerprints here only group findings; they are not the proxy's


@dataclass
class Step:
    stage: str
    outcome: str  # "pass", "deny", or a DLP action
    detail: str


@dataclass
class Explanation:
    decision: str  # "allow", "deny", "block", "redact", "report", "uninspectable"
    reason: str
    rule: str | None = None
    steps: list[Step] = field(default_factory=list)
    findings: list[dict] = field(default_factory=list)
    report_only: bool = False  # the policy decides this, but report-only mode lets the traffic pass

    def as_dict(self) -> dict:
        return {"decision": self.decision, "reason": self.reason, "rule": self.rule, "report_only": self.report_only,
                "steps": [s.__dict__ for s in self.steps], "findings": self.findings}


def explain(policy: Policy, client_ip: str, url: str, *, user: str | None = None, method: str = "GET",
            headers: list[tuple[str, str]] | None = None, body: bytes = b"", resolve_names: bool = True) -> Explanation:
    """The decision the policy takes; with report-only mode (``report_only`` in the result) the
    proxy would audit a refusal as a would-deny and let the traffic pass."""
    headers = list(headers or [])
    steps: list[Step] = []
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    client = identify_client(policy, client_ip, user)
    if client is None:
        steps.append(Step("client", "deny", f"{client_ip} matches no client"))
        return Explanation("deny", "client_unknown", steps=steps, report_only=policy.mode == "report")
    steps.append(Step("client", "pass", f"client {client.name!r}"))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    decision = decide_destination(policy, client, parts.hostname, port)
    rule = decision.rule.rule_id if decision.rule else None
    if not decision.allowed:
        steps.append(Step("destination", "deny", decision.message))
        return Explanation("deny", decision.reason.value, rule, steps, report_only=policy.report_only(decision.rule))
    steps.append(Step("destination", "pass", f"{decision.message} (mode {decision.rule.mode}, line {decision.rule.line})"))
    report_only = policy.report_only(decision.rule)
    if resolve_names:
        try:
            addresses = asyncio.run(resolve(parts.hostname.lower().rstrip("."), port, policy.network))
        except ResolveError as e:
            steps.append(Step("address", "deny", str(e)))
            return Explanation("deny", "resolve_failed", rule, steps)
        ip, refused = choose_address(addresses, port, policy.network)
        if ip is None:
            reasons = ", ".join(f"{a} {r.value}" for a, r in refused)
            steps.append(Step("address", "deny", f"only refused addresses: {reasons}"))
            return Explanation("deny", "address_refused", rule, steps)
        steps.append(Step("address", "pass", f"connects to {ip}"))
    host_headers = [v for k, v in headers if k.lower() == "host"]
    refusal = check_authorities(parts.hostname, port, host_headers, None)
    if refusal:
        steps.append(Step("request", "deny", refusal.message))
        return Explanation("deny", refusal.reason.value, rule, steps)
    if decision.rule.mode == "passthrough" and parts.scheme == "https":
        steps.append(Step("dlp", "pass", "passthrough: the tunnel is not decrypted, nothing is scanned"))
        return Explanation("allow", "allowed", rule, steps)
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    encoding = next((v for k, v in headers if k.lower() == "content-encoding"), "")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    outcome = inspect_request(Engine.for_policy(policy.dlp), policy.dlp, _EXPLAIN_KEY, RequestFacts(
        path, headers, body, encoding, content_type, parts.hostname.lower().rstrip("."), decision.rule),
        report_only=report_only)
    if outcome.action == "uninspectable":
        action = "deny" if policy.dlp.uninspectable == "block" else "allow"
        steps.append(Step("dlp", "uninspectable", f"{outcome.uninspectable}: {outcome.message}"))
        return Explanation("uninspectable" if action == "deny" else "allow", outcome.uninspectable or "", rule, steps,
                           report_only=report_only and action == "deny")
    # The policy's decision is what it would do enforced; `would` is set when report-only kept it from biting.
    action = outcome.would or outcome.action
    findings = [{k: f.get(k) for k in ("detector", "where", "action", "would", "why", "preview") if f.get(k)}
                for f in outcome.findings]
    steps.append(Step("dlp", action, ", ".join(f"{f['detector']} → {f.get('would', f['action'])}" for f in findings)
                      or "no findings"))
    reason = {"block": "dlp_blocked", "redact": "dlp_redacted", "report": "dlp_reported"}.get(action, "allowed")
    return Explanation(action, reason, rule, steps, findings, outcome.would is not None)
