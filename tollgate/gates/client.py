"""Client gate: which client group a connection belongs to.

Identity comes only from the socket's source address or a proxy-auth user that mitmproxy
has already verified; request headers such as X-Forwarded-For never count.
"""

from __future__ import annotations

import ipaddress

from tollgate.policy.model import ClientGroup, IPAddress, Policy


def unmap(ip: IPAddress) -> IPAddress:
    """::ffff:10.0.0.1 (an IPv4 client on a dual-stack socket) is 10.0.0.1."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def identify_client(policy: Policy, source_ip: str | IPAddress, user: str | None = None) -> ClientGroup | None:
    """The client group for a connection, or None if it matches none.

    A verified proxy-auth user mapped in ``users:`` wins; otherwise the most specific CIDR
    containing the source address (first in file order on a tie).
    """
    if user:
        for group in policy.clients:
            if user in group.users:
                return group
    ip = unmap(ipaddress.ip_address(source_ip))
    best: tuple[int, ClientGroup] | None = None
    for group in policy.clients:
        for net in group.cidrs:
            if ip.version == net.version and ip in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, group)
    return best[1] if best else None
