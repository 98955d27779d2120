"""Responses the proxy makes itself: JSON body plus matching X-Tollgate-* headers."""

from __future__ import annotations

import json

from mitmproxy import http

from tollgate.gates.decision import Decision

ERROR_NAMES = {400: "bad_request", 403: "forbidden", 413: "payload_too_large", 421: "misdirected_request",
               502: "bad_gateway", 503: "unavailable"}


def error_response(decision: Decision, incident: str, detectors: list[str] | None = None) -> http.Response:
    status = decision.status
    body = {
        "error": ERROR_NAMES.get(status, "refused"),
        "reason": decision.reason.value,
        "message": decision.message,
        "incident": incident,
    }
    if detectors:
        body["detectors"] = detectors  # detector ids only: never the matched value
    return http.Response.make(
        status,
        json.dumps(body).encode() + b"\n",
        {
            "Content-Type": "application/json",
            "X-Tollgate-Decision": decision.reason.value,
            "X-Tollgate-Incident": incident,
            "Cache-Control": "no-store",
            "Connection": "close",
        },
    )
