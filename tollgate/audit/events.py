"""Builders for audit events with ECS field names. Pure: no I/O, no mitmproxy.

Nothing here may carry a raw secret: URLs keep query parameter names but not their
values, and userinfo is dropped.
"""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from tollgate.gates.decision import Decision


def new_incident_id() -> str:
    """Time-ordered, unguessable: 'tg-<unix seconds hex>-<8 random hex>'."""
    return f"tg-{int(time.time()):x}-{secrets.token_hex(4)}"


def redact_url(url: str) -> str:
    """Drop userinfo and query values: https://u:p@h/p?a=1&b=2 → https://h/p?a=&b=."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.hostname or ""
    if parts.hostname and ":" in parts.hostname:
        netloc = f"[{parts.hostname}]"
    try:
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:
        pass
    query = "&".join(f"{k}=" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def decision_event(
    action: str,
    decision: Decision,
    *,
    stage: str,
    source: tuple[str, int] | None,
    user: str | None = None,
    host: str | None = None,
    port: int | None = None,
    ip: str | None = None,
    url: str | None = None,
    method: str | None = None,
    incident: str | None = None,
    extra: dict[str, Any] | None = None,
    enforced: bool = True,
) -> dict[str, Any]:
    """One decision as an ECS event. ``action`` is e.g. 'connection-denied'.

    ``enforced=False``: report-only mode let the traffic pass although ``decision`` refuses it
    (a would-deny): the outcome is success and ``tollgate.enforcement`` says "report"."""
    event: dict[str, Any] = {
        "event": {
            "kind": "event",
            "category": ["network"],
            "action": action,
            "outcome": "success" if decision.allowed or not enforced else "failure",
            "reason": decision.reason.value,
        },
        "message": decision.message,
        "tollgate": {"stage": stage} if enforced else {"stage": stage, "enforcement": "report"},
    }
    if source:
        event["source"] = {"ip": source[0], "port": source[1]}
    if user:
        event["user"] = {"name": user}
    if decision.client:
        event["tollgate"]["client"] = decision.client.name
    destination: dict[str, Any] = {}
    if host:
        destination["domain" if not _is_ip(host) else "ip"] = host
    if ip:
        destination["ip"] = ip
    if port:
        destination["port"] = port
    if destination:
        event["destination"] = destination
    if url:
        event["url"] = {"full": redact_url(url)}
    if method:
        event["http"] = {"request": {"method": method}}
    if decision.rule:
        event["rule"] = {"id": decision.rule.rule_id, "name": f"line {decision.rule.line}" if decision.rule.line else decision.rule.rule_id}
        event["tollgate"]["mode"] = decision.rule.mode
    if incident:
        event["tollgate"]["incident"] = incident
    if extra:
        event["tollgate"].update(extra)
    return event


def lifecycle_event(action: str, message: str, outcome: str = "success", **tollgate: Any) -> dict[str, Any]:
    """Proxy started/stopped, policy loaded or reloaded: not tied to a connection."""
    return {
        "event": {"kind": "event", "category": ["configuration"], "action": action, "outcome": outcome},
        "message": message,
        "tollgate": tollgate,
    }


def _is_ip(host: str) -> bool:
    from tollgate.gates.address import parse_ip_literal

    try:
        return parse_ip_literal(host) is not None
    except ValueError:
        return False
