"""The upstream trust store: the system bundle plus the policy's extra_ca_files.

mitmproxy's ``ssl_verify_upstream_trusted_ca`` *replaces* its default bundle, so we write
one combined file: pointing it at an internal CA alone would break every public site.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
from pathlib import Path

import certifi


class TrustError(Exception):
    pass


def system_bundle() -> Path:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, certifi.where()):
        if candidate and os.path.isfile(candidate):
            return Path(candidate)
    raise TrustError("no system CA bundle found")


def build_bundle(extra_ca_files: tuple[str, ...], directory: Path, base: Path | None = None) -> Path:
    """Write ``directory/upstream-trust-<hash>.pem`` = system bundle + extras; return its path.

    Named by content: mitmproxy caches TLS contexts by the bundle's path, so a reloaded policy
    with other extras must get a new path to take effect."""
    parts = [(base or system_bundle()).read_bytes()]
    for name in extra_ca_files:
        try:
            data = Path(name).read_bytes()
        except OSError as e:
            raise TrustError(f"upstream.extra_ca_files: cannot read {name}: {e.strerror}") from None
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise TrustError(f"upstream.extra_ca_files: {name} holds no PEM certificate")
        parts.append(data)
    content = b"\n".join(p.rstrip(b"\n") + b"\n" for p in parts)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"upstream-trust-{hashlib.sha256(content).hexdigest()[:16]}.pem"
    if target.is_file() and target.read_bytes() == content:
        return target
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".upstream-trust.")
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target
