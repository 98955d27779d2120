"""A test PKI made at test time with `cryptography`: the upstreams' CA and certificates."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class TestPKI:
    __test__ = False

    def __init__(self, directory: Path, name: str = "Tollgate Test Upstream CA"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_cert_path = self.directory / "ca.pem"
        self.ca_cert_path.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))
        self._count = 0

    def issue(self, dns: Sequence[str] = (), ips: Sequence[str] = (), *, not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None, self_signed: bool = False,
              filename_stem: str | None = None) -> tuple[Path, Path]:
        """(certificate PEM, key PEM) for the given names, signed by this CA unless self_signed."""
        key = ec.generate_private_key(ec.SECP256R1())
        cn = (list(dns) + list(ips))[0]
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        issuer_name, signing_key = (_name(cn), key) if self_signed else (self.ca_cert.subject, self.ca_key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(issuer_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - datetime.timedelta(days=1))
            .not_valid_after(not_after or NOW + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        if not self_signed:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
        cert = builder.sign(signing_key, hashes.SHA256())
        self._count += 1
        stem = filename_stem or f"leaf{self._count}"
        cert_path, key_path = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        return cert_path, key_path

    def self_signed(self, dns: Sequence[str], ips: Sequence[str] = ()) -> tuple[Path, Path]:
        return self.issue(dns, ips, self_signed=True)

    def expired(self, dns: Sequence[str]) -> tuple[Path, Path]:
        return self.issue(dns, not_before=NOW - datetime.timedelta(days=30), not_after=NOW - datetime.timedelta(days=1))

    @staticmethod
    def spki_pin(cert_path: Path) -> str:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()
