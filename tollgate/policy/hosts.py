"""Host name normalisation and allowlist pattern matching (smokescreen semantics).

Both the policy and every request go through ``normalize_host``, so "API.Example.com.",
"api.example.com" and the U-label/A-label spellings of an IDN compare equal.
"""

from __future__ import annotations

import re

import idna

# Underscores are not valid in IDNA2008 but occur in real service names (smokescreen allows them).
_ASCII_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


class HostError(ValueError):
    """A host name or pattern that cannot be used."""


def normalize_host(host: str) -> str:
    """Lowercase, strip one trailing dot, and encode IDN labels as punycode A-labels.

    Raises HostError for names that are not valid DNS names.
    """
    name = (host or "").strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise HostError("empty host name")
    if len(name) > 253:
        raise HostError("host name longer than 253 characters")
    labels = []
    for label in name.split("."):
        labels.append(_normalize_label(label, name))
    return ".".join(labels)


def _normalize_label(label: str, whole: str) -> str:
    if label.isascii():
        lowered = label.lower()
        if lowered.startswith("xn--"):
            # Round-trip to reject malformed punycode and to canonicalise it.
            try:
                return idna.encode(idna.decode(lowered)).decode("ascii")
            except idna.IDNAError as e:
                raise HostError(f"invalid punycode label {label!r} in {whole!r}: {e}") from None
        if not _ASCII_LABEL.match(lowered):
            raise HostError(f"invalid label {label!r} in host {whole!r}")
        return lowered
    try:
        return idna.encode(label, uts46=True).decode("ascii")
    except idna.IDNAError as e:
        raise HostError(f"invalid internationalised label {label!r} in {whole!r}: {e}") from None


def display_host(host: str) -> str:
    """The Unicode form of a normalised host, for messages (falls back to the A-labels)."""
    try:
        return idna.decode(host)
    except idna.IDNAError:
        return host


def parse_host_pattern(pattern: str) -> tuple[str, bool]:
    """Validate an allowlist host pattern; return (normalised name or suffix, is_wildcard).

    Only an exact name or a leading "*." followed by at least two labels is accepted.
    "*.example.com" matches subdomains of example.com at any depth, never the apex.
    """
    raw = (pattern or "").strip()
    if raw in ("*", "*."):
        raise HostError(f"{pattern!r}: a bare wildcard would allow every host; list the hosts instead")
    if raw.endswith("."):
        raise HostError(f"{pattern!r}: remove the trailing dot")
    wildcard = raw.startswith("*.")
    rest = raw[2:] if wildcard else raw
    if "*" in rest:
        if wildcard:
            raise HostError(f"{pattern!r}: only one leading '*.' is allowed, as in '*.example.com'")
        if raw.startswith("*"):
            raise HostError(
                f"{pattern!r}: a wildcard must be a whole label; use '*.{raw.lstrip('*').lstrip('.')}'"
            )
        raise HostError(f"{pattern!r}: '*' is only allowed as the whole first label, as in '*.example.com'")
    if wildcard and "." not in rest:
        raise HostError(f"{pattern!r}: a wildcard needs at least two labels after '*.' (e.g. '*.example.com')")
    try:
        name = normalize_host(rest)
    except HostError as e:
        raise HostError(f"{pattern!r}: {e}") from None
    return name, wildcard


def host_matches(host: str, name: str, wildcard: bool) -> bool:
    """Does the normalised ``host`` match a parsed pattern?"""
    if wildcard:
        return host.endswith("." + name)
    return host == name
