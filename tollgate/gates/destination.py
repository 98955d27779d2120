"""Destination gate: is this client allowed to reach host:port, and under which entry?

Precedence, in one place: an exact host entry beats a wildcard entry, a longer wildcard
suffix beats a shorter one, and file order breaks ties. Among the entries that match the
name, the first one allowing both the port and the client decides. IP-literal
destinations only ever match ``cidr:`` entries, never a host entry.
"""

from __future__ import annotations

from tollgate.gates.address import parse_ip_literal
from tollgate.gates.decision import Decision, Reason
from tollgate.policy.hosts import HostError, display_host, host_matches, normalize_host
from tollgate.policy.model import ClientGroup, Destination, Policy


def decide_destination(policy: Policy, client: ClientGroup | None, host: str, port: int) -> Decision:
    """``client`` None: an unknown client, only asked in report-only mode; no client-list entry admits it."""
    try:
        ip = parse_ip_literal(host)
    except ValueError as e:
        return Decision(Reason.INVALID_DESTINATION, f"invalid destination: {e}", client=client)
    if ip is not None:
        candidates = [d for d in policy.destinations if d.cidr is not None and ip.version == d.cidr.version and ip in d.cidr]
        shown = str(ip)
        if not candidates:
            return Decision(Reason.IP_LITERAL_NOT_ALLOWED,
                            f"{shown} is an IP address that no 'cidr:' entry lists", client=client)
    else:
        try:
            name = normalize_host(host)
        except HostError as e:
            return Decision(Reason.INVALID_DESTINATION, f"invalid destination: {e}", client=client)
        candidates = sorted(
            (d for d in policy.destinations if d.host is not None and host_matches(name, d.host, d.wildcard)),
            key=lambda d: (d.wildcard, -len(d.host or "")),
        )
        shown = display_host(name)
        if not candidates:
            return Decision(Reason.DESTINATION_NOT_ALLOWED, f"{shown} is not on the allowlist", client=client)
    return _pick(candidates, client, shown, port)


def _pick(candidates: list[Destination], client: ClientGroup | None, shown: str, port: int) -> Decision:
    port_ok = [d for d in candidates if port in d.ports]
    if not port_ok:
        ports = sorted({p for d in candidates for p in d.ports})
        return Decision(Reason.PORT_NOT_ALLOWED,
                        f"port {port} is not allowed for {shown} (allowed: {', '.join(map(str, ports))})",
                        rule=candidates[0], client=client)
    for d in port_ok:
        if d.clients is None or (client is not None and client.name in d.clients):
            return Decision(Reason.ALLOWED, f"{shown}:{port} allowed by {d.rule_id}", rule=d, client=client)
    who = f"client {client.name!r}" if client else "an unknown client"
    return Decision(Reason.CLIENT_NOT_ALLOWED, f"{who} may not reach {shown}:{port}", rule=port_ok[0], client=client)
