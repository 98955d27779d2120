"""The policy file's raw schema (pydantic), mirroring ``policies/example.yaml`` key for key.

Validation here is per field; cross-references (client names, detector ids) are checked in
``loader.py``. Unknown keys are errors everywhere (``extra="forbid"``).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from typing import Annotated, Literal

import regex
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from tollgate.dlp.ids import VALIDATORS
from tollgate.policy.hosts import HostError, normalize_host, parse_host_pattern

Action = Literal["block", "redact", "report"]
# "report": decisions are computed and audited as would-deny/would-block, and the traffic passes.
Enforcement = Literal["enforce", "report"]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def parse_cidr(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        if "has host bits set" in str(e):
            fixed = ipaddress.ip_network(value, strict=False)
            raise ValueError(f"{value!r} has host bits set; did you mean {str(fixed)!r}?") from None
        raise ValueError(f"{value!r} is not a valid CIDR (e.g. 10.20.1.0/24 or 2001:db8::/48)") from None


class ClientSpec(_Strict):
    name: Name
    cidrs: list[str] = []
    users: list[Annotated[str, Field(min_length=1)]] = []

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for c in v:
            parse_cidr(c)
        return v

    @model_validator(mode="after")
    def _identified(self) -> "ClientSpec":
        if not self.cidrs and not self.users:
            raise ValueError("a client needs 'cidrs' or 'users' (or both) to be identifiable")
        return self


class DestinationDlp(_Strict):
    allow: list[str] = []


class DestinationSpec(_Strict):
    host: str | None = None
    cidr: str | None = None
    ports: list[Port] = Field(default_factory=lambda: [443], min_length=1)
    clients: list[str]
    mode: Literal["intercept", "passthrough"]
    enforcement: Enforcement = "enforce"  # `mode` already says intercept/passthrough
    owner: str | None = None
    justification: str | None = None
    review_by: datetime.date | None = Field(default=None, strict=False)
    pins: list[str] = []
    dlp: DestinationDlp | None = None

    @field_validator("clients", mode="before")
    @classmethod
    def _star(cls, v: object) -> object:
        # "*" means every client; it may not be mixed with names.
        if v == "*":
            return ["*"]
        if isinstance(v, list) and "*" in v and len(v) > 1:
            raise ValueError("'*' means every client; do not mix it with client names")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_host_pattern(v)
            except HostError as e:
                raise ValueError(str(e)) from None
        return v

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is not None:
            parse_cidr(v)
        return v

    @field_validator("pins")
    @classmethod
    def _pins(cls, v: list[str]) -> list[str]:
        for pin in v:
            digest = pin.removeprefix("sha256/")
            try:
                ok = pin.startswith("sha256/") and len(base64.b64decode(digest, validate=True)) == 32
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"{pin!r} is not a pin; use 'sha256/<base64 SHA-256 of the SubjectPublicKeyInfo>'")
        return v

    @model_validator(mode="after")
    def _one_target(self) -> "DestinationSpec":
        if (self.host is None) == (self.cidr is None):
            raise ValueError("a destination needs exactly one of 'host' or 'cidr'")
        if self.mode == "passthrough" and self.pins:
            raise ValueError("'pins' cannot be checked on a passthrough destination (the proxy never sees its certificate)")
        return self


class DetectorSpec(_Strict):
    action: Action
    block_at: Annotated[int, Field(ge=1)] | None = None
    mode: Enforcement = "enforce"


class CustomDetectorSpec(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
    pattern: Annotated[str, Field(min_length=1)]
    keywords: list[Annotated[str, Field(min_length=1)]] = []
    action: Action = "block"
    validator: str | None = None
    mode: Enforcement = "enforce"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            regex.compile(v)
        except regex.error as e:
            raise ValueError(f"pattern does not compile: {e}") from None
        return v

    @field_validator("validator")
    @classmethod
    def _known_validator(cls, v: str | None) -> str | None:
        if v is not None and v not in VALIDATORS:
            raise ValueError(f"unknown validator {v!r}; known: {', '.join(sorted(VALIDATORS))}")
        return v


class DlpSpec(_Strict):
    default_action: Action = "block"
    detectors: dict[str, DetectorSpec] = {}
    custom: list[CustomDetectorSpec] = []
    uninspectable: Literal["block", "report"] = "block"
    max_body_bytes: Annotated[int, Field(ge=1)] = 10 * 1024 * 1024
    # Bodies over max_body_bytes (and bodies of unknown length): refused, or scanned as a stream.
    large_bodies: Literal["block", "stream"] = "block"
    stream_max_bytes: Annotated[int, Field(ge=1)] = 1024 * 1024 * 1024

    @model_validator(mode="after")
    def _stream_cap_above_limit(self) -> "DlpSpec":
        if self.stream_max_bytes < self.max_body_bytes:
            raise ValueError(f"stream_max_bytes ({self.stream_max_bytes}) is below max_body_bytes ({self.max_body_bytes})")
        return self

    @field_validator("detectors", mode="before")
    @classmethod
    def _shorthand(cls, v: object) -> object:
        # "email: report" is shorthand for "email: {action: report}".
        if isinstance(v, dict):
            return {k: ({"action": a} if isinstance(a, str) else a) for k, a in v.items()}
        return v


def _resolve_name(name: str) -> str:
    try:
        normalize_host(name)
    except HostError as e:
        raise ValueError(f"{name!r}: {e}") from None
    return name


def _resolve_addresses(value: str | list[str]) -> str | list[str]:
    for a in [value] if isinstance(value, str) else value:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise ValueError(f"{a!r} is not an IP address") from None
    return value


class NetworkSpec(_Strict):
    deny_private: bool = True
    allow_cidrs: list[str] = []
    resolve: dict[
        Annotated[str, AfterValidator(_resolve_name)],
        Annotated[str | list[str], AfterValidator(_resolve_addresses)],
    ] = {}

    @field_validator("allow_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for c in v:
            parse_cidr(c)
        return v


class UpstreamSpec(_Strict):
    extra_ca_files: list[str] = []
    min_tls_version: Literal["1.2", "1.3"] = "1.2"

    @field_validator("min_tls_version", mode="before")
    @classmethod
    def _unquoted(cls, v: object) -> object:
        return str(v) if isinstance(v, float) else v  # YAML reads an unquoted 1.2 as a number


class AuditSpec(_Strict):
    path: Annotated[str, Field(min_length=1)] = "var/audit/audit.jsonl"
    rotate_bytes: Annotated[int, Field(ge=4096)] = 100 * 1024 * 1024
    evidence_public_key: str | None = None  # a reviewer's X25519 public key (PEM): findings' context sealed to it

    @field_validator("evidence_public_key")
    @classmethod
    def _evidence_key(cls, v: str | None) -> str | None:
        if v is not None:
            from tollgate.audit.evidence import EvidenceError, load_public_key

            try:
                load_public_key(v)
            except EvidenceError as e:
                raise ValueError(str(e)) from None
        return v


class PolicySpec(_Strict):
    version: Literal[1]
    mode: Enforcement = "enforce"
    clients: list[ClientSpec]
    destinations: list[DestinationSpec]
    dlp: DlpSpec = DlpSpec()
    network: NetworkSpec = NetworkSpec()
    upstream: UpstreamSpec = UpstreamSpec()
    audit: AuditSpec = AuditSpec()
