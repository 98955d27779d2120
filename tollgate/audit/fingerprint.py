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


def load_or_create_key(directory: Path) -> bytes:
    path = Path(directory) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise PermissionError(f"{path} is readable by group/others; run: chmod 600 {path}")
    return path.read_bytes()


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
