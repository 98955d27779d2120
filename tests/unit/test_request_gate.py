from __future__ import annotations

import pytest

from tollgate.gates.decision import Reason
from tollgate.gates.request import check_authorities, check_sni, split_authority


@pytest.mark.parametrize("hosts, authority, reason", [
    (["api.example.com"], None, None),
    (["API.example.com.:443"], None, None),
    ([], "api.example.com:443", None),
    ([], None, None),
    (["evil.com"], None, Reason.HOST_MISMATCH),
    (["api.example.com:8443"], None, Reason.HOST_MISMATCH),
    (["api.example.com"], "evil.com", Reason.HOST_MISMATCH),
    (["api.example.com", "api.example.com"], None, Reason.DUPLICATE_HOST),
    (["api.example.com:x"], None, Reason.HOST_MISMATCH),
    (["10.0.0.1"], None, Reason.HOST_MISMATCH),
])
def test_check_authorities(hosts, authority, reason):
    result = check_authorities("api.example.com", 443, hosts, authority)
    assert (result.reason if result else None) is reason


def test_ip_destination_accepts_other_spellings_of_itself():
    assert check_authorities("127.0.0.1", 443, ["127.1:443"], None) is None
    assert check_authorities("::1", 443, ["[::1]:443"], None) is None


@pytest.mark.parametrize("sni, passthrough, is_ip, reason", [
    ("api.example.com", False, False, None),
    ("API.example.com", True, False, None),
    ("other.example.com", False, False, Reason.SNI_MISMATCH),
    (None, False, False, None),
    (None, True, False, Reason.SNI_MISSING),
    (None, False, True, None),
])
def test_check_sni(sni, passthrough, is_ip, reason):
    result = check_sni("api.example.com", sni, passthrough=passthrough, is_ip=is_ip)
    assert (result.reason if result else None) is reason


@pytest.mark.parametrize("value, expected", [
    ("h", ("h", None)), ("h:1", ("h", 1)), ("[::1]:443", ("::1", 443)), ("[::1]", ("::1", None)),
])
def test_split_authority(value, expected):
    assert split_authority(value) == expected


@pytest.mark.parametrize("value", ["", ":443", "h:0", "h:99999", "[::1", "[::1]x", "h:-1"])
def test_split_authority_rejects(value):
    with pytest.raises(ValueError):
        split_authority(value)
