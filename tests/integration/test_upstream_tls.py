"""Upstream certificates are always verified; every failure is a JSON 502 and an audit event."""

from __future__ import annotations

import base64
import os
import ssl

import pytest

from tests.support.clients import curl
from tests.support.pki import TestPKI
from tests.support.proxy import tollgate_run
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration

CASES = ["good", "selfsigned", "expired", "wrongname", "untrusted", "pin-leaf", "pin-ca", "pin-bad"]


@pytest.fixture(scope="module")
def tlsenv(pki, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upstream-tls")
    stranger = TestPKI(tmp / "stranger", name="Some Other CA")
    certs = {
        "good": pki.issue(["good.test"]),
        "selfsigned": pki.self_signed(["selfsigned.test"]),
        "expired": pki.expired(["expired.test"]),
        "wrongname": pki.issue(["someone-else.test"]),
        "untrusted": stranger.issue(["untrusted.test"]),
        "pin-leaf": pki.issue(["pin-leaf.test"]),
        "pin-ca": pki.issue(["pin-ca.test"]),
        "pin-bad": pki.issue(["pin-bad.test"]),
    }
    servers = {name: Upstream.start(cert=c, key=k) for name, (c, k) in certs.items()}
    pins = {
        "pin-leaf": TestPKI.spki_pin(certs["pin-leaf"][0]),
        "pin-ca": TestPKI.spki_pin(pki.ca_cert_path),
        "pin-bad": "sha256/" + base64.b64encode(os.urandom(32)).decode(),
    }
    lines = ["version: 1", "clients: [{name: ops, cidrs: [127.0.0.1/32]}]", "destinations:"]
    for name, server in servers.items():
        entry = f"  - {{host: {name}.test, ports: [{server.port}], clients: [ops], mode: intercept"
        lines.append(entry + (f", pins: ['{pins[name]}']}}" if name in pins else "}"))
    lines += ["network:", "  allow_cidrs: [127.0.0.1/32]", "  resolve:"]
    lines += [f"    {name}.test: 127.0.0.1" for name in servers]
    lines += ["upstream:", f"  extra_ca_files: [{pki.ca_cert_path}]"]
    policy = tmp / "policy.yaml"
    policy.write_text("\n".join(lines) + "\n")
    proxy = tollgate_run(tmp, policy).start()
    yield proxy, servers
    proxy.stop()
    for server in servers.values():
        server.stop()


def fetch(tlsenv, name: str):
    proxy, servers = tlsenv
    return curl(f"https://{name}.test:{servers[name].port}/", proxy=proxy.url, cacert=proxy.root_ca)


@pytest.mark.parametrize("name", ["good", "pin-leaf", "pin-ca"])
def test_valid_upstreams_pass(tlsenv, name):
    r = fetch(tlsenv, name)
    assert r.status == 200, r.stderr


@pytest.mark.parametrize("name, reason, detail", [
    ("selfsigned", "upstream_certificate_invalid", "self-signed certificate"),
    ("expired", "upstream_certificate_invalid", "certificate has expired"),
    ("wrongname", "upstream_certificate_invalid", "hostname mismatch"),
    ("untrusted", "upstream_certificate_invalid", "unable to get local issuer certificate"),
    ("pin-bad", "upstream_pin_mismatch", "pins"),
])
def test_bad_upstream_certificates_give_json_502(tlsenv, name, reason, detail):
    proxy, servers = tlsenv
    servers[name].clear()
    mark = proxy.mark()
    r = fetch(tlsenv, name)
    assert r.status == 502, r.stderr
    body = r.json()
    assert body["reason"] == reason
    assert detail.lower() in body["message"].lower()
    assert not servers[name].requests  # no request ever reached it
    failure = next(e for e in proxy.events_since(mark) if e["event"]["action"] == "upstream-tls-failed")
    assert failure["event"]["reason"] == reason
    leaf = failure["tls"]["server"]["x509"]
    assert leaf["public_key_sha256"].startswith("sha256/")
    assert leaf["not_after"] and leaf["issuer"]["distinguished_name"] and leaf["subject"]["distinguished_name"]
    if name == "wrongname":
        assert "someone-else.test" in leaf["subject"]["distinguished_name"]


def test_upstream_below_min_tls_version_fails(pki, tmp_path):
    cert, key = pki.issue(["old.test"])
    server = Upstream.start(cert=cert, key=key, tls_versions=(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2))
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""version: 1
clients: [{{name: ops, cidrs: [127.0.0.1/32]}}]
destinations: [{{host: old.test, ports: [{server.port}], clients: [ops], mode: intercept}}]
network: {{allow_cidrs: [127.0.0.1/32], resolve: {{old.test: 127.0.0.1}}}}
upstream: {{extra_ca_files: [{pki.ca_cert_path}], min_tls_version: "1.3"}}
""")
    proxy = tollgate_run(tmp_path, policy).start()
    try:
        r = curl(f"https://old.test:{server.port}/", proxy=proxy.url, cacert=proxy.root_ca)
        assert r.status == 502
        assert r.json()["reason"] == "upstream_tls_failed"
        assert not server.requests
    finally:
        proxy.stop()
        server.stop()
