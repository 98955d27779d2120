"""The built-in detectors: each is data (pattern, keywords, validator), not code paths.

A detector's ``pattern`` finds candidates; the value is the named group ``v`` when present,
else the whole match. ``keywords`` gate the pattern (it only runs when one occurs in the
text, case-insensitively; for a built-in whose pattern the prefilter's pass holds, that
pattern stands in for the search: it implies them, or they only saved work). ``context``
words must occur within 64 characters before the match for detectors that are ambiguous on
their own. ``issuers`` are the hosts where a
credential is normal traffic (a GitHub token sent to api.github.com). ``placeholder`` marks
documentation values that are reported, never blocked.
"""

from __future__ import annotations

import phonenumbers
from dataclasses import dataclass, field
from typing import Callable

import regex

from tollgate.dlp import validators as v
from tollgate.policy.model import CustomDetector


# A pseudo-keyword: the text has a run of digits long enough for a number detector.
DIGITS = "<digits>"


@dataclass(frozen=True)
class Detector:
    id: str
    pattern: regex.Pattern
    keywords: tuple[str, ...] = ()
    validate: Callable[[str], bool] | None = None
    context: tuple[str, ...] = ()
    issuers: tuple[str, ...] = ()  # exact hosts, or ".example.com" for subdomains
    placeholder: Callable[[str], bool] | None = None
    secret: bool = True
    tests: dict = field(default_factory=dict, compare=False)  # {"tp": [...], "fp": [...]} examples
    # The longest text the pattern can match, when it is short and bounded: the engine then
    # runs the regex only around the places the prefilter points at (digit-run detectors
    # fire on most bodies: ids, timestamps). A unit test checks it against the pattern.
    max_length: int | None = None
    # Every match holds one of the keywords: with max_length, the regex runs only near them.
    keywords_inside: bool = False
    # The native test (tollgate/dlp/_native.c number_shapes) that stands in for the pattern in
    # the prefilter's pass over ASCII text: a wider condition, checked much faster than
    # hyperscan runs a pattern that opens with a character class.
    shape: str | None = None


def _re(pattern: str, flags: int = 0) -> regex.Pattern:
    # (?-f): simple case folding. Full folding (ß = "ss") makes a caseless pattern with bounded
    # repeats backtrack exponentially on text like "token ßßßß…" (seconds per request).
    return regex.compile(SIMPLE_CASE + pattern, flags | regex.VERSION1)


SIMPLE_CASE = "(?-f)"


def _phone(value: str) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(value, None))
    except phonenumbers.NumberParseException:
        return False


