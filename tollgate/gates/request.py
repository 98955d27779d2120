"""Request gate: the names a request carries must all equal the destination it was allowed for.

Inside a CONNECT tunnel the SNI, the Host header, HTTP/2 ``:authority`` and an absolute-form
authority are all client-chosen; any of them differing from the CONNECT host is domain
fronting (answered 421 so legitimate HTTP/2 coalescing clients retry on a new connection).
"""

from __future__ import annotations

from tollgate.gates.address import parse_ip_literal
from tollgate.gates.decision import Decision, Reason
from tollgate.policy.hosts import HostError, normalize_host

# Far above what real clients send (browsers stay under 100 headers and 16 KiB), far below
# what would let one request tie up memory and the upstream's parser.
MAX_HEADERS = 200
MAX_HEADER_BYTES = 64 * 1024


def check_header_size(headers: list[tuple[bytes, bytes]]) -> Decision | None:
    total = sum(len(k) + len(v) + 4 for k, v in headers)
    if len(headers) > MAX_HEADERS or total > MAX_HEADER_BYTES:
        return Decision(Reason.HEADERS_TOO_LARGE, f"the request has {len(headers)} headers, {total} bytes; the limit "
                        f"is {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes")
    return None


def same_host(destination: str, other: str) -> bool:
    """Compare two host names or IP literals after normalisation (never raises)."""
    try:
        a, b = parse_ip_literal(destination), parse_ip_literal(other)
        if a is not None or b is not None:
            return a == b
        return normalize_host(destination) == normalize_host(other)
    except (ValueError, HostError):
        return False


def split_authority(authority: str) -> tuple[str, int | None]:
    """'host', 'host:443', '[::1]:443' → (host, port). Raises ValueError when malformed."""
    authority = authority.strip()
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError("unterminated IPv6 literal")
        host, rest = authority[1:end], authority[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError("garbage after IPv6 literal")
        port_text = rest[1:] if rest else None
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
    else:
        host, port_text = authority, None
    if not host:
        raise ValueError("empty host")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid port {port_text!r}")
    return host, int(port_text)


def check_sni(destination: str, sni: str | None, *, passthrough: bool, is_ip: bool) -> Decision | None:
    """None when the ClientHello SNI is acceptable for this tunnel, else the refusal."""
    if not sni:
        # An IP destination legitimately has no SNI; a passthrough tunnel is only opened
        # after the SNI is checked, so it must have one.
        if passthrough and not is_ip:
            return Decision(Reason.SNI_MISSING, "a passthrough tunnel needs an SNI equal to the CONNECT host")
        return None
    if not same_host(destination, sni):
        return Decision(Reason.SNI_MISMATCH, "the TLS SNI does not match the CONNECT host")
    return None


def check_authorities(destination: str, port: int, host_headers: list[str], authority: str | None) -> Decision | None:
    """None when every Host header and the authority name the destination, else the refusal."""
    if len(host_headers) > 1:
        return Decision(Reason.DUPLICATE_HOST, "the request carries more than one Host header")
    for value, what in [(h, "Host header") for h in host_headers] + ([(authority, "request authority")] if authority else []):
        try:
            host, given_port = split_authority(value)
        except ValueError:
            return Decision(Reason.HOST_MISMATCH, f"the {what} is malformed")
        if not same_host(destination, host) or (given_port is not None and given_port != port):
            return Decision(Reason.HOST_MISMATCH, f"the {what} does not match the destination this connection was allowed for")
    return None
