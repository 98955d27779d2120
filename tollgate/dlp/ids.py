"""Built-in detector ids: the names policies and the audit log use (see DESIGN.md)."""

SECRET_DETECTORS = (
    "private_key", "aws_access_key_id", "aws_secret_access_key", "github_token",
    "gitlab_token", "slack_token", "slack_webhook", "stripe_secret_key", "google_api_key",
    "openai_api_key", "anthropic_api_key", "twilio_api_key", "sendgrid_api_key", "npm_token",
    "pypi_token", "jwt", "url_credentials", "generic_secret",
)
PERSONAL_DATA_DETECTORS = ("payment_card", "iban", "us_ssn", "uk_nino", "uk_nhs_number", "email", "phone")
BUILTIN_DETECTORS = frozenset(SECRET_DETECTORS + PERSONAL_DATA_DETECTORS)

# Validators a custom detector may name (implemented by the DLP stage).
VALIDATORS = frozenset({"luhn", "iban", "uk_nhs_number", "uk_nino", "us_ssn", "github_crc32", "jwt", "entropy"})
