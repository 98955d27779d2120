"""scripts/check-egress.sh against a real Tollgate (install-ca.sh: test_install_ca.py)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.proxy import REPO

pytestmark = pytest.mark.integration


def check_egress(*args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "check-egress.sh"), *args], capture_output=True, text=True,
                          timeout=90, env={**os.environ, **(extra_env or {})})


def test_check_egress_passes_and_fails_for_real(env):
    allowed = f"https://api.allowed.test:{env.tls.port}/"
    denied = f"https://unlisted.test:{env.tls.port}/"
    ok = check_egress("--proxy", env.proxy.url, "--allowed", allowed, "--denied", denied, "--cacert", str(env.proxy.root_ca))
    assert ok.returncode == 0, ok.stdout
    assert "X-Tollgate-Decision: destination_not_allowed" in ok.stdout
    # Without the Tollgate CA trusted, the allowed check fails and says what to do.
    untrusted = check_egress("--proxy", env.proxy.url, "--allowed", allowed, "--denied", denied,
                             "--cacert", str(env.pki.ca_cert_path))
    assert untrusted.returncode == 1
    assert "FAIL  allowed" in untrusted.stdout and "install-ca.sh" in untrusted.stdout
    # A "denied" URL that is actually allowed is reported.
    wrong = check_egress("--proxy", env.proxy.url, "--allowed", allowed, "--denied", allowed, "--cacert", str(env.proxy.root_ca))
    assert wrong.returncode == 1 and "FAIL  denied" in wrong.stdout


def test_check_egress_usage():
    done = check_egress("--proxy", "http://127.0.0.1:1")
    assert done.returncode == 2 and "required" in done.stderr
