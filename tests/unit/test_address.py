"""The address gate's pure logic: IP spellings, refused classes, choice, resolution."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from tollgate.gates.address import AddressRefusal as R
from tollgate.gates.address import ResolveError, choose_address, parse_ip_literal, refusal_reason, resolve
from tollgate.policy.model import NetworkSettings

ip = ipaddress.ip_address
DENY = NetworkSettings()


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"), ("10.1", "10.0.0.1"), ("0x7f000001", "127.0.0.1"),
    ("0x7f.0.0.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("2130706433", "127.0.0.1"),
    ("169.254.169.254.", "169.254.169.254"), ("::1", "::1"), ("[::1]", "::1"),
    ("[::ffff:127.0.0.1]", "127.0.0.1"), ("::ffff:7f00:1", "127.0.0.1"),
    ("beef.cafe", None), ("1password.com", None), ("123.example", None), ("a1.example", None), ("example.com", None),
])
def test_parse_ip_literal(text, expected):
    parsed = parse_ip_literal(text)
    assert (str(parsed) if parsed else None) == expected


@pytest.mark.parametrize("text", ["256.1.1.1.1", "example.123", "4294967296", "fe80::1%eth0", "[::g]", "1.2.3.999"])
def test_parse_ip_literal_rejects_malformed(text):
    with pytest.raises(ValueError):
        parse_ip_literal(text)


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", R.LOOPBACK), ("::1", R.LOOPBACK), ("10.0.0.1", R.PRIVATE), ("172.16.0.1", R.PRIVATE),
    ("192.168.0.1", R.PRIVATE), ("fc00::1", R.PRIVATE), ("169.254.169.254", R.METADATA),
    ("fd00:ec2::254", R.METADATA), ("169.254.1.1", R.LINK_LOCAL), ("fe80::1", R.LINK_LOCAL),
    ("100.64.0.1", R.CGNAT), ("100.127.255.254", R.CGNAT), ("100.63.255.254", None), ("100.128.0.1", None),
    ("0.0.0.0", R.UNSPECIFIED), ("::", R.UNSPECIFIED), ("255.255.255.255", R.BROADCAST),
    ("224.0.0.1", R.MULTICAST), ("ff02::2", R.MULTICAST), ("240.0.0.1", R.RESERVED), ("203.0.113.10", R.RESERVED),
    ("64:ff9b::a00:1", R.NAT64), ("2002:a00:1::1", R.SIX_TO_FOUR),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", R.TEREDO),  # Teredo embedding 10.0.0.1
    ("8.8.8.8", None), ("2606:4700:4700::1111", None), ("64:ff9b::808:808", None),
])
def test_refusal_classes(address, reason):
    assert refusal_reason(ip(address), 443, DENY) == reason


def test_allow_cidrs_exempt_but_never_the_proxy_itself():
    network = NetworkSettings(allow_cidrs=(ipaddress.ip_network("127.0.0.0/8"),))
    assert refusal_reason(ip("127.0.0.1"), 443, network) is None
    assert refusal_reason(ip("127.0.0.1"), 8080, network, [(ip("127.0.0.1"), 8080)]) == R.PROXY_SELF
    assert refusal_reason(ip("10.1.2.3"), 8080, network, [(None, 8080)]) == R.PROXY_SELF  # listening on 0.0.0.0
    assert refusal_reason(ip("127.0.0.1"), 8081, network, [(ip("127.0.0.1"), 8080)]) is None


def test_deny_private_false_allows_everything_but_the_proxy():
    network = NetworkSettings(deny_private=False)
    assert refusal_reason(ip("10.0.0.1"), 443, network) is None
    assert refusal_reason(ip("10.0.0.1"), 3128, network, [(ip("10.0.0.1"), 3128)]) == R.PROXY_SELF


def test_choose_address_keeps_order_and_skips_refused():
    chosen, refused = choose_address([ip("10.0.0.1"), ip("8.8.8.8"), ip("1.1.1.1")], 443, DENY)
    assert chosen == ip("8.8.8.8")
    assert refused == [(ip("10.0.0.1"), R.PRIVATE)]
    chosen, refused = choose_address([ip("10.0.0.1"), ip("169.254.169.254")], 443, DENY)
    assert chosen is None and [r for _, r in refused] == [R.PRIVATE, R.METADATA]


def test_resolve_uses_overrides_without_dns(monkeypatch):
    network = NetworkSettings(resolve={"api.example.com": (ip("192.0.2.7"),)})

    async def no_dns(*args, **kwargs):
        raise AssertionError("DNS must not be used")

    async def run():
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_dns)
        return await resolve("api.example.com", 443, network), await resolve("0x7f000001", 443, network)

    assert asyncio.run(run()) == ((ip("192.0.2.7"),), (ip("127.0.0.1"),))


def test_resolve_timeout_and_failure(monkeypatch):
    async def slow(*args, **kwargs):
        await asyncio.sleep(5)

    async def fails(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def run(fake):
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake)
        return await resolve("nowhere.example", 443, DENY, timeout=0.05)

    with pytest.raises(ResolveError, match="timed out"):
        asyncio.run(run(slow))
    with pytest.raises(ResolveError, match="Name or service not known"):
        asyncio.run(run(fails))


def test_resolve_system_resolver_for_localhost():
    # /etc/hosts: no network traffic.
    addresses = asyncio.run(resolve("localhost", 443, DENY))
    assert addresses and all(a.is_loopback for a in addresses)
