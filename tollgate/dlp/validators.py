"""Validators that keep detectors precise: pure functions on the candidate text.

Checksums come from python-stdnum where it has them; the rest follow the rules in
notes/dlp-anchors.md §5.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import zlib
from collections import Counter

from stdnum import iban as _iban
from stdnum import luhn as _luhn
from stdnum.gb import nhs as _nhs
from stdnum.us import ssn as _ssn

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# (IIN prefix ranges, allowed lengths) per brand; see notes/dlp-anchors.md §5.
_CARD_BRANDS: list[tuple[list[tuple[int, int]], set[int]]] = [
    ([(4, 4)], {16, 18, 19}),  # Visa (the legacy 13-digit length is unverified and collides with ids)
    ([(51, 55), (2221, 2720)], {16}),  # Mastercard, including the 2-series
    ([(34, 34), (37, 37)], {15}),  # Amex
    ([(6011, 6011), (644, 649), (65, 65)], {16, 19}),  # Discover
    ([(300, 305), (36, 36), (38, 39)], {14, 16, 19}),  # Diners
    # The rarer lengths of these brands (12-15, 17-18) collide with numeric ids; only 16 and 19.
    ([(3528, 3589)], {16, 19}),  # JCB
    ([(62, 62), (81, 81)], {16, 19}),  # UnionPay
    ([(500000, 509999), (56, 59)], {16, 19}),  # Maestro
    ([(2200, 2204)], {16, 19}),  # Mir
]


def shannon_entropy(value: str) -> float:
    if not value:
        return 0.0
    counts = Counter(value)
    return -sum(c / len(value) * math.log2(c / len(value)) for c in counts.values())


def card_number(candidate: str) -> bool:
    """Luhn, a known brand prefix with its length, one consistent separator, not one repeated digit."""
    separators = {c for c in candidate if not c.isdigit()}
    if len(separators) > 1:
        return False
    digits = "".join(c for c in candidate if c.isdigit())
    if not 12 <= len(digits) <= 19 or len(set(digits)) == 1:
        return False
    if not any(len(digits) in lengths and _iin_matches(digits, ranges) for ranges, lengths in _CARD_BRANDS):
        return False
    return _luhn.is_valid(digits)


def _iin_matches(digits: str, ranges: list[tuple[int, int]]) -> bool:
    for low, high in ranges:
        width = len(str(low))
        if low <= int(digits[:width]) <= high:
            return True
    return False


def iban(candidate: str) -> bool:
    return _iban.is_valid(candidate)


def uk_nhs_number(candidate: str) -> bool:
    return _nhs.is_valid(re.sub(r"[ -]", "", candidate))


def us_ssn(candidate: str) -> bool:
    return _ssn.is_valid(candidate)  # area/group/serial rules and the well-known sample numbers


_NINO = re.compile(r"^(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]\d{6}[A-D]$")


def uk_nino(candidate: str) -> bool:
    return bool(_NINO.match(candidate.replace(" ", "").upper()))


def github_crc32(token: str) -> bool:
    """Classic GitHub (and npm) tokens: the last 6 chars are base62 of crc32(random part)."""
    prefix_end = token.index("_") + 1
    body, check = token[prefix_end:-6], token[-6:]
    value = zlib.crc32(body.encode())
    encoded = ""
    while value:
        value, digit = divmod(value, 62)
        encoded = _BASE62[digit] + encoded
    return encoded.rjust(6, "0") == check


def _b64url_json(segment: str) -> object:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded))


def jwt(candidate: str) -> bool:
    """Header and payload decode to JSON objects and the header names an algorithm."""
    parts = candidate.split(".")
    if len(parts) < 3:
        return False
    try:
        header, payload = _b64url_json(parts[0]), _b64url_json(parts[1])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header and isinstance(payload, dict)


def pem_private_key(candidate: str) -> bool:
    """A real key body: at least 64 base64 characters between the BEGIN and END lines."""
    lines = candidate.replace("\\n", "\n").splitlines()[1:-1]
    body = "".join(line.strip() for line in lines if ":" not in line)
    return len(body) >= 64 and re.fullmatch(r"[A-Za-z0-9+/=]+", body) is not None


_PLACEHOLDER = re.compile(
    r"(?i)^(?:\$\{?[\w.]+\}?|\{\{.*\}\}|<[^>]+>|%[\w]+%|x{4,}|\*+|changeme|password|secret|example|"
    r"your[_-]?\w+|dummy\w*|test\w*|null|none|true|false|undefined)$")


def looks_like_placeholder(value: str) -> bool:
    return bool(_PLACEHOLDER.match(value)) or len(set(value)) <= 2


def generic_secret(value: str) -> bool:
    """A secret-like name was assigned this: keep it only if it looks random."""
    if looks_like_placeholder(value) or re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", value):
        return False
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d", r"[^A-Za-z0-9]"))
    return classes >= 2 and shannon_entropy(value) >= 3.5


def url_password(password: str) -> bool:
    return not looks_like_placeholder(password) and password not in ("%2A", "%2a")


def aws_secret(value: str) -> bool:
    return not re.fullmatch(r"[0-9a-f]{40}", value) and shannon_entropy(value) >= 4.0


def high_entropy(value: str) -> bool:
    return shannon_entropy(value) >= 3.0


# Names a custom detector may use (`validator:` in the policy); see tollgate/dlp/ids.py.
BY_NAME = {
    "luhn": card_number,
    "iban": iban,
    "uk_nhs_number": uk_nhs_number,
    "uk_nino": uk_nino,
    "us_ssn": us_ssn,
    "github_crc32": github_crc32,
    "jwt": jwt,
    "entropy": high_entropy,
}
