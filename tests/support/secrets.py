"""Fake but well-formed secrets and personal data for DLP tests, built at import time.

None of these is a live credential; checksummed formats (GitHub, npm) get a valid checksum
so that the validators accept them. Test ids use the labels, never the values.
"""

from __future__ import annotations

import base64
import json
import zlib

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _crc_token(prefix: str, body: str) -> str:
    value, encoded = zlib.crc32(body.encode()), ""
    while value:
        value, digit = divmod(value, 62)
        encoded = _BASE62[digit] + encoded
    return f"{prefix}{body}{encoded.rjust(6, '0')}"


def _jwt() -> str:
    enc = lambda obj: base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc({'sub': '1234567890', 'name': 'Tollgate Test'})}.c2lnbmF0dXJlLXNpZw"


PEM_KEY = ("-----BEGIN PRIVATE KEY-----\n" + "\n".join(["MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj"] * 4)
           + "\n-----END PRIVATE KEY-----")

# label → (detector id, value)
POSITIVE = {
    "private_key": ("private_key", PEM_KEY),
    "aws_access_key_id": ("aws_access_key_id", "AKIAZ3MHVUTQ7PL2XKQ4"),
    "aws_secret_with_context": ("aws_secret_access_key", "aws_secret_access_key=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"),
    "github_token": ("github_token", _crc_token("ghp_", "Z3MhvUtQ7pL2xKq4Rt8wB6cF1jD5gS")),
    "gitlab_token": ("gitlab_token", "glpat-Zx3MhvUtQ7pL2xKq4Rt8"),
    "slack_token": ("slack_token", "xoxb-1234567890123-1234567890123-Zx3MhvUtQ7pL2xKq4Rt8wB6c"),
    "slack_webhook": ("slack_webhook", "https://hooks.slack.com/services/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"),
    "stripe_live": ("stripe_secret_key", "sk_live_Zx3MhvUtQ7pL2xKq4Rt8wB6cF1jD5g"),
    "google_api_key": ("google_api_key", "AIzaSyZx3MhvUtQ7pL2xKq4Rt8wB6cF1jD5gS0a"),
    "openai_api_key": ("openai_api_key", "sk-proj-Zx3MhvUtQ7pL2xKq4Rt8wB6cT3BlbkFJZx3MhvUtQ7pL2xKq4Rt8wB6c"),
    "anthropic_api_key": ("anthropic_api_key", "sk-ant-api03-" + "Zx3MhvUtQ7pL2xKq4Rt8wB6cF1jD5gS0aZeUoIiPQr" * 2
                          + "Zx3MhvUtQ" + "AA"),
    "twilio_api_key": ("twilio_api_key", "SK0f3a9b8c7d6e5f4a3b2c1d0e9f8a7b6c"),
    "sendgrid_api_key": ("sendgrid_api_key", "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"),
    "npm_token": ("npm_token", _crc_token("npm_", "Z3MhvUtQ7pL2xKq4Rt8wB6cF1jD5gS")),
    "pypi_token": ("pypi_token", "pypi-AgEIcHlwaS5vcmc" + "Zx3MhvUtQ7pL2xKq4Rt8wB6cF1jD5gS0aZeUoIiPQr1234567890"),
    "jwt": ("jwt", _jwt()),
    "url_credentials": ("url_credentials", "postgres://app:Zx3MhvUtQ7pL@db.internal.example/app"),
    "generic_secret": ("generic_secret", 'client_secret = "Zx3!MhvUtQ7pL2xKq4"'),
    "visa": ("payment_card", "4111 1111 1111 1111"),
    "mastercard_2series": ("payment_card", "2223000048400011"),
    "amex": ("payment_card", "3782-822463-10005"),
    "visa_19_digits": ("payment_card", "4000000000000000006"),
    "iban_gb": ("iban", "GB82 WEST 1234 5698 7654 32"),
    "iban_de": ("iban", "DE89370400440532013000"),
    "us_ssn": ("us_ssn", "536-22-1234"),
    "uk_nino": ("uk_nino", "AB 12 34 56 C"),
    "uk_nhs_number": ("uk_nhs_number", "NHS number 943 476 5919"),
    "email": ("email", "jane.doe@example.org"),
    "phone": ("phone", "+44 20 7946 0958"),
}

# label → text that must produce NO finding of the listed detector (near misses).
NEGATIVE = {
    "luhn_failing_16_digits": ("payment_card", "order id 4111111111111112"),
    "unknown_brand_luhn_ok": ("payment_card", "ref 9999999999999995"),
    "repeated_digit": ("payment_card", "0000 0000 0000 0000"),
    "mixed_separators": ("payment_card", "4111-1111 1111-1111"),
    "uuid": ("payment_card", "id 123e4567-e89b-12d3-a456-426614174000"),
    "timestamp_ms": ("payment_card", "ts 1700000000123"),
    "version_string": ("payment_card", "version 1.2.3.4567.8901"),
    "sha1_hash": ("aws_secret_access_key", "aws commit 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12fd4e1c6"),
    "sha256_hex": ("generic_secret", "token_hash: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
    "github_bad_crc": ("github_token", "ghp_Z3MhvUtQ7pL2xKq4Rt8wB6cF1jD5gSAAAAAA"),
    "ssn_000_area": ("us_ssn", "000-12-3456"),
    "ssn_666_area": ("us_ssn", "666-12-3456"),
    "ssn_9xx_area": ("us_ssn", "912-12-3456"),
    "ssn_sample": ("us_ssn", "078-05-1120"),
    "nino_bad_prefix": ("uk_nino", "GB 12 34 56 C"),
    "nino_bad_suffix": ("uk_nino", "AB 12 34 56 E"),
    "nhs_without_context": ("uk_nhs_number", "call 943 476 5919"),
    "nhs_bad_checksum": ("uk_nhs_number", "NHS 943 476 5918"),
    "iban_bad_checksum": ("iban", "GB83 WEST 1234 5698 7654 32"),
    "jwt_not_json": ("jwt", "eyJub3QganNvbiBhdCBhbGw.eyJzdWIiOiAiMTIzNDU2Nzg5MCJ9.sig"),
    "placeholder_password": ("generic_secret", 'password = "${DB_PASSWORD}"'),
    "low_entropy_password": ("generic_secret", 'password = "aaaaaaaaaaaaaaaa"'),
    "url_placeholder_password": ("url_credentials", "https://user:****@example.com/"),
    "phone_without_plus": ("phone", "call 020 7946 0958"),
    "aws_secret_without_context": ("aws_secret_access_key", "blob Hq7vN2pL9xK4mR8tW3yB6cF1jD5gS0aZeUoIiPQr"),
    "stripe_publishable": ("stripe_secret_key", "pk_live_Zx3MhvUtQ7pL2xKq4Rt8wB6cF1jD5g"),
    "base64_image": ("payment_card", "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="),
}
