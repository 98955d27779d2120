"""The local CA with real TLS clients that trust only the root: constraints, renewal,
rotation, export, passphrases, permissions."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from tests.support.clients import curl
from tests.support.proxy import BIN, REPO, tollgate_run
from tollgate.tls import ca

pytestmark = pytest.mark.integration

SCOPE = ca.NameScope(dns=("api.allowed.test", "*.wild.test"))


def tollgate_ca(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "tollgate"), "ca", *args], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, **(env or {})})


def sign_leaf(ca_dir: Path, name: str, tmp: Path) -> Path:
    """A leaf signed by the intermediate the proxy uses (as mitmproxy would sign one)."""
    pem = (ca_dir / ca.MITMPROXY_CA).read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    intermediate = x509.load_pem_x509_certificate((ca_dir / ca.INTERMEDIATE_CERT).read_bytes())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(intermediate.subject).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    chain = tmp / f"{name}.chain.pem"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + intermediate.public_bytes(serialization.Encoding.PEM))
    key_path = tmp / f"{name}.key"
    key_path.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return chain, key_path


def serve_once(chain: Path, key: Path) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(chain), str(key))
    server = socket.create_server(("127.0.0.1", 0))

    def run():
        for _ in range(2):  # one curl, one Python client
            conn, _ = server.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1024)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except (ssl.SSLError, OSError):
                pass
        server.close()

    threading.Thread(target=run, daemon=True).start()
    return server.getsockname()[1]


@pytest.mark.parametrize("name, valid", [("api.allowed.test", True), ("x.wild.test", True), ("a.b.wild.test", True),
                                         ("evil.test", False), ("allowed.test", False)])
def test_name_constraints_in_openssl_and_python(tmp_path, name, valid):
    ca.init_ca(tmp_path / "ca", SCOPE)
    chain, key = sign_leaf(tmp_path / "ca", name, tmp_path)
    port = serve_once(chain, key)
    root = tmp_path / "ca" / ca.ROOT_CERT
    r = curl(f"https://{name}:{port}/", proxy=None, cacert=root, args=("--resolve", f"{name}:{port}:127.0.0.1"))
    assert (r.status == 200) is valid, r.stderr
    if not valid:
        assert "permitted subtree violation" in r.stderr
    client = ssl.create_default_context(cafile=str(root))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if valid:
            with client.wrap_socket(sock, server_hostname=name) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        else:
            with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
                client.wrap_socket(sock, server_hostname=name)


def test_init_files_modes_and_refusing_a_second_init(tmp_path):
    ca_dir = tmp_path / "ca"
    done = tollgate_ca("init", "--ca-dir", str(ca_dir), "--policy", str(REPO / "policies" / "example.yaml"))
    assert done.returncode == 0, done.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in ca_dir.iterdir()}
    assert modes[ca.ROOT_KEY] == modes[ca.MITMPROXY_CA] == 0o600
    assert modes[ca.ROOT_CERT] == 0o644
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    again = tollgate_ca("init", "--ca-dir", str(ca_dir), "--policy", str(REPO / "policies" / "example.yaml"))
    assert again.returncode == 2 and "already exists" in again.stderr
    shown = tollgate_ca("show", "--ca-dir", str(ca_dir), "--policy", str(REPO / "policies" / "example.yaml"))
    assert shown.returncode == 0
    assert "api.stripe.com" in shown.stdout and "every intercepted name is permitted" in shown.stdout
    assert (REPO / ".gitignore").read_text().count("ca/*") == 1


def test_show_reports_names_the_intermediate_does_not_cover(tmp_path, env):
    ca_dir = tmp_path / "ca"
    ca.init_ca(ca_dir, ca.NameScope(dns=("api.allowed.test",)))
    shown = tollgate_ca("show", "--ca-dir", str(ca_dir), "--policy", str(env.policy))
    assert shown.returncode == 1
    assert "NOT COVERED" in shown.stdout and "x.wild.test" not in shown.stdout and "wild.test" in shown.stdout


def test_group_readable_key_is_refused(tmp_path):
    ca.init_ca(tmp_path / "ca", SCOPE)
    os.chmod(tmp_path / "ca" / ca.MITMPROXY_CA, 0o640)
    with pytest.raises(ca.CaError, match="chmod 600"):
        ca.ensure_ca(tmp_path / "ca", SCOPE)


def test_renewal_keeps_clients_working(env, tmp_path):
    ca_dir = tmp_path / "ca"
    proxy = tollgate_run(tmp_path, env.policy).start()
    url = f"https://api.allowed.test:{env.tls.port}/"
    before = ca.load_status(ca_dir)
    try:
        assert curl(url, proxy=proxy.url, cacert=ca_dir / ca.ROOT_CERT).status == 200
    finally:
        proxy.stop()
    renewed = tollgate_ca("renew-intermediate", "--ca-dir", str(ca_dir), "--policy", str(env.policy))
    assert renewed.returncode == 0, renewed.stderr
    after = ca.load_status(ca_dir)
    assert after.root_sha256 == before.root_sha256 and after.intermediate_sha256 != before.intermediate_sha256
    proxy = tollgate_run(tmp_path, env.policy).start()
    try:
        r = curl(url, proxy=proxy.url, cacert=ca_dir / ca.ROOT_CERT)
        assert r.status == 200, r.stderr
    finally:
        proxy.stop()


def test_policy_growth_renews_the_intermediate_at_start(tmp_path):
    ca_dir = tmp_path / "ca"
    first = ca.init_ca(ca_dir, ca.NameScope(dns=("api.allowed.test",)))
    grown = ca.ensure_ca(ca_dir, SCOPE)
    assert grown.root_sha256 == first.root_sha256
    assert set(grown.permitted_dns) == {"api.allowed.test", "wild.test"}
    unchanged = ca.ensure_ca(ca_dir, SCOPE)
    assert unchanged.intermediate_sha256 == grown.intermediate_sha256  # nothing rewritten when covered


def test_rotation_with_overlap(env, tmp_path):
    ca_dir = tmp_path / "ca"
    url = f"https://api.allowed.test:{env.tls.port}/"
    policy = ["--ca-dir", str(ca_dir), "--policy", str(env.policy)]
    proxy = tollgate_run(tmp_path, env.policy).start()
    proxy.stop()
    old_root = tmp_path / "old-root.pem"
    old_root.write_bytes((ca_dir / ca.ROOT_CERT).read_bytes())

    assert tollgate_ca("rotate", *policy).returncode == 0
    bundle = ca_dir / ca.TRUST_BUNDLE
    assert bundle.read_bytes().count(b"BEGIN CERTIFICATE") == 2
    for step in ("staged", "activated"):
        proxy = tollgate_run(tmp_path, env.policy).start()
        try:
            assert curl(url, proxy=proxy.url, cacert=bundle).status == 200, step
            old_only = curl(url, proxy=proxy.url, cacert=old_root)
            assert (old_only.status == 200) is (step == "staged"), step
        finally:
            proxy.stop()
        if step == "staged":
            done = tollgate_ca("rotate", "--activate", *policy)
            assert done.returncode == 0, done.stderr
    assert tollgate_ca("rotate", "--finish", *policy).returncode == 0
    assert bundle.read_bytes() == (ca_dir / ca.ROOT_CERT).read_bytes()
    assert (ca_dir / ca.ROOT_CERT).read_bytes() != old_root.read_bytes()


def test_export_formats(tmp_path):
    ca_dir = tmp_path / "ca"
    ca.init_ca(ca_dir, SCOPE)
    root = x509.load_pem_x509_certificate((ca_dir / ca.ROOT_CERT).read_bytes())
    for fmt in ("pem", "der", "p12"):
        out = tmp_path / f"root.{fmt}"
        done = tollgate_ca("export", "--ca-dir", str(ca_dir), "--format", fmt, "--out", str(out))
        assert done.returncode == 0, done.stderr
        data = out.read_bytes()
        if fmt == "pem":
            assert x509.load_pem_x509_certificate(data) == root
        elif fmt == "der":
            assert x509.load_der_x509_certificate(data) == root
        else:
            key, cert, extra = pkcs12.load_key_and_certificates(data, None)
            assert key is None and [c for c in [cert, *extra] if c] == [root]  # a truststore: no private key


def test_export_java_truststore_with_keytool(tmp_path):
    ca_dir = tmp_path / "ca"
    ca.init_ca(ca_dir, SCOPE)
    out = tmp_path / "truststore.jks"
    done = tollgate_ca("export", "--ca-dir", str(ca_dir), "--format", "jks", "--out", str(out))
    assert done.returncode == 0, done.stderr
    listing = subprocess.run(["keytool", "-list", "-v", "-keystore", str(out), "-storepass", "changeit"],
                             capture_output=True, text=True, check=True).stdout
    assert "tollgate-root-ca" in listing and "trustedCertEntry" in listing
    assert "Tollgate local CA root" in listing


def test_passphrase_protected_root(tmp_path, env):
    ca_dir = tmp_path / "ca"
    secret = {"TG_CA_PASS": "correct horse battery staple"}
    done = tollgate_ca("init", "--ca-dir", str(ca_dir), "--policy", str(env.policy), "--passphrase-env", "TG_CA_PASS",
                       env=secret)
    assert done.returncode == 0, done.stderr
    assert b"ENCRYPTED" in (ca_dir / ca.ROOT_KEY).read_bytes()
    without = tollgate_ca("renew-intermediate", "--ca-dir", str(ca_dir), "--policy", str(env.policy))
    assert without.returncode == 2 and "passphrase" in without.stderr
    with_it = tollgate_ca("renew-intermediate", "--ca-dir", str(ca_dir), "--policy", str(env.policy),
                          "--passphrase-env", "TG_CA_PASS", env=secret)
    assert with_it.returncode == 0, with_it.stderr
    assert secret["TG_CA_PASS"] not in with_it.stdout + with_it.stderr


def test_root_key_moved_offline_proxy_still_runs(env, tmp_path):
    ca_dir = tmp_path / "ca"
    tollgate_run(tmp_path, env.policy).start().stop()  # creates the CA for this policy
    (ca_dir / ca.ROOT_KEY).unlink()  # moved offline: the intermediate still covers the policy
    proxy = tollgate_run(tmp_path, env.policy)
    try:
        proxy.start()
        assert curl(f"https://api.allowed.test:{env.tls.port}/", proxy=proxy.url, cacert=ca_dir / ca.ROOT_CERT).status == 200
    finally:
        proxy.stop()


def test_mitmdump_way_refuses_confdir_without_tollgate_ca(env, tmp_path):
    from tests.support.proxy import ProxyExited, mitmdump_run

    proxy = mitmdump_run(tmp_path, env.policy, tmp_path / "empty-confdir")
    with pytest.raises(ProxyExited) as err:
        proxy.start()
    assert "no Tollgate CA" in str(err.value)
