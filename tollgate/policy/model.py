"""The compiled, immutable policy the hot path works with.

The loader (``loader.py``) validates the YAML file and builds these objects once;
nothing here is re-validated per request. Hosts are already normalised (lowercase,
no trailing dot, IDNA A-labels) and CIDRs are ``ipaddress`` networks.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from typing import Literal, Mapping

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Mode = Literal["intercept", "passthrough"]
Action = Literal["block", "redact", "report"]
Enforcement = Literal["enforce", "report"]  # report: audit would-deny/would-block, let the traffic pass


@dataclass(frozen=True)
class ClientGroup:
    name: str
    cidrs: tuple[IPNetwork, ...]
    users: tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class Destination:
    """One allowlist entry: a host (exact or ``*.`` wildcard) or a CIDR."""

    rule_id: str  # the entry as written, normalised: "api.stripe.com", "*.x.net", "203.0.113.10/32"
    host: str | None  # exact name, or the suffix after "*." when wildcard
    wildcard: bool
    cidr: IPNetwork | None
    ports: tuple[int, ...]
    clients: frozenset[str] | None  # None means every client ("*")
    mode: Mode
    enforcement: Enforcement = "enforce"
    owner: str | None = None
    justification: str | None = None
    review_by: datetime.date | None = None
    pins: tuple[str, ...] = ()
    dlp_allow: frozenset[str] = frozenset()
    line: int = 0


@dataclass(frozen=True)
class DetectorSetting:
    action: Action
    block_at: int | None = None
    mode: Enforcement = "enforce"


@dataclass(frozen=True)
class CustomDetector:
    id: str
    pattern: str
    keywords: tuple[str, ...] = ()
    action: Action = "block"
    validator: str | None = None
    mode: Enforcement = "enforce"
    line: int = 0


@dataclass(frozen=True)
class DlpSettings:
    default_action: Action = "block"
    detectors: Mapping[str, DetectorSetting] = field(default_factory=dict)
    custom: tuple[CustomDetector, ...] = ()
    uninspectable: Literal["block", "report"] = "block"
    max_body_bytes: int = 10 * 1024 * 1024
    large_bodies: Literal["block", "stream"] = "block"
    stream_max_bytes: int = 1024 * 1024 * 1024

    @property
    def largest_body_bytes(self) -> int:
        """The largest body the proxy takes at all: scanned whole, or as a stream."""
        return self.stream_max_bytes if self.large_bodies == "stream" else self.max_body_bytes


@dataclass(frozen=True)
class NetworkSettings:
    deny_private: bool = True
    allow_cidrs: tuple[IPNetwork, ...] = ()
    resolve: Mapping[str, tuple[IPAddress, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class UpstreamSettings:
    extra_ca_files: tuple[str, ...] = ()
    min_tls_version: Literal["1.2", "1.3"] = "1.2"


@dataclass(frozen=True)
class AuditSettings:
    path: str = "var/audit/audit.jsonl"
    rotate_bytes: int = 100 * 1024 * 1024
    evidence_public_key: str | None = None


@dataclass(frozen=True)
class Policy:
    version: int
    clients: tuple[ClientGroup, ...]
    destinations: tuple[Destination, ...]
    dlp: DlpSettings = DlpSettings()
    network: NetworkSettings = NetworkSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    audit: AuditSettings = AuditSettings()
    mode: Enforcement = "enforce"
    source: str = "<memory>"  # file the policy was loaded from
    sha256: str = ""  # hash of the file's bytes, for the audit log

    def report_only(self, rule: Destination | None) -> bool:
        """Whether refusals under this entry are only audited (would-deny) and the traffic passes."""
        return self.mode == "report" or (rule is not None and rule.enforcement == "report")

    def client(self, name: str) -> ClientGroup | None:
        return next((c for c in self.clients if c.name == name), None)
