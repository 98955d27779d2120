"""Fixtures for integration tests: a test PKI, real TLS and plain upstreams on loopback,
a policy written for them, and a real Tollgate process in front.

Test host names resolve only through the policy's ``network.resolve`` overrides; the
proxy never needs /etc/hosts or a DNS server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.pki import TestPKI
from tests.support.proxy import ProxyProcess, tollgate_run
from tests.support.upstream import Upstream

# Every test name, all served by the same loopback upstream.
TLS_NAMES = [
    "api.allowed.test", "x.wild.test", "deep.x.wild.test", "wild.test", "xn--bcher-kva.test",
    "other.test", "passthrough.test", "unlisted.test", "h2.allowed.test", "xn--caf-dma.test", "rebind.test", "boom-connect.test", "boom-request.test", "boom-upstream.test",
]
POLICY_TEMPLATE = """\
version: 1
clients:
  - name: ops
    cidrs: [127.0.0.1/32]
  - name: other
    cidrs: [127.0.0.2/32]
destinations:
  - host: api.allowed.test
    ports: [{tls}]
    clients: [ops]
    mode: intercept
  - host: h2.allowed.test
    ports: [{h2}]
    clients: [ops]
    mode: intercept
  - host: "*.wild.test"
    ports: [{tls}]
    clients: "*"
    mode: intercept
  - host: bücher.test
    ports: [{tls}]
    clients: [ops]
    mode: intercept
  - host: xn--caf-dma.test
    ports: [{tls}]
    clients: [ops]
    mode: intercept
  - host: other.test
    ports: [{tls}]
    clients: [other]
    mode: intercept
  - host: passthrough.test
    ports: [{tls}]
    clients: "*"
    mode: passthrough
  - cidr: 127.0.0.1/32
    ports: [{tls}]
    clients: [ops]
    mode: intercept
  - host: plain.test
    ports: [{plain}]
    clients: [ops]
    mode: intercept
network:
  allow_cidrs: [127.0.0.0/8]
  resolve:
{resolve}
upstream:
  extra_ca_files: [{ca}]
audit:
  path: {audit}
"""


@dataclass
class Env:
    pki: TestPKI
    tls: Upstream  # HTTP/1.1 over TLS, every TLS_NAMES name
    h2: Upstream  # HTTP/2 over TLS
    plain: Upstream  # plain HTTP
    policy: Path
    proxy: ProxyProcess


def write_policy(path: Path, pki: TestPKI, tls: Upstream, h2: Upstream, plain: Upstream, audit: Path,
                 template: str = POLICY_TEMPLATE) -> Path:
    names = TLS_NAMES + ["plain.test"]
    resolve = "\n".join(f"    {n}: 127.0.0.1" for n in names)
    path.write_text(template.format(tls=tls.port, h2=h2.port, plain=plain.port, resolve=resolve,
                                    ca=pki.ca_cert_path, audit=audit), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI):
    cert, key = pki.issue(dns=TLS_NAMES, ips=["127.0.0.1"])
    tls = Upstream.start(cert=cert, key=key)
    h2 = Upstream.start(cert=cert, key=key, http2=True)
    plain = Upstream.start()
    tmp = tmp_path_factory.mktemp("proxy")
    policy = write_policy(tmp / "policy.yaml", pki, tls, h2, plain, tmp / "unused-audit.jsonl")
    proxy = tollgate_run(tmp, policy).start()
    try:
        yield Env(pki, tls, h2, plain, policy, proxy)
    finally:
        proxy.stop()
        for server in (tls, h2, plain):
            server.stop()


@pytest.fixture
def fresh(env: Env) -> Env:
    """The shared env with the upstreams' records cleared."""
    for server in (env.tls, env.h2, env.plain):
        server.clear()
    return env
