"""scripts/install-ca.sh against a temporary root per distribution family, and the
argument handling and PASS/FAIL logic of scripts/check-egress.sh against a tiny loopback
stand-in for the proxy. The machine's own trust store is never touched: every run passes
--root with a temporary directory, and the update tools are stubs inside it."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_CA = REPO / "scripts" / "install-ca.sh"
CHECK_EGRESS = REPO / "scripts" / "check-egress.sh"
BASH = shutil.which("bash") or "/bin/bash"

# family -> (os-release, installed path, stub update tool path, expected stub arguments)
FAMILIES = {
    "debian": ("ID=debian\n", "usr/local/share/ca-certificates/tollgate-root-ca.crt",
               "usr/sbin/update-ca-certificates", ""),
    "rhel": ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', "etc/pki/ca-trust/source/anchors/tollgate-root-ca.pem",
             "usr/bin/update-ca-trust", "extract"),
    "alpine": ("ID=alpine\n", "usr/local/share/ca-certificates/tollgate-root-ca.crt",
               "usr/sbin/update-ca-certificates", ""),
}
PROFILE = "etc/profile.d/tollgate-root-ca.sh"


def install(root: Path, *args: str, cert: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [BASH, str(INSTALL_CA), "--root", str(root)]
    if cert:
        cmd += ["--cert", str(cert)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def cert(tmp_path) -> Path:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=test", "-keyout", str(tmp_path / "k"), "-out", str(tmp_path / "c")],
                   check=True, capture_output=True)
    return tmp_path / "c"


def make_root(tmp_path: Path, family: str, os_release: str | None = None) -> Path:
    release, _, stub_path, _ = FAMILIES[family]
    root = tmp_path / f"root-{family}"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text(os_release if os_release is not None else release)
    stub = root / stub_path
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text(f'#!/bin/sh\necho "$0 $*" >> "{root}/update.log"\n')
    stub.chmod(0o755)
    return root


def updates(root: Path) -> list[str]:
    log = root / "update.log"
    return log.read_text().splitlines() if log.exists() else []


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- install-ca.sh ----------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_install_is_idempotent_and_uninstall_removes(tmp_path, cert, family):
    root = make_root(tmp_path, family)
    _, path, stub_path, stub_args = FAMILIES[family]
    target = root / path

    first = install(root, cert=cert)
    assert first.returncode == 0, first.stderr
    assert target.read_bytes() == cert.read_bytes()
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert updates(root) == [f"{root / stub_path} {stub_args}".rstrip() if stub_args else f"{root / stub_path} "]
    assert all(line.startswith("install-ca:") for line in first.stdout.splitlines())
    assert not list(target.parent.glob("*.tmp.*"))

    again = install(root, cert=cert)
    assert again.returncode == 0, again.stderr
    assert "already installed" in again.stdout
    assert len(updates(root)) == 1  # the store is not rebuilt for nothing

    removed = install(root, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not target.exists()
    assert len(updates(root)) == 2

    absent = install(root, "--uninstall")
    assert absent.returncode == 0 and "not installed" in absent.stdout
    assert len(updates(root)) == 2


@pytest.mark.parametrize("family", list(FAMILIES))
def test_explicit_family_overrides_os_release(tmp_path, cert, family):
    root = make_root(tmp_path, family, os_release="ID=plan9\n")
    done = install(root, "--family", family, cert=cert)
    assert done.returncode == 0, done.stderr
    assert (root / FAMILIES[family][1]).read_bytes() == cert.read_bytes()


def test_ubuntu_and_id_like_detection(tmp_path, cert):
    root = make_root(tmp_path, "debian", os_release='NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n')
    assert install(root, cert=cert).returncode == 0
    assert (root / FAMILIES["debian"][1]).exists()
    fedora = make_root(tmp_path, "rhel", os_release="ID=fedora\n")
    assert install(fedora, cert=cert).returncode == 0
    assert (fedora / FAMILIES["rhel"][1]).exists()


def test_a_changed_certificate_is_replaced(tmp_path, cert):
    root = make_root(tmp_path, "debian")
    assert install(root, cert=cert).returncode == 0
    other = tmp_path / "other"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=rotated", "-keyout", str(tmp_path / "k2"), "-out", str(other)],
                   check=True, capture_output=True)
    done = install(root, cert=other)
    assert done.returncode == 0 and "already installed" not in done.stdout
    assert (root / FAMILIES["debian"][1]).read_bytes() == other.read_bytes()
    assert len(updates(root)) == 2


def test_dry_run_changes_nothing(tmp_path, cert):
    root = make_root(tmp_path, "debian")
    before = snapshot(root)
    done = install(root, "--dry-run", "--python", "--node", cert=cert)
    assert done.returncode == 0, done.stderr
    assert "would run" in done.stdout and "would write" in done.stdout
    assert snapshot(root) == before
    assert not (root / "etc" / "profile.d").exists()
    assert updates(root) == []

    # Installed for real, a dry-run uninstall also leaves everything in place.
    assert install(root, "--python", cert=cert).returncode == 0
    before = snapshot(root)
    dry_remove = install(root, "--uninstall", "--dry-run")
    assert dry_remove.returncode == 0, dry_remove.stderr
    assert "would run: rm" in dry_remove.stdout
    assert snapshot(root) == before


def test_python_and_node_write_and_remove_the_profile(tmp_path, cert):
    root = make_root(tmp_path, "rhel")
    done = install(root, "--python", "--node", cert=cert)
    assert done.returncode == 0, done.stderr
    profile = (root / PROFILE).read_text()
    assert "export REQUESTS_CA_BUNDLE=/etc/pki/tls/certs/ca-bundle.crt" in profile
    assert "export SSL_CERT_FILE=/etc/pki/tls/certs/ca-bundle.crt" in profile
    assert "export NODE_EXTRA_CA_CERTS=/etc/pki/ca-trust/source/anchors/tollgate-root-ca.pem" in profile
    assert str(root) not in profile  # paths as seen from inside the root
    assert "NODE_EXTRA_CA_CERTS=/etc/pki/ca-trust/source/anchors/tollgate-root-ca.pem" in done.stdout
    assert "REQUESTS_CA_BUNDLE" in done.stdout
    # The profile is valid shell.
    subprocess.run(["sh", "-n", str(root / PROFILE)], check=True)

    assert install(root, "--uninstall").returncode == 0
    assert not (root / PROFILE).exists()


def test_node_only_profile_on_debian(tmp_path, cert):
    root = make_root(tmp_path, "debian")
    assert install(root, "--node", cert=cert).returncode == 0
    profile = (root / PROFILE).read_text()
    assert "NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/tollgate-root-ca.crt" in profile
    assert "REQUESTS_CA_BUNDLE" not in profile
    again = install(root, "--node", cert=cert)
    assert "already installed" in again.stdout and "already up to date" in again.stdout


def test_refuses_a_private_key(tmp_path, cert):
    root = make_root(tmp_path, "debian")
    with_key = tmp_path / "bundle.pem"
    with_key.write_bytes(cert.read_bytes() + (tmp_path / "k").read_bytes())
    refused = install(root, cert=with_key)
    assert refused.returncode != 0 and "private key" in refused.stderr
    only_key = install(root, cert=tmp_path / "k")
    assert only_key.returncode != 0 and "private key" in only_key.stderr
    assert not (root / FAMILIES["debian"][1]).exists()
    assert updates(root) == []


def test_refuses_what_is_not_a_pem_certificate(tmp_path, cert):
    root = make_root(tmp_path, "debian")
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    assert install(root, cert=junk).returncode != 0
    der = tmp_path / "c.der"
    subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER", "-out", str(der)], check=True)
    refused = install(root, cert=der)
    assert refused.returncode != 0 and "not a PEM certificate" in refused.stderr
    missing = install(root, cert=tmp_path / "nope.pem")
    assert missing.returncode != 0 and "not found" in missing.stderr
    assert not (root / "usr" / "local" / "share" / "ca-certificates").exists()


def test_unknown_distribution_exits_2(tmp_path, cert):
    root = make_root(tmp_path, "debian", os_release='ID=plan9\nID_LIKE="bell-labs"\n')
    unknown = install(root, cert=cert)
    assert unknown.returncode == 2
    assert "unsupported distribution 'plan9'" in unknown.stderr and "--family" in unknown.stderr
    (root / "etc" / "os-release").unlink()
    missing = install(root, cert=cert)
    assert missing.returncode == 2 and "os-release" in missing.stderr
    bad_family = install(root, "--family", "gentoo", cert=cert)
    assert bad_family.returncode == 2 and "gentoo" in bad_family.stderr


def test_os_release_is_read_not_executed(tmp_path, cert):
    marker = tmp_path / "executed"
    root = make_root(tmp_path, "debian", os_release=f"ID=debian\ntouch {marker}\n")
    assert install(root, cert=cert).returncode == 0
    assert not marker.exists()


def test_argument_errors(tmp_path, cert):
    root = make_root(tmp_path, "debian")
    for args in (["--bogus"], ["--cert"], ["--name", "../../etc/evil"], ["--name", ".hidden"]):
        done = install(root, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert "install-ca: error:" in done.stderr
    assert install(tmp_path / "no-such-root").returncode == 2
    helped = subprocess.run(["bash", str(INSTALL_CA), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--uninstall" in helped.stdout


def test_custom_name(tmp_path, cert):
    root = make_root(tmp_path, "alpine")
    assert install(root, "--name", "corp-proxy", cert=cert).returncode == 0
    assert (root / "usr/local/share/ca-certificates/corp-proxy.crt").read_bytes() == cert.read_bytes()
    assert install(root, "--name", "corp-proxy", "--uninstall").returncode == 0
    assert not (root / "usr/local/share/ca-certificates/corp-proxy.crt").exists()


def test_without_a_stub_the_update_tool_is_only_printed(tmp_path, cert):
    root = make_root(tmp_path, "debian")
    shutil.rmtree(root / "usr" / "sbin")
    done = install(root, cert=cert)
    assert done.returncode == 0, done.stderr
    assert "would run: update-ca-certificates" in done.stdout
    assert (root / FAMILIES["debian"][1]).exists()


def test_java_missing_keytool_is_a_warning(tmp_path, cert):
    root = make_root(tmp_path, "debian")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("openssl", "sed", "tr", "tail", "cut", "cmp", "cp", "mv", "chmod", "mkdir", "rm", "dirname",
                 "grep", "id", "cat"):
        found = shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(found)
    done = install(root, "--java", cert=cert, env={"PATH": str(bindir)})
    assert done.returncode == 0, done.stderr
    assert "keytool not found" in done.stderr
    assert (root / FAMILIES["debian"][1]).exists()


@pytest.mark.skipif(shutil.which("keytool") is None, reason="keytool not installed")
def test_java_import_and_remove(tmp_path, cert):
    root = make_root(tmp_path, "debian")
    store = tmp_path / "cacerts"
    # A trust store that already holds some other certificate.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=other", "-keyout", str(tmp_path / "ok"), "-out", str(tmp_path / "oc")],
                   check=True, capture_output=True)
    subprocess.run(["keytool", "-importcert", "-noprompt", "-alias", "other", "-file", str(tmp_path / "oc"),
                    "-keystore", str(store), "-storepass", "changeit"], check=True, capture_output=True)
    env = {"JAVA_CACERTS": str(store)}

    def aliases() -> str:
        return subprocess.run(["keytool", "-list", "-keystore", str(store), "-storepass", "changeit"],
                              capture_output=True, text=True, check=True).stdout

    done = install(root, "--java", cert=cert, env=env)
    assert done.returncode == 0, done.stderr
    assert "tollgate-root-ca" in aliases()
    again = install(root, "--java", cert=cert, env=env)
    assert "already in the Java trust store" in again.stdout
    assert install(root, "--java", "--uninstall", env=env).returncode == 0
    listing = aliases()
    assert "tollgate-root-ca" not in listing and "other" in listing


# ---- check-egress.sh --------------------------------------------------------------------

def check_egress(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    return subprocess.run(["bash", str(CHECK_EGRESS), *args], capture_output=True, text=True, timeout=90, env=env)


def test_check_egress_help():
    done = check_egress("--help")
    assert done.returncode == 0
    assert "--proxy" in done.stdout and "--allowed" in done.stdout and "--denied" in done.stdout


@pytest.mark.parametrize("args", [
    [],
    ["--proxy", "http://127.0.0.1:1"],
    ["--proxy", "http://127.0.0.1:1", "--allowed", "https://a.test/"],
    ["--proxy"],
    ["--proxy", "http://127.0.0.1:1", "--allowed", "https://a.test/", "--denied"],
    ["--bogus"],
    ["--proxy", "127.0.0.1:1", "--allowed", "https://a.test/", "--denied", "https://b.test/"],
    ["--proxy", "http://127.0.0.1:1", "--allowed", "a.test", "--denied", "https://b.test/"],
    ["--proxy", "http://127.0.0.1:1", "--allowed", "https://a.test/", "--denied", "https://b.test/",
     "--cacert", "/nonexistent/ca.pem"],
])
def test_check_egress_argument_errors(args):
    done = check_egress(*args)
    assert done.returncode == 2, done
    assert "Usage" in done.stderr or "--proxy HOST" in done.stderr or "--proxy http://HOST:PORT" in done.stderr
    assert "check-egress:" in done.stderr


class _FakeProxy(http.server.BaseHTTPRequestHandler):
    """Answers absolute-form requests like a forward proxy: 'denied' URLs get Tollgate's
    403, 'upstream403' URLs a 403 without the Tollgate header, anything else 200."""

    def do_GET(self):  # noqa: N802
        if "denied" in self.path:
            status, headers = 403, {"X-Tollgate-Decision": "destination_not_allowed"}
        elif "upstream403" in self.path:
            status, headers = 403, {}
        else:
            status, headers = 200, {}
        body = b"ok\n"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_proxy():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeProxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_egress_pass_and_fail_against_a_stand_in_proxy(fake_proxy):
    unreachable = f"http://127.0.0.1:{closed_port()}/allowed"
    ok = check_egress("--proxy", fake_proxy, "--allowed", unreachable, "--denied", "http://denied.test/",
                      "--expect-direct-blocked")
    assert ok.returncode == 0, ok.stdout
    assert "PASS  allowed" in ok.stdout and "PASS  direct" in ok.stdout
    assert "X-Tollgate-Decision: destination_not_allowed" in ok.stdout

    skipped = check_egress("--proxy", fake_proxy, "--allowed", unreachable, "--denied", "http://denied.test/")
    assert skipped.returncode == 0 and "SKIP  direct" in skipped.stdout

    # The "denied" URL is let through: reported.
    wrong = check_egress("--proxy", fake_proxy, "--allowed", unreachable, "--denied", "http://fine.test/")
    assert wrong.returncode == 1 and "FAIL  denied" in wrong.stdout

    # A 403 from somewhere other than Tollgate does not count.
    upstream = check_egress("--proxy", fake_proxy, "--allowed", unreachable, "--denied", "http://upstream403.test/")
    assert upstream.returncode == 1 and "without X-Tollgate-Decision" in upstream.stdout

    # The "allowed" URL is refused by Tollgate: reported with the decision.
    refused = check_egress("--proxy", fake_proxy, "--allowed", "http://denied.test/x", "--denied", "http://denied.test/")
    assert refused.returncode == 1 and "FAIL  allowed" in refused.stdout and "destination_not_allowed" in refused.stdout

    # The allowed URL is reachable directly, bypassing the proxy.
    bypass = check_egress("--proxy", fake_proxy, "--allowed", f"{fake_proxy}/allowed", "--denied", "http://denied.test/",
                          "--expect-direct-blocked")
    assert bypass.returncode == 1 and "FAIL  direct" in bypass.stdout


def test_check_egress_proxy_down(tmp_path):
    proxy = f"http://127.0.0.1:{closed_port()}"
    done = check_egress("--proxy", proxy, "--allowed", "http://a.test/", "--denied", "http://denied.test/")
    assert done.returncode == 1
    assert "FAIL  allowed" in done.stdout and "FAIL  denied" in done.stdout
