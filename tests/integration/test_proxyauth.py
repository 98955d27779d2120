"""A verified proxy-auth user mapped in `users:` identifies the client; an unverified one never does."""

from __future__ import annotations

import pytest

from tests.integration.conftest import POLICY_TEMPLATE, write_policy
from tests.support.clients import connect_tunnel, curl
from tests.support.proxy import tollgate_run

pytestmark = pytest.mark.integration

# "worker" may reach other.test only as the proxy-auth user, from any address.
AUTH_POLICY = POLICY_TEMPLATE.replace("""  - name: other
    cidrs: [127.0.0.2/32]""", """  - name: other
    cidrs: [127.0.0.2/32]
    users: [worker]""")


@pytest.fixture(scope="module")
def authproxy(env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    policy = write_policy(tmp / "policy.yaml", env.pki, env.tls, env.h2, env.plain, tmp / "a.jsonl", AUTH_POLICY)
    proxy = tollgate_run(tmp, policy, "--proxyauth", "worker:correct-horse").start()
    yield proxy
    proxy.stop()


def test_mapped_user_identifies_the_client(env, authproxy):
    url = f"https://other.test:{env.tls.port}/as-worker"
    r = curl(url, proxy=authproxy.url, cacert=authproxy.root_ca, args=("--proxy-user", "worker:correct-horse"))
    assert r.status == 200, r.stderr
    event = [e for e in authproxy.events() if e["event"]["action"] == "connection-allowed"][-1]
    assert event["tollgate"]["client"] == "other"
    assert event["user"]["name"] == "worker"
    assert "correct-horse" not in authproxy.audit_path.read_text()
    assert "correct-horse" not in authproxy.output()


def test_wrong_password_gets_407_and_no_identity(env, authproxy):
    sock, status, _, _ = connect_tunnel(authproxy.port, f"other.test:{env.tls.port}",
                                        extra_headers="Proxy-Authorization: Basic d29ya2VyOndyb25n\r\n")  # worker:wrong
    sock.close()
    assert status == 407


def test_credentials_are_required_from_every_client_once_enabled(env, authproxy):
    # mitmproxy's proxyauth demands credentials from everyone once it is on.
    sock, status, _, _ = connect_tunnel(authproxy.port, f"api.allowed.test:{env.tls.port}")
    sock.close()
    assert status == 407
