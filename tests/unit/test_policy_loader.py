"""Policy loading: the example loads; each broken fixture gives its error at file:line."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from tollgate.policy.loader import PolicyError, load_policy, parse_policy

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "policies"
# A copy of DESIGN's shared/policy-example.yaml: the format contract must always load.
CONTRACT_EXAMPLE = DATA / "contract-example.yaml"


def test_example_policy_loads_every_key():
    policy = load_policy(REPO / "policies" / "example.yaml")
    assert [c.name for c in policy.clients] == ["payments", "notify", "ops"]
    stripe = policy.destinations[0]
    assert (stripe.rule_id, stripe.mode, stripe.ports, stripe.clients) == ("api.stripe.com", "intercept", (443,), frozenset({"payments"}))
    assert stripe.pins == ("sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",)
    assert stripe.dlp_allow == {"payment_card", "stripe_secret_key"}
    assert stripe.line == 35
    wildcard = policy.destinations[1]
    assert (wildcard.host, wildcard.wildcard) == ("notifications.example.net", True)
    slack = next(d for d in policy.destinations if d.rule_id == "hooks.slack.com")
    assert slack.clients is None and slack.mode == "passthrough"
    settlement = next(d for d in policy.destinations if d.cidr is not None)
    assert settlement.cidr == ipaddress.ip_network("203.0.113.10/32") and settlement.ports == (8443,)
    assert policy.dlp.detectors["email"].action == "report" and policy.dlp.detectors["email"].block_at == 25
    assert policy.dlp.detectors["jwt"].action == "report"
    assert policy.dlp.custom[0].id == "internal_case_reference"
    assert policy.network.resolve == {"settlement.internal.example": (ipaddress.ip_address("10.30.0.5"),)}
    assert policy.upstream.min_tls_version == "1.2"
    assert policy.audit.path == "var/audit/audit.jsonl"
    assert len(policy.sha256) == 64


def test_contract_example_from_design_loads():
    policy = load_policy(CONTRACT_EXAMPLE)
    assert {d.rule_id for d in policy.destinations} == {
        "api.stripe.com", "*.notifications.example.net", "hooks.slack.com", "203.0.113.10/32"}


@pytest.mark.parametrize("fixture, expected", [
    ("unknown_key.yaml", [":6: proxy: unknown key 'proxy'"]),
    ("wrong_type.yaml", [":4: clients[0].cidrs: Input should be a valid list (got '127.0.0.1/32')",
                         ":7: destinations[0].ports[0]: Input should be a valid integer (got 'https')"]),
    ("bad_cidr.yaml", [":4: clients[0].cidrs: '10.20.1.5/24' has host bits set; did you mean '10.20.1.0/24'?",
                       ":6: clients[1].cidrs: '10.300.0.0/16' is not a valid CIDR"]),
    ("duplicate_client.yaml", [":5: clients[1].name: duplicate client name 'ops'"]),
    ("unknown_client_ref.yaml", [":7: destinations[0].clients[1]: unknown client 'payments'; defined clients: ops"]),
    ("duplicate_key.yaml", [":9: destinations[0].mode: duplicate key 'mode' (first at line 8)"]),
    ("yaml_syntax.yaml", [":5: YAML syntax error"]),
    ("missing_mode.yaml", [":6: destinations[0].mode: missing required key 'mode'"]),
    ("unknown_detector.yaml", [":8: dlp.detectors.credit_card: unknown detector 'credit_card'"]),
    ("star_mixed.yaml", [":7: destinations[0].clients: '*' means every client; do not mix it with client names"]),
    ("host_and_cidr.yaml", [":6: destinations[0]: a destination needs exactly one of 'host' or 'cidr'"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_broken_policy_reports_file_line_and_fix(fixture, expected):
    with pytest.raises(PolicyError) as err:
        load_policy(DATA / fixture)
    text = str(err.value)
    for fragment in expected:
        assert f"{DATA / fixture}{fragment}" in text, text


@pytest.mark.parametrize("pattern, fragment", [
    ("'*'", "a bare wildcard would allow every host"),
    ("'*.'", "a bare wildcard would allow every host"),
    ("a.*.b", "'*' is only allowed as the whole first label"),
    ("'*foo.com'", "use '*.foo.com'"),
    ("'*.com'", "at least two labels"),
    ("'*.*.example.com'", "only one leading '*.'"),
    ("api.example.com.", "remove the trailing dot"),
    ("bad_-.example.com", "invalid label"),
    ("xn--zz.example.com", "invalid punycode"),
])
def test_bad_host_patterns(pattern, fragment):
    text = f"version: 1\nclients: [{{name: a, cidrs: [127.0.0.1/32]}}]\ndestinations:\n  - host: {pattern}\n    clients: [a]\n    mode: intercept\n"
    with pytest.raises(PolicyError) as err:
        parse_policy(text.encode(), "p.yaml")
    assert str(err.value).startswith("p.yaml:4: destinations[0].host: ")
    assert fragment in str(err.value)


def test_every_error_is_reported_in_one_pass():
    text = b"version: 2\nclients: []\ndestinations:\n  - host: '*'\n    clients: '*'\n    mode: x\n"
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.yaml")
    assert [i.line for i in err.value.issues] == [1, 4, 6]


def test_unreadable_file_and_empty_file(tmp_path):
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(PolicyError, match="the policy file is empty"):
        load_policy(tmp_path / "empty.yaml")


def test_idn_entries_are_normalised_and_unquoted_tls_version_accepted():
    text = ("version: 1\nclients: [{name: a, cidrs: ['::1/128']}]\ndestinations:\n"
            "  - {host: 'Bücher.Example', clients: '*', mode: passthrough}\nupstream: {min_tls_version: 1.3}\n")
    policy = parse_policy(text.encode())
    assert policy.destinations[0].host == "xn--bcher-kva.example"
    assert policy.upstream.min_tls_version == "1.3"


def test_file_copy_keeps_line_numbers(tmp_path):
    target = tmp_path / "copy.yaml"
    shutil.copy(DATA / "unknown_key.yaml", target)
    with pytest.raises(PolicyError, match=r"copy.yaml:6: proxy"):
        load_policy(target)


def test_large_bodies_defaults_and_stream_settings():
    base = b"version: 1\nclients: [{name: a, cidrs: [127.0.0.1/32]}]\ndestinations: []\n"
    default = parse_policy(base).dlp
    assert (default.large_bodies, default.largest_body_bytes) == ("block", default.max_body_bytes)
    stream = parse_policy(base + b"dlp: {large_bodies: stream, max_body_bytes: 1000, stream_max_bytes: 50000}\n").dlp
    assert (stream.large_bodies, stream.largest_body_bytes) == ("stream", 50000)
    with pytest.raises(PolicyError) as err:
        parse_policy(base + b"dlp:\n  large_bodies: stream\n  max_body_bytes: 1000\n  stream_max_bytes: 10\n", "p.yaml")
    assert str(err.value) == "p.yaml:4: dlp: stream_max_bytes (10) is below max_body_bytes (1000)"
    with pytest.raises(PolicyError, match="large_bodies"):
        parse_policy(base + b"dlp: {large_bodies: spool}\n")
