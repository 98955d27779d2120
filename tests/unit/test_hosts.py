from __future__ import annotations

import pytest

from tollgate.policy.hosts import HostError, host_matches, normalize_host, parse_host_pattern


@pytest.mark.parametrize("raw, expected", [
    ("api.example.com", "api.example.com"),
    ("API.Example.COM", "api.example.com"),
    ("api.example.com.", "api.example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
    ("foo_bar.example.com", "foo_bar.example.com"),
    ("тест.example.com", "xn--e1aybc.example.com"),
])
def test_normalize_host(raw, expected):
    assert normalize_host(raw) == expected


@pytest.mark.parametrize("raw", ["", ".", "a..b", "-a.example", "a b.example", "x" * 64 + ".example", "a/b"])
def test_normalize_host_rejects(raw):
    with pytest.raises(HostError):
        normalize_host(raw)


@pytest.mark.parametrize("pattern, host, matches", [
    ("api.example.com", "api.example.com", True),
    ("api.example.com", "x.api.example.com", False),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "example.com", False),  # never the apex
    ("*.example.com", "notexample.com", False),  # suffix confusion
    ("*.example.com", "evilexample.com", False),
    ("example.com", "evilexample.com", False),
    ("*.github.com", "notgithub.com", False),
    ("apі.example.com", "api.example.com", False),  # Cyrillic і homoglyph
])
def test_pattern_matching(pattern, host, matches):
    name, wildcard = parse_host_pattern(pattern)
    assert host_matches(normalize_host(host), name, wildcard) is matches
