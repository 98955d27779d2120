"""mitmproxy options that would let traffic bypass Tollgate's checks.

Some are forced to a safe value (with a log line saying so), others make start-up fail:
each entry says why. See notes/mitmproxy-11.md, "Fail-open traps".
"""

from __future__ import annotations

from typing import Any

# option → safe value. Forced silently-but-logged, because the defaults are unsafe.
FORCED = {
    "rawtcp": False,  # non-HTTP bytes in a tunnel would be relayed uninspected
    "upstream_cert": False,  # leaf certs must carry only the CONNECT name (name-constrained CA)
    "onboarding": False,  # mitm.it would be answered by the proxy itself, outside the policy
    "block_global": False,  # the client gate decides who may connect, not mitmproxy's IP classes
    "http3": False,  # QUIC is not proxied; clients fall back to TCP
    "ssl_insecure": False,  # upstream certificates are always verified
}

# option → (unsafe when, why). These fail start-up instead of being silently changed.
REFUSED = {
    "ignore_hosts": (bool, "ignore_hosts tunnels traffic uninspected and can be bypassed with a forged SNI; use mode: passthrough"),
    "allow_hosts": (bool, "allow_hosts tunnels non-matching hosts uninspected; the policy's destinations are the allowlist"),
    "tcp_hosts": (bool, "tcp_hosts relays raw TCP uninspected"),
    "stream_large_bodies": (bool, "streamed bodies are forwarded before they are scanned"),
    "map_remote": (bool, "map_remote rewrites destinations after the policy decided"),
    "map_local": (bool, "map_local answers requests outside the policy"),
    "modify_body": (bool, "modify_body changes bodies after they were scanned"),
    "modify_headers": (bool, "modify_headers changes requests after they were checked"),
}

SUPPORTED_MODES = ("regular",)


def review_options(options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Return (options to force, errors that must stop start-up)."""
    changes = {k: v for k, v in FORCED.items() if k in options and options[k] != v}
    errors = [f"--set {k} is not allowed with Tollgate: {why}" for k, (unsafe, why) in REFUSED.items()
              if k in options and unsafe(options[k])]
    for spec in options.get("mode") or ["regular"]:
        kind = spec.split("@")[0].split(":")[0]
        if kind not in SUPPORTED_MODES:
            errors.append(f"mode {spec!r} is not supported: Tollgate runs as a regular (explicit) proxy only; "
                          "transparent, socks5, upstream, reverse and capture modes would skip the client and destination gates")
    return changes, errors
