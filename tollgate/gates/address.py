"""Address gate: parse IP literals in every spelling, classify addresses, resolve names.

The proxy resolves names itself and connects to the address it checked (DNS pinning), so
a name cannot resolve to a public address for the check and a private one for the connect.
Pure logic apart from ``resolve``; no mitmproxy.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
import socket
from typing import Iterable, Sequence

from tollgate.policy.model import IPAddress, NetworkSettings

# Legacy IPv4 spellings (127.1, 0x7f000001, 0177.0.0.1, 2130706433) are made only of
# numbers in decimal, octal or hex, separated by dots. Anything else is a name.
_NUMERIC_V4 = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$", re.IGNORECASE)
# No real top-level domain is numeric: a name ending in a number is an IPv4 attempt (WHATWG URL).
_NUMERIC_LAST_LABEL = re.compile(r"(^|\.)(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


class AddressRefusal(str, enum.Enum):
    PROXY_SELF = "proxy_self"
    LOOPBACK = "loopback"
    PRIVATE = "private"
    LINK_LOCAL = "link_local"
    METADATA = "metadata"
    CGNAT = "cgnat"
    UNSPECIFIED = "unspecified"
    BROADCAST = "broadcast"
    MULTICAST = "multicast"
    RESERVED = "reserved"
    IPV4_MAPPED = "ipv4_mapped"
    NAT64 = "nat64"
    SIX_TO_FOUR = "6to4"
    TEREDO = "teredo"


_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_6TO4 = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address if ``host`` is an IP literal in any spelling, None if it is a name.

    Raises ValueError for a literal that is malformed (all-numeric but out of range) or
    carries an IPv6 zone id.
    """
    text = host.strip()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        if "%" in text:
            raise ValueError(f"IPv6 zone ids are not allowed: {host!r}")
        try:
            ip6 = ipaddress.IPv6Address(text)
        except ValueError:
            raise ValueError(f"invalid IPv6 literal {host!r}") from None
        return ip6.ipv4_mapped or ip6  # [::ffff:127.0.0.1] is 127.0.0.1
    if not _NUMERIC_V4.match(text):
        if _NUMERIC_LAST_LABEL.search(text):
            raise ValueError(f"invalid IP literal {host!r}")
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        raise ValueError(f"invalid IP literal {host!r}") from None


def embedded_ipv4(ip: IPAddress) -> tuple[ipaddress.IPv4Address, AddressRefusal] | None:
    """The IPv4 address an IPv6 address carries, with the refusal used if it is refused."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, AddressRefusal.IPV4_MAPPED
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), AddressRefusal.NAT64
    if ip in _6TO4 and ip.sixtofour is not None:
        return ip.sixtofour, AddressRefusal.SIX_TO_FOUR
    if ip in _TEREDO and ip.teredo is not None:
        return ip.teredo[1], AddressRefusal.TEREDO
    return None


def _classify(ip: IPAddress) -> AddressRefusal | None:
    """Why deny_private refuses this address, or None when it is an ordinary public one."""
    if ip in _METADATA:
        return AddressRefusal.METADATA
    if ip.is_loopback:
        return AddressRefusal.LOOPBACK
    if ip.is_unspecified or (ip.version == 4 and ip in _THIS_NETWORK):
        return AddressRefusal.UNSPECIFIED
    if ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255"):
        return AddressRefusal.BROADCAST
    if ip.is_multicast:
        return AddressRefusal.MULTICAST
    if ip.is_link_local:
        return AddressRefusal.LINK_LOCAL
    if ip.version == 4 and ip in _CGNAT:
        return AddressRefusal.CGNAT
    if ip.is_private and (ip.version == 6 and ip in ipaddress.ip_network("fc00::/7")
                          or ip.version == 4 and any(ip in n for n in _RFC1918)):
        return AddressRefusal.PRIVATE
    if not ip.is_global:
        return AddressRefusal.RESERVED
    return None


_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


def refusal_reason(ip: IPAddress, port: int, network: NetworkSettings,
                   own_endpoints: Iterable[tuple[IPAddress | None, int]] = ()) -> AddressRefusal | None:
    """None when the proxy may connect to ip:port, else the reason it may not.

    Order: the proxy's own listening endpoint (never exempt), then ``allow_cidrs``
    exemptions, then, with ``deny_private``, the address classes; an IPv6 address that
    embeds a refused IPv4 is refused with the IPv6-specific reason.
    """
    plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    for own_ip, own_port in own_endpoints:
        if own_port == port and (own_ip is None or own_ip in (ip, plain)):
            return AddressRefusal.PROXY_SELF
    embedded = embedded_ipv4(ip)
    candidates = [ip] + ([embedded[0]] if embedded else [])
    if any(c.version == net.version and c in net for c in candidates for net in network.allow_cidrs):
        return None
    if not network.deny_private:
        return None
    if embedded:
        inner, reason = embedded
        if _classify(inner) is not None:
            return reason
        if reason is AddressRefusal.IPV4_MAPPED:
            return None  # ::ffff:8.8.8.8 is 8.8.8.8
    return _classify(ip)


def choose_address(addresses: Sequence[IPAddress], port: int, network: NetworkSettings,
                   own_endpoints: Iterable[tuple[IPAddress | None, int]] = ()
                   ) -> tuple[IPAddress | None, list[tuple[IPAddress, AddressRefusal]]]:
    """The first allowed address in resolver order, and every refused one with its reason."""
    own = list(own_endpoints)
    refused: list[tuple[IPAddress, AddressRefusal]] = []
    for ip in addresses:
        reason = refusal_reason(ip, port, network, own)
        if reason is None:
            return ip, refused
        refused.append((ip, reason))
    return None, refused


class ResolveError(Exception):
    """The name cannot be resolved."""


async def resolve(host: str, port: int, network: NetworkSettings, timeout: float = 5.0) -> tuple[IPAddress, ...]:
    """Addresses for a normalised host: IP literal, then static overrides, then the system resolver."""
    literal = parse_ip_literal(host)
    if literal is not None:
        return (literal,)
    if host in network.resolve:
        return network.resolve[host]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
    except asyncio.TimeoutError:
        raise ResolveError(f"resolving {host} timed out after {timeout:g}s") from None
    except (socket.gaierror, UnicodeError) as e:
        raise ResolveError(f"cannot resolve {host}: {getattr(e, 'strerror', None) or e}") from None
    seen: dict[IPAddress, None] = {}
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0].split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        seen.setdefault(ip, None)
    if not seen:
        raise ResolveError(f"cannot resolve {host}: no addresses")
    return tuple(seen)
