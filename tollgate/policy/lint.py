"""Lint rules for a policy that loads: what still deserves a reviewer's attention. Pure.

Each finding is (severity, rule, line, message). Errors are things that must not ship
(an allowlist entry for 0.0.0.0/0); warnings are rot and risk (expired reviews, wildcards
over multi-tenant suffixes, wide CIDRs, shadowed entries, rules that can never apply).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from importlib import resources

from tollgate.policy.model import Destination, Policy

WIDE_V4, WIDE_V6 = 24, 48


@dataclass(frozen=True)
class LintFinding:
    severity: str  # "error" | "warning"
    rule: str
    line: int
    message: str

    def as_dict(self) -> dict:
        return {"severity": self.severity, "rule": self.rule, "line": self.line, "message": self.message}


def shared_suffixes() -> frozenset[str]:
    text = resources.files("tollgate.policy").joinpath("shared_suffixes.txt").read_text()
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def lint(policy: Policy, today: datetime.date | None = None) -> list[LintFinding]:
    today = today or datetime.date.today()
    out: list[LintFinding] = []
    shared = shared_suffixes()
    if policy.mode == "report":
        out.append(LintFinding("warning", "report-only", 1, "mode: report: nothing is enforced; every refusal is only "
                               "audited as a would-deny. Switch to enforce once the audit log looks right"))
    for d in policy.destinations:
        missing = [k for k in ("owner", "justification", "review_by") if getattr(d, k) in (None, "")]
        if missing:
            out.append(LintFinding("warning", "missing-metadata", d.line, f"{d.rule_id}: no {', '.join(missing)}"))
        if d.review_by and d.review_by < today:
            out.append(LintFinding("warning", "review-expired", d.line,
                                   f"{d.rule_id}: review_by {d.review_by} has passed; review the entry or remove it"))
        if d.wildcard and d.host:
            covered = sorted(s for s in shared if s == d.host or s.endswith("." + d.host))
            if covered:
                out.append(LintFinding("warning", "shared-suffix-wildcard", d.line,
                                       f"{d.rule_id} covers the multi-tenant suffix {covered[0]}: anyone can host a "
                                       f"name there; list the exact names instead"))
        if d.cidr is not None:
            out.extend(_cidr(d.cidr, d.line, f"destination {d.rule_id}"))
        if d.enforcement == "report":
            out.append(LintFinding("warning", "report-only", d.line,
                                   f"{d.rule_id}: enforcement: report: its refusals are only audited"))
        if d.mode == "passthrough" and d.dlp_allow:
            out.append(LintFinding("warning", "passthrough-dlp", d.line,
                                   f"{d.rule_id}: dlp settings can never apply to a passthrough destination"))
    for c in policy.clients:
        for net in c.cidrs:
            out.extend(_cidr(net, c.line, f"client {c.name}"))
    referenced = {name for d in policy.destinations if d.clients for name in d.clients}
    if not any(d.clients is None for d in policy.destinations):
        for c in policy.clients:
            if c.name not in referenced:
                out.append(LintFinding("warning", "unused-client", c.line, f"client {c.name!r} is never referenced"))
    out.extend(_shadowed(policy.destinations))
    out.extend(_stream_redactions(policy))
    return sorted(out, key=lambda f: (f.line, f.rule))


def _stream_redactions(policy: Policy) -> list[LintFinding]:
    """With large_bodies: stream, a body over max_body_bytes cannot be redacted, only blocked."""
    dlp = policy.dlp
    if dlp.large_bodies != "stream":
        return []
    redacting = sorted({k for k, s in dlp.detectors.items() if s.action == "redact"} |
                       {c.id for c in dlp.custom if c.action == "redact"} |
                       ({"default_action"} if dlp.default_action == "redact" else set()))
    if not redacting:
        return []
    return [LintFinding("warning", "stream-redact", 1,
                        f"dlp.large_bodies: stream: in a body over max_body_bytes ({dlp.max_body_bytes} bytes) "
                        f"{', '.join(redacting)} cannot be redacted and blocks the request instead")]


def _cidr(net, line: int, what: str) -> list[LintFinding]:
    if net.prefixlen == 0:
        return [LintFinding("error", "cidr-everything", line, f"{what}: {net} matches every address")]
    limit = WIDE_V4 if net.version == 4 else WIDE_V6
    if net.prefixlen < limit:
        return [LintFinding("warning", "wide-cidr", line, f"{what}: {net} is wider than /{limit}")]
    return []


def _key(d: Destination) -> tuple:
    return (d.host, d.wildcard, str(d.cidr) if d.cidr else None)


def _shadowed(destinations: tuple[Destination, ...]) -> list[LintFinding]:
    """An entry every one of whose (port, client) pairs an earlier entry for the same name decides."""
    out = []
    for i, d in enumerate(destinations):
        for earlier in destinations[:i]:
            if _key(earlier) != _key(d):
                continue
            same = set(d.ports) <= set(earlier.ports) and (earlier.clients is None or (
                d.clients is not None and d.clients <= earlier.clients))
            if same:
                kind = "duplicate" if (d.ports, d.clients, d.mode) == (earlier.ports, earlier.clients, earlier.mode) \
                    else "shadowed"
                out.append(LintFinding("warning", kind, d.line,
                                       f"{d.rule_id}: never decides anything; the entry at line {earlier.line} "
                                       f"already covers its ports and clients"))
                break
    return out
