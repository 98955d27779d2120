"""Decisions: a value with a reason from a closed set, shared by every gate.

The reason codes are the contract: they appear verbatim in the ``X-Tollgate-Decision``
header, the JSON error body and the audit log (``event.reason``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tollgate.policy.model import ClientGroup, Destination


class Reason(str, enum.Enum):
    ALLOWED = "allowed"
    CLIENT_UNKNOWN = "client_unknown"
    DESTINATION_NOT_ALLOWED = "destination_not_allowed"
    PORT_NOT_ALLOWED = "port_not_allowed"
    CLIENT_NOT_ALLOWED = "client_not_allowed"
    IP_LITERAL_NOT_ALLOWED = "ip_literal_not_allowed"
    INVALID_DESTINATION = "invalid_destination"
    ADDRESS_REFUSED = "address_refused"
    RESOLVE_FAILED = "resolve_failed"
    SNI_MISMATCH = "sni_mismatch"
    SNI_MISSING = "sni_missing"
    HOST_MISMATCH = "host_mismatch"
    DUPLICATE_HOST = "duplicate_host"
    HEADERS_TOO_LARGE = "headers_too_large"
    NOT_HTTP = "not_http"
    NOT_VIA_PROXY = "not_via_proxy"
    UNAPPROVED_CONNECTION = "unapproved_connection"
    UPSTREAM_CERTIFICATE_INVALID = "upstream_certificate_invalid"
    UPSTREAM_PIN_MISMATCH = "upstream_pin_mismatch"
    UPSTREAM_TLS_FAILED = "upstream_tls_failed"
    TRANSPORT_ERROR = "transport_error"
    DLP_BLOCKED = "dlp_blocked"
    UNINSPECTABLE = "uninspectable"
    BODY_TOO_LARGE = "body_too_large"
    INTERNAL_ERROR = "internal_error"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    POLICY_UNAVAILABLE = "policy_unavailable"


# HTTP status the proxy answers with for each refusal.
STATUS = {
    Reason.ALLOWED: 200,
    Reason.INVALID_DESTINATION: 400,
    Reason.DUPLICATE_HOST: 400,
    Reason.HEADERS_TOO_LARGE: 431,
    Reason.NOT_HTTP: 400,
    Reason.NOT_VIA_PROXY: 400,
    Reason.HOST_MISMATCH: 421,
    Reason.RESOLVE_FAILED: 502,
    Reason.UPSTREAM_CERTIFICATE_INVALID: 502,
    Reason.UPSTREAM_PIN_MISMATCH: 502,
    Reason.UPSTREAM_TLS_FAILED: 502,
    Reason.TRANSPORT_ERROR: 502,
    Reason.BODY_TOO_LARGE: 413,
    Reason.INTERNAL_ERROR: 503,
    Reason.AUDIT_UNAVAILABLE: 503,
    Reason.POLICY_UNAVAILABLE: 503,
}


@dataclass(frozen=True)
class Decision:
    reason: Reason
    message: str  # one sentence for humans; never contains request data beyond names
    rule: Destination | None = None
    client: ClientGroup | None = None

    @property
    def allowed(self) -> bool:
        return self.reason is Reason.ALLOWED

    @property
    def status(self) -> int:
        return STATUS.get(self.reason, 403)
