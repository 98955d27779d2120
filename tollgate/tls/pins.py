"""SPKI pins and certificate facts for the audit log. Pure: cryptography only."""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def spki_pin(cert: x509.Certificate) -> str:
    """'sha256/<base64 SHA-256 of the DER SubjectPublicKeyInfo>', the format policies use."""
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


@dataclass(frozen=True)
class CertFacts:
    """What a reviewer needs about an upstream certificate, without the certificate."""

    subject: str
    issuer: str
    not_after: str
    spki: str

    @classmethod
    def of(cls, cert: x509.Certificate) -> "CertFacts":
        return cls(cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
                   cert.not_valid_after_utc.isoformat(), spki_pin(cert))

    def ecs(self) -> dict:
        return {"subject": {"distinguished_name": self.subject}, "issuer": {"distinguished_name": self.issuer},
                "not_after": self.not_after, "public_key_sha256": self.spki}


def chain_matches_pins(chain_pins: list[str], pins: tuple[str, ...]) -> bool:
    """A pin may match any certificate of the verified chain (leaf, intermediate or root)."""
    return bool(set(chain_pins) & set(pins))


@functools.lru_cache(maxsize=256)
def facts_of_der(der: bytes) -> CertFacts:
    """CertFacts of a DER certificate, cached: every new upstream connection presents the
    same few chains, and parsing them again costs more than the rest of the TLS checks."""
    return CertFacts.of(x509.load_der_x509_certificate(der))
