"""Masked previews and keyed fingerprints: how a finding appears anywhere outside the request.

The HMAC key is generated on first start and kept 0600 beside the CA, so reviewers can tell
that two incidents carry the same value without anyone seeing it, and a fingerprint cannot
be brute-forced offline without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_FILE = "audit-hmac.key"


KEY_BYTES = 32


def load_or_create_key(directory: Path) -> bytes:
    path = Path(directory) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _create_key(path)
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise PermissionError(f"{path} is readable by group/others; run: chmod 600 {path}")
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte key; "
                         "restore it from a backup (a new key would fingerprint values differently)")
    return key


def _create_key(path: Path) -> None:
    """Written whole under a name of its own, then linked into place: workers starting at
    the same moment see no key or the whole key, never a partial one, and all use the key
    of the first link (the others' are dropped)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)  # never through a link
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process made the key first: that one is used
    finally:
        temporary.unlink(missing_ok=True)


def fingerprint(key: bytes, value: str) -> str:
    return "hmac-sha256:" + hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def mask(detector: str, value: str, secret: bool) -> str:
    """A preview that identifies the kind of value but not the value."""
    digits = "".join(c for c in value if c.isdigit())
    if detector in ("payment_card", "iban"):
        return f"…{digits[-4:]} ({len(digits)} digits)" if detector == "payment_card" else f"{value[:2]}…{value[-2:]}"
    if detector == "email" and "@" in value:
        return f"…@{value.split('@', 1)[1]}"
    if secret:
        prefix = value[:4] if len(value) >= 20 else ""
        return f"{prefix}…[{len(value)} chars]"
    return f"…{value[-2:]} [{len(value)} chars]" if len(value) > 6 else f"[{len(value)} chars]"


def redaction(detector: str, value: str) -> str:
    """The typed mask a redacted value is replaced with; cards keep their last four digits."""
    if detector == "payment_card":
        digits = "".join(c for c in value if c.isdigit())
        return f"[REDACTED:payment_card:{digits[-4:]}]"
    return f"[REDACTED:{detector}]"
