from __future__ import annotations

import pytest

from tollgate.gates.client import identify_client
from tollgate.policy.loader import parse_policy

POLICY = parse_policy(b"""
version: 1
clients:
  - {name: wide, cidrs: [10.0.0.0/8]}
  - {name: narrow, cidrs: [10.20.1.0/24]}
  - {name: notify, cidrs: [10.20.2.15/32], users: [notify-worker]}
  - {name: v6, cidrs: ["2001:db8::/32"]}
destinations: []
""")


@pytest.mark.parametrize("ip, user, expected", [
    ("10.20.1.7", None, "narrow"),  # most specific CIDR wins
    ("10.9.9.9", None, "wide"),
    ("::ffff:10.20.1.7", None, "narrow"),  # IPv4-mapped source on a dual-stack socket
    ("2001:db8::5", None, "v6"),
    ("192.0.2.1", None, None),
    ("192.0.2.1", "notify-worker", "notify"),  # a verified proxy-auth user
    ("10.20.1.7", "notify-worker", "notify"),  # a mapped user wins over the address
    ("192.0.2.1", "someone-else", None),
])
def test_identify_client(ip, user, expected):
    group = identify_client(POLICY, ip, user)
    assert (group.name if group else None) == expected
