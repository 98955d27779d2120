from __future__ import annotations

import pytest

from tollgate.mitm.hardening import review_options


def test_unsafe_defaults_are_forced():
    changes, errors = review_options({"rawtcp": True, "upstream_cert": True, "ssl_insecure": True, "onboarding": True})
    assert changes == {"rawtcp": False, "upstream_cert": False, "ssl_insecure": False, "onboarding": False}
    assert errors == []


@pytest.mark.parametrize("option, value", [
    ("ignore_hosts", ["^example\\.com:"]), ("allow_hosts", ["x"]), ("tcp_hosts", [".*"]),
    ("stream_large_bodies", "1m"), ("map_remote", ["|a|b"]), ("modify_body", ["|a|b"]),
])
def test_bypassing_options_stop_startup(option, value):
    _, errors = review_options({option: value})
    assert len(errors) == 1 and option in errors[0]


@pytest.mark.parametrize("mode", ["transparent", "socks5", "upstream:http://x:1", "reverse:https://x", "wireguard"])
def test_only_regular_mode(mode):
    _, errors = review_options({"mode": [mode]})
    assert errors and "regular" in errors[0]


def test_safe_options_pass():
    assert review_options({"mode": ["regular"], "ignore_hosts": [], "rawtcp": False}) == ({}, [])
