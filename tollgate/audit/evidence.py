"""Evidence the proxy host cannot read: a finding's context sealed to a reviewer's key.

Ephemeral X25519 → HKDF-SHA256 → AES-256-GCM, the ephemeral public key as associated data.
The proxy holds only the reviewer's public key; `tollgate audit reveal` opens the evidence
with the private key, on the reviewer's machine.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "x25519-aes256gcm:"
_INFO = b"tollgate-evidence-v1"
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class EvidenceError(Exception):
    pass


def load_public_key(path: str | Path) -> X25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise EvidenceError(f"cannot read the evidence public key {path}: {e}") from None
    if not isinstance(key, X25519PublicKey):
        raise EvidenceError(f"{path} is not an X25519 public key (make one with `tollgate audit keygen`)")
    return key


def load_private_key(path: str | Path) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise EvidenceError(f"cannot read the private key {path}: {e}") from None
    if not isinstance(key, X25519PrivateKey):
        raise EvidenceError(f"{path} is not an X25519 private key")
    return key


def _key(shared: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(shared)


def seal(public_key: X25519PublicKey, plaintext: bytes) -> str:
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(*_RAW)
    nonce = os.urandom(12)
    ciphertext = AESGCM(_key(ephemeral.exchange(public_key))).encrypt(nonce, plaintext, ephemeral_public)
    return PREFIX + base64.b64encode(ephemeral_public + nonce + ciphertext).decode()


def unseal(private_key: X25519PrivateKey, sealed: str) -> bytes:
    if not sealed.startswith(PREFIX):
        raise EvidenceError("not Tollgate evidence")
    blob = base64.b64decode(sealed[len(PREFIX):])
    ephemeral_public, nonce, ciphertext = blob[:32], blob[32:44], blob[44:]
    shared = private_key.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
    try:
        return AESGCM(_key(shared)).decrypt(nonce, ciphertext, ephemeral_public)
    except InvalidTag:
        raise EvidenceError("this evidence was not sealed to that key, or it was altered") from None


def generate_keypair(prefix: str | Path) -> tuple[Path, Path]:
    """PREFIX.key (0600, keep it off the proxy) and PREFIX.pub (for the policy)."""
    private = X25519PrivateKey.generate()
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pub_path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_path, pub_path
