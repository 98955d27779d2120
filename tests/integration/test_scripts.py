"""scripts/install-ca.sh against a temporary root per distribution family, and
scripts/check-egress.sh against a real proxy. The machine's own trust store is never touched."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.proxy import REPO

pytestmark = pytest.mark.integration

FAMILIES = {
    "debian": ("ID=debian\n", "usr/local/share/ca-certificates/tollgate-root-ca.crt", "update-ca-certificates"),
    "ubuntu": ("ID=ubuntu\nID_LIKE=debian\n", "usr/local/share/ca-certificates/tollgate-root-ca.crt", "update-ca-certificates"),
    "rhel": ("ID=rocky\nID_LIKE=\"rhel centos fedora\"\n", "etc/pki/ca-trust/source/anchors/tollgate-root-ca.pem", "update-ca-trust"),
    "alpine": ("ID=alpine\n", "usr/local/share/ca-certificates/tollgate-root-ca.crt", "update-ca-certificates"),
}


def install(root: Path, *args: str, cert: Path | None = None) -> subprocess.CompletedProcess:
    cmd = ["bash", str(REPO / "scripts" / "install-ca.sh"), "--root", str(root)]
    if cert:
        cmd += ["--cert", str(cert)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60)


@pytest.fixture
def cert(tmp_path) -> Path:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=Tollgate test root", "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem")],
                   check=True, capture_output=True)
    return tmp_path / "c.pem"


def make_root(tmp_path: Path, family: str) -> Path:
    os_release, _, tool = FAMILIES[family]
    root = tmp_path / f"root-{family}"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text(os_release)
    stub = root / "usr" / "sbin" / tool
    stub.parent.mkdir(parents=True)
    stub.write_text(f'#!/bin/sh\necho "$0 $*" >> "{root}/update.log"\n')
    stub.chmod(0o755)
    return root


def updates(root: Path) -> list[str]:
    log = root / "update.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("family", list(FAMILIES))
def test_install_is_idempotent_and_uninstall_removes(tmp_path, cert, family):
    root = make_root(tmp_path, family)
    target = root / FAMILIES[family][1]
    first = install(root, cert=cert)
    assert first.returncode == 0, first.stderr
    assert target.read_bytes() == cert.read_bytes()
    assert len(updates(root)) == 1
    if family == "rhel":
        assert updates(root)[0].endswith("update-ca-trust extract")
    again = install(root, cert=cert)
    assert again.returncode == 0 and "already installed" in again.stdout
    assert len(updates(root)) == 1  # the store is not rebuilt for nothing
    removed = install(root, "--uninstall")
    assert removed.returncode == 0
    assert not target.exists() and len(updates(root)) == 2
    assert "not installed" in install(root, "--uninstall").stdout


def test_dry_run_changes_nothing(tmp_path, cert):
    root = make_root(tmp_path, "debian")
    done = install(root, "--dry-run", "--python", "--node", cert=cert)
    assert done.returncode == 0 and "would run" in done.stdout
    assert not (root / FAMILIES["debian"][1]).exists()
    assert not (root / "etc" / "profile.d").exists()
    assert updates(root) == []


def test_python_and_node_profile(tmp_path, cert):
    root = make_root(tmp_path, "rhel")
    assert install(root, "--python", "--node", cert=cert).returncode == 0
    profile = (root / "etc" / "profile.d" / "tollgate-root-ca.sh").read_text()
    assert "REQUESTS_CA_BUNDLE=/etc/pki/tls/certs/ca-bundle.crt" in profile
    assert "NODE_EXTRA_CA_CERTS=/etc/pki/ca-trust/source/anchors/tollgate-root-ca.pem" in profile
    assert install(root, "--uninstall").returncode == 0
    assert not (root / "etc" / "profile.d" / "tollgate-root-ca.sh").exists()


def test_refuses_a_private_key_and_unknown_distributions(tmp_path, cert):
    root = make_root(tmp_path, "debian")
    with_key = tmp_path / "bundle.pem"
    with_key.write_bytes(cert.read_bytes() + (tmp_path / "k.pem").read_bytes())
    refused = install(root, cert=with_key)
    assert refused.returncode == 2 and "private key" in refused.stderr
    assert not (root / FAMILIES["debian"][1]).exists()
    (root / "etc" / "os-release").write_text("ID=plan9\n")
    unknown = install(root, cert=cert)
    assert unknown.returncode == 2 and "unsupported distribution 'plan9'" in unknown.stderr


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
