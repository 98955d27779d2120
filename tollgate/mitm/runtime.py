"""Everything built from one policy file that the hooks use: the policy, its DLP engine, the
reviewer's evidence key, the upstream trust bundle. A connection keeps the Runtime it started
with, so a reload never changes the rules half-way through a connection.

No mitmproxy here: building a Runtime is also the full validation a reload runs before it
swaps anything.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tollgate.audit.evidence import load_public_key
from tollgate.dlp.engine import Engine
from tollgate.policy.loader import load_policy
from tollgate.policy.model import Policy
from tollgate.tls.ca import check_proxy_ca, covers, load_status, renew_intermediate
from tollgate.tls.scope import intercept_scope
from tollgate.tls.trust import build_bundle


class ReloadError(Exception):
    """The new policy is valid but cannot replace the running one without a restart."""


@dataclass(frozen=True)
class Runtime:
    policy: Policy
    engine: Engine
    evidence_key: Any  # the reviewer's X25519 public key, or None
    trust_bundle: Path


def build_runtime(path: str, confdir: Path, check_ca: bool = True) -> Runtime:
    """Load and fully check a policy file. Raises PolicyError, CaError, TrustError, OSError."""
    policy = load_policy(path)
    if check_ca:
        check_proxy_ca(confdir, intercept_scope(policy))  # the CA must be able to sign every intercepted name
    bundle = build_bundle(policy.upstream.extra_ca_files, confdir)
    engine = Engine.for_policy(policy.dlp)
    evidence_key = load_public_key(policy.audit.evidence_public_key) if policy.audit.evidence_public_key else None
    return Runtime(policy, engine, evidence_key, bundle)


def check_replaceable(old: Policy, new: Policy, audit_path_override: str) -> None:
    """The audit log stays open across a reload: its settings can only change on a restart."""
    if not audit_path_override and new.audit.path != old.audit.path:
        raise ReloadError(f"audit.path changed ({old.audit.path} → {new.audit.path}); restart the proxy to apply it")
    if new.audit.rotate_bytes != old.audit.rotate_bytes:
        raise ReloadError("audit.rotate_bytes changed; restart the proxy to apply it")


def cover_policy(confdir: Path, policy: Policy) -> str:
    """Renew the intermediate if the policy intercepts a name it may not sign (as `tollgate run`
    does at start-up). Returns the SHA-256 of the intermediate now on disk: a caller that holds
    another one in memory must reload it. Raises CaError, e.g. when the root key is offline."""
    scope = intercept_scope(policy)
    with _ca_lock(confdir):  # with --workers, every worker reloads at once: only one renews
        if covers(load_status(confdir), scope):
            renew_intermediate(confdir, scope)
        return check_proxy_ca(confdir, scope).intermediate_sha256


@contextmanager
def _ca_lock(confdir: Path):
    with open(Path(confdir) / ".renew.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def file_signature(path: str) -> tuple[int, int, int] | None:
    """What the watcher compares between polls: inode, size, modification time."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