BUILTIN: tuple[Detector, ...] = (
    Detector("private_key", _re(r"-----BEGIN ((?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?)-----"
                                r"[\s\S]{64,16384}?-----END \1-----"),
             keywords=("-----begin",), validate=v.pem_private_key),
    Detector("aws_access_key_id", _re(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b"),
             keywords=("akia", "asia", "abia", "acca"), issuers=(".amazonaws.com",),
             placeholder=lambda s: s.endswith("EXAMPLE")),
    Detector("aws_secret_access_key", _re(r"(?<![A-Za-z0-9/+])(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"),
             keywords=("aws", "secret"), context=("aws", "secret"), validate=v.aws_secret,
             issuers=(".amazonaws.com",), placeholder=lambda s: "EXAMPLEKEY" in s),
    Detector("github_token", _re(r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_\w{82})\b"),
             keywords=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
             validate=lambda s: s.startswith("github_pat_") or v.github_crc32(s),
             issuers=("github.com", ".github.com")),
    Detector("gitlab_token", _re(r"\bglpat-[\w-]{20}\b"), keywords=("glpat-",), issuers=("gitlab.com",)),
    Detector("slack_token", _re(r"\b(?:xox[baprseo]|xoxe\.xox[bp]|xapp)-[0-9A-Za-z-]{10,250}"),
             keywords=("xox", "xapp-"), issuers=("slack.com", ".slack.com")),
    Detector("slack_webhook", _re(r"https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/]{20,100}"),
             keywords=("hooks.slack.com",), issuers=("hooks.slack.com",)),
    Detector("stripe_secret_key", _re(r"\b(?:sk|rk)_(?:live|test|prod)_[A-Za-z0-9]{10,99}\b"),
             keywords=("sk_live", "sk_test", "sk_prod", "rk_live", "rk_test", "rk_prod"), issuers=("api.stripe.com",),
             placeholder=lambda s: "_test_" in s),
    Detector("google_api_key", _re(r"\bAIza[\w-]{35}(?![\w-])"), keywords=("aiza",),
             validate=lambda s: v.shannon_entropy(s) > 4.0, issuers=(".googleapis.com",)),
    Detector("openai_api_key", _re(r"\bsk-(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_-]{20,150}T3BlbkFJ[A-Za-z0-9_-]{20,150}\b"),
             keywords=("t3blbkfj",), issuers=("api.openai.com",)),
    Detector("anthropic_api_key", _re(r"\bsk-ant-(?:api03|admin01)-[\w-]{93}AA\b"), keywords=("sk-ant-",),
             issuers=("api.anthropic.com",)),
    Detector("twilio_api_key", _re(r"\bSK[0-9a-f]{32}\b"), keywords=("sk",),
             validate=lambda s: v.shannon_entropy(s[2:]) > 3.0, issuers=("api.twilio.com",)),
    Detector("sendgrid_api_key", _re(r"\bSG\.[\w-]{22}\.[\w-]{43}\b"), keywords=("sg.",), issuers=("api.sendgrid.com",)),
    Detector("npm_token", _re(r"\bnpm_[A-Za-z0-9]{36}\b"), keywords=("npm_",), validate=v.github_crc32,
             issuers=("registry.npmjs.org",)),
    Detector("pypi_token", _re(r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}"), keywords=("pypi-ageichlwas5vcmc",),
             issuers=("upload.pypi.org",)),
    Detector("jwt", _re(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*"), keywords=("eyj",),
             validate=v.jwt),
    Detector("url_credentials", _re(r"\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@]{1,64}:(?P<v>[^\s/@]{1,128})@[\w.-]+"),
             keywords=("://",), validate=v.url_password),
    Detector("generic_secret",
             # A name that says "hash"/"digest" holds a hash, not a secret.
             _re(r"(?i)\b(?![\w.-]{0,40}(?:hash|sha\d*|digest|checksum|etag))"
                 r"[\w.-]{0,40}(?:api[_-]?key|secret|token|passw(?:or)?d|pwd|credential|auth[_-]?key|access[_-]?key)"
                 r"[\w.-]{0,20}[\"']?\s{0,3}[:=]\s{0,3}[\"']?(?P<v>[A-Za-z0-9+/=_\-.!@#$%^&*~]{12,128})"),
             keywords=("key", "secret", "token", "passw", "pwd", "credential"), validate=v.generic_secret,
             max_length=207, keywords_inside=True),
    # Personal data.
    # Not inside a longer token: digit runs in hashes, tracking numbers or ids are not cards.
    # At least 14 digits: no brand the validator knows has fewer (12- and 13-digit ids abound).
    Detector("payment_card", _re(r"(?<![\w-])(?:\d[ -]?){13,18}\d(?![\w-])"), validate=v.card_number, secret=False,
             keywords=(DIGITS,), max_length=37, shape="card"),
    Detector("iban", _re(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), validate=v.iban, secret=False,
             keywords=(DIGITS,), max_length=43, shape="iban"),
    Detector("us_ssn", _re(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])"), validate=v.us_ssn, secret=False, keywords=("-",),
             max_length=11, shape="ssn"),
    Detector("uk_nino", _re(r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"), validate=v.uk_nino,
             secret=False, keywords=(DIGITS,), max_length=13, shape="nino"),
    Detector("uk_nhs_number", _re(r"(?<![\d-])\d{3}[ -]?\d{3}[ -]?\d{4}(?![\d-])"), validate=v.uk_nhs_number,
             context=("nhs",), secret=False, keywords=("nhs",), max_length=12),
    Detector("email", _re(r"\b[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}\b"), secret=False,
             keywords=("@",)),
    Detector("phone", _re(r"(?<![\w+])\+[1-9][\d ().-]{6,18}\d(?!\d)"), validate=_phone, secret=False, keywords=("+",),
             max_length=21),
)


def compile_custom(custom: CustomDetector) -> Detector:
    """A policy's custom detector (already validated by the loader)."""
    return Detector(custom.id, _re(custom.pattern), keywords=tuple(k.lower() for k in custom.keywords),
                    validate=v.BY_NAME.get(custom.validator) if custom.validator else None)
