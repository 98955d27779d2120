"""The local CA: a root, and a name-constrained intermediate the proxy signs with.

Layout in the CA directory (0700):
  root-ca.pem          root certificate, 0644: what internal hosts trust
  root-ca.key          root private key, 0600: can be moved offline after set-up
  intermediate-ca.pem  intermediate certificate, 0644
  mitmproxy-ca.pem     intermediate key + intermediate + root, 0600: what mitmproxy loads
                       from its confdir (the first certificate is the signing CA, and with
                       several certificates mitmproxy serves leaf, intermediate, root)

The intermediate's NameConstraints permit only the DNS names the policy intercepts, so a
stolen proxy key cannot impersonate other sites. A permitted DNS subtree "example.com"
also permits its subdomains (X.509 semantics), which is exactly what "*.example.com"
needs; it also permits the apex, but the proxy never issues a leaf for a name the policy
does not allow.

IP addresses are not constrained: mitmproxy puts the upstream's IP address into every leaf
(TlsConfig.get_cert adds server.address, which is the pinned IP), so any iPAddress subtree
would invalidate every leaf for a host name destination. A single-address `cidr:` entry is
also permitted as a DNS-form string, because OpenSSL checks the CN of a leaf without DNS
SANs (mitmproxy's CN for an IP destination is the address) against the DNS constraints.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

ROOT_CERT = "root-ca.pem"
ROOT_KEY = "root-ca.key"
INTERMEDIATE_CERT = "intermediate-ca.pem"
MITMPROXY_CA = "mitmproxy-ca.pem"
TRUST_BUNDLE = "trust-bundle.pem"  # every root clients should trust now (two during a rotation)
NEXT_DIR = "next"  # a staged new root, published in the trust bundle before it is activated
PREVIOUS_DIR = "previous"
RENEW_BEFORE = datetime.timedelta(days=14)


class CaError(Exception):
    """The CA cannot be created or used; the message says how to fix it."""


@dataclass(frozen=True)
class CaSettings:
    key_type: Literal["ec-p256", "rsa-3072"] = "ec-p256"
    root_days: int = 3650
    intermediate_days: int = 180
    common_name: str = "Tollgate local CA"


@dataclass(frozen=True)
class NameScope:
    """What the intermediate must be able to sign: normalised hosts ('*.x.net' for wildcards)."""

    dns: tuple[str, ...] = ()
    ip: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True)
class CaStatus:
    root_subject: str
    root_not_after: datetime.datetime
    root_sha256: str
    intermediate_subject: str
    intermediate_not_after: datetime.datetime
    intermediate_sha256: str
    permitted_dns: tuple[str, ...]
    key_type: str


def root_cert_path(ca_dir: Path) -> Path:
    return Path(ca_dir) / ROOT_CERT


def ensure_ca(ca_dir: Path, scope: NameScope, settings: CaSettings = CaSettings()) -> CaStatus:
    """Create the CA if missing; renew the intermediate if it does not cover ``scope`` or expires soon."""
    ca_dir = Path(ca_dir)
    if not (ca_dir / MITMPROXY_CA).exists() and not (ca_dir / ROOT_KEY).exists():
        return init_ca(ca_dir, scope, settings)
    for name in (MITMPROXY_CA, ROOT_KEY):
        if (ca_dir / name).exists():
            check_key_permissions(ca_dir / name)
    status = load_status(ca_dir)
    soon = datetime.datetime.now(datetime.timezone.utc) + RENEW_BEFORE
    if covers(status, scope) or status.intermediate_not_after < soon:
        return renew_intermediate(ca_dir, scope, settings)
    return status


def init_ca(ca_dir: Path, scope: NameScope, settings: CaSettings = CaSettings(), *, force: bool = False,
            passphrase: bytes | None = None) -> CaStatus:
    """A new root and intermediate. The root key is encrypted when a passphrase is given."""
    ca_dir = Path(ca_dir)
    if ((ca_dir / ROOT_KEY).exists() or (ca_dir / MITMPROXY_CA).exists()) and not force:
        raise CaError(f"a CA already exists in {ca_dir}; use renew-intermediate or rotate instead of init")
    ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(ca_dir, 0o700)
    key = _new_key(settings)
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{settings.common_name} root"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tollgate")])
    root = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=settings.root_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(ca_dir / ROOT_KEY, _key_pem(key, passphrase), 0o600)
    _write(ca_dir / ROOT_CERT, root.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_trust_bundle(ca_dir)
    return renew_intermediate(ca_dir, scope, settings, passphrase=passphrase)


def renew_intermediate(ca_dir: Path, scope: NameScope, settings: CaSettings = CaSettings(), *,
                       passphrase: bytes | None = None) -> CaStatus:
    """A new intermediate under the same root (clients keep trusting the root)."""
    ca_dir = Path(ca_dir)
    try:
        check_key_permissions(ca_dir / ROOT_KEY)
        root_key = serialization.load_pem_private_key((ca_dir / ROOT_KEY).read_bytes(), password=passphrase)
        root = x509.load_pem_x509_certificate((ca_dir / ROOT_CERT).read_bytes())
    except FileNotFoundError as e:
        raise CaError(f"{e.filename} is missing: the root key is needed to issue a new intermediate "
                      "(bring it back from offline storage, then retry)") from None
    except (TypeError, ValueError) as e:
        raise CaError(f"cannot open {ca_dir / ROOT_KEY}: {e} (wrong or missing passphrase?)") from None
    key = _new_key(settings)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = min(now + datetime.timedelta(days=settings.intermediate_days), root.not_valid_after_utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{settings.common_name} intermediate"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tollgate")])
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(root.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
    )
    # With nothing to intercept, permit only the reserved name "invalid": never unconstrained.
    dns = _permitted_dns(scope) or ["invalid"]
    builder = builder.add_extension(
        x509.NameConstraints(permitted_subtrees=[x509.DNSName(d) for d in dns], excluded_subtrees=None), critical=True)
    intermediate = builder.sign(root_key, hashes.SHA256())
    pem = intermediate.public_bytes(serialization.Encoding.PEM)
    _write(ca_dir / INTERMEDIATE_CERT, pem, 0o644)
    _write(ca_dir / MITMPROXY_CA, _key_pem(key) + pem + root.public_bytes(serialization.Encoding.PEM), 0o600)
    return load_status(ca_dir)


def load_status(ca_dir: Path) -> CaStatus:
    ca_dir = Path(ca_dir)
    try:
        root = x509.load_pem_x509_certificate((ca_dir / ROOT_CERT).read_bytes())
        intermediate = x509.load_pem_x509_certificate((ca_dir / INTERMEDIATE_CERT).read_bytes())
    except FileNotFoundError as e:
        raise CaError(f"{e.filename} is missing") from None
    except ValueError as e:
        raise CaError(f"cannot read the CA in {ca_dir}: {e}") from None
    try:
        constraints = intermediate.extensions.get_extension_for_class(x509.NameConstraints).value
        permitted = tuple(str(n.value) for n in constraints.permitted_subtrees or () if isinstance(n, x509.DNSName))
    except x509.ExtensionNotFound:
        permitted = ()
    public = intermediate.public_key()
    key_type = ({"secp256r1": "ec-p256"}.get(public.curve.name, f"ec-{public.curve.name}")
                if isinstance(public, ec.EllipticCurvePublicKey) else f"rsa-{public.key_size}")
    return CaStatus(
        root_subject=root.subject.rfc4514_string(), root_not_after=root.not_valid_after_utc,
        root_sha256=root.fingerprint(hashes.SHA256()).hex(),
        intermediate_subject=intermediate.subject.rfc4514_string(),
        intermediate_not_after=intermediate.not_valid_after_utc,
        intermediate_sha256=intermediate.fingerprint(hashes.SHA256()).hex(),
        permitted_dns=permitted, key_type=key_type,
    )


def covers(status: CaStatus, scope: NameScope) -> list[str]:
    """Names in ``scope`` the intermediate may NOT sign (empty: covered)."""
    if not status.permitted_dns:
        return list(scope.dns)  # an unconstrained intermediate is never kept: re-issue it
    return [d for d in _permitted_dns(scope)
            if not any(d == p or d.endswith("." + p) for p in status.permitted_dns)]


def check_proxy_ca(ca_dir: Path, scope: NameScope) -> CaStatus:
    """The checks the proxy needs before it signs anything: a Tollgate CA that covers the policy."""
    ca_dir = Path(ca_dir)
    if not (ca_dir / ROOT_CERT).exists() or not (ca_dir / MITMPROXY_CA).exists():
        raise CaError(f"no Tollgate CA in {ca_dir}: run `tollgate ca init --ca-dir {ca_dir} --policy POLICY` "
                      "(or `tollgate run --ca-dir` once)")
    check_key_permissions(ca_dir / MITMPROXY_CA)
    status = load_status(ca_dir)
    missing = covers(status, scope)
    if missing:
        raise CaError(f"the CA in {ca_dir} may not sign {', '.join(missing)}: "
                      f"run `tollgate ca renew-intermediate --ca-dir {ca_dir} --policy POLICY`")
    return status


def check_key_permissions(path: Path) -> None:
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise CaError(f"{path} is owned by uid {st.st_uid}, not by the proxy's user (uid {os.getuid()})")
    if st.st_mode & 0o077:
        raise CaError(f"{path} is readable or writable by group/others (mode {oct(st.st_mode & 0o777)}); "
                      f"run: chmod 600 {path}")


def _permitted_dns(scope: NameScope) -> list[str]:
    names = {d[2:] if d.startswith("*.") else d for d in scope.dns}
    # A leaf for an IP destination has no DNS SAN, so OpenSSL checks its CN (the address
    # as text) against the DNS constraints: permit single listed addresses in that form.
    names |= {str(net.network_address) for net in scope.ip if net.num_addresses == 1}
    return sorted(names)


def _new_key(settings: CaSettings):
    if settings.key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ec.generate_private_key(ec.SECP256R1())


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                         encipher_only=False, decipher_only=False)


def _key_pem(key, passphrase: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _write_trust_bundle(ca_dir: Path) -> None:
    """trust-bundle.pem: the current root, plus the staged next root during a rotation."""
    parts = [(ca_dir / ROOT_CERT).read_bytes()]
    if (ca_dir / NEXT_DIR / ROOT_CERT).exists():
        parts.append((ca_dir / NEXT_DIR / ROOT_CERT).read_bytes())
    _write(ca_dir / TRUST_BUNDLE, b"".join(parts), 0o644)


def stage_rotation(ca_dir: Path, scope: NameScope, settings: CaSettings = CaSettings(),
                   passphrase: bytes | None = None) -> CaStatus:
    """Step 1 of a root rotation: create the next root and intermediate beside the current
    ones and publish both roots in trust-bundle.pem. The proxy keeps signing with the current
    intermediate; install the bundle on every client before activating."""
    ca_dir = Path(ca_dir)
    load_status(ca_dir)
    if (ca_dir / NEXT_DIR).exists():
        raise CaError(f"a rotation is already staged in {ca_dir / NEXT_DIR}; activate it or remove that directory")
    status = init_ca(ca_dir / NEXT_DIR, scope, settings, passphrase=passphrase)
    _write_trust_bundle(ca_dir)
    return status


def activate_rotation(ca_dir: Path) -> CaStatus:
    """Step 2: the proxy signs under the next root. The old root stays in trust-bundle.pem's
    history as previous/ and clients trusting the bundle keep working throughout."""
    ca_dir = Path(ca_dir)
    nxt = ca_dir / NEXT_DIR
    if not (nxt / MITMPROXY_CA).exists():
        raise CaError(f"no staged rotation in {nxt}; run `tollgate ca rotate` first")
    previous = ca_dir / PREVIOUS_DIR
    previous.mkdir(mode=0o700, exist_ok=True)
    for name in (ROOT_CERT, ROOT_KEY, INTERMEDIATE_CERT, MITMPROXY_CA):
        if (ca_dir / name).exists():
            os.replace(ca_dir / name, previous / name)
        if (nxt / name).exists():
            os.replace(nxt / name, ca_dir / name)
    for leftover in nxt.iterdir():
        leftover.unlink()
    nxt.rmdir()
    # Keep trusting the previous root until `tollgate ca rotate --finish`.
    _write(ca_dir / TRUST_BUNDLE, (ca_dir / ROOT_CERT).read_bytes() + (previous / ROOT_CERT).read_bytes(), 0o644)
    return load_status(ca_dir)


def finish_rotation(ca_dir: Path) -> None:
    """Step 3: drop the previous root from the trust bundle (and its files)."""
    ca_dir = Path(ca_dir)
    previous = ca_dir / PREVIOUS_DIR
    if previous.exists():
        for f in previous.iterdir():
            f.unlink()
        previous.rmdir()
    _write_trust_bundle(ca_dir)


def export_root(ca_dir: Path, fmt: Literal["pem", "der", "p12"]) -> bytes:
    """The root certificate for distribution: PEM, DER, or a PKCS#12 truststore (no key)."""
    from cryptography.hazmat.primitives.serialization import pkcs12

    cert = x509.load_pem_x509_certificate(root_cert_path(ca_dir).read_bytes())
    if fmt == "pem":
        return cert.public_bytes(serialization.Encoding.PEM)
    if fmt == "der":
        return cert.public_bytes(serialization.Encoding.DER)
    return pkcs12.serialize_key_and_certificates(b"tollgate-root-ca", None, None, [cert],
                                                 serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomic write with the final mode from the start (a key is never briefly world-readable)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
