"""`tollgate policy check`: each lint rule on its fixture, exit codes and the JSON format."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from tollgate.cli import main
from tollgate.policy.lint import lint, shared_suffixes
from tollgate.policy.loader import load_policy

REPO = Path(__file__).resolve().parents[2]
LINT = REPO / "tests" / "data" / "policies" / "lint"
TODAY = datetime.date(2026, 11, 23)


def rules(name: str) -> list[tuple[str, str, int]]:
    return [(f.severity, f.rule, f.line) for f in lint(load_policy(LINT / name), TODAY)]


def test_a_clean_policy_has_no_findings():
    assert rules("clean.yaml") == []


def test_review_date_in_the_past_warns_and_today_does_not():
    assert rules("review_expired.yaml") == [("warning", "review-expired", 6)]
    policy = load_policy(LINT / "review_expired.yaml")
    assert lint(policy, datetime.date(2026, 1, 31)) == []


def test_missing_owner_justification_or_review_date_warns():
    findings = lint(load_policy(LINT / "missing_metadata.yaml"), TODAY)
    assert [(f.rule, f.line) for f in findings] == [("missing-metadata", 6)]
    assert "justification, review_by" in findings[0].message and "owner" not in findings[0].message


def test_wildcards_over_shared_multi_tenant_suffixes_warn():
    findings = lint(load_policy(LINT / "shared_suffix.yaml"), TODAY)
    assert [(f.rule, f.line) for f in findings] == [("shared-suffix-wildcard", 6), ("shared-suffix-wildcard", 12)]
    assert "s3.amazonaws.com" in findings[0].message and "blob.core.windows.net" in findings[1].message
    # the list lives in one data file and has the suffixes the issue names
    assert {"amazonaws.com", "cloudfront.net", "azurewebsites.net", "herokuapp.com", "github.io",
            "blob.core.windows.net"} <= shared_suffixes()


def test_cidrs_wider_than_slash_24_or_slash_48_warn():
    findings = lint(load_policy(LINT / "wide_cidr.yaml"), TODAY)
    assert [(f.severity, f.rule) for f in findings] == [("warning", "wide-cidr")] * 3
    text = " ".join(f.message for f in findings)
    assert "10.0.0.0/16" in text and "2001:db8::/32" in text and "198.51.100.0/23" in text
    assert "10.1.0.0/24" not in text and "2001:db8:1::/48" not in text


def test_slash_zero_is_an_error_for_clients_and_destinations():
    assert rules("cidr_everything.yaml") == [("error", "cidr-everything", 3), ("error", "cidr-everything", 6)]


def test_duplicate_and_shadowed_entries_warn():
    assert rules("duplicate_shadowed.yaml") == [("warning", "duplicate", 15), ("warning", "shadowed", 22)]


def test_passthrough_with_dlp_settings_warns():
    assert rules("passthrough_dlp.yaml") == [("warning", "passthrough-dlp", 6)]


def test_a_client_no_entry_names_warns():
    findings = lint(load_policy(LINT / "unused_client.yaml"), TODAY)
    assert [(f.rule, f.line) for f in findings] == [("unused-client", 5)]
    assert "'legacy'" in findings[0].message


def test_report_only_mode_warns_so_it_is_not_forgotten():
    assert rules("report_only.yaml") == [("warning", "report-only", 1), ("warning", "report-only", 7)]


@pytest.mark.parametrize("name,code", [("clean.yaml", 0), ("unused_client.yaml", 1), ("cidr_everything.yaml", 2)])
def test_exit_codes_separate_errors_from_warnings(name, code, capsys):
    assert main(["policy", "check", str(LINT / name), "--today", "2026-11-23"]) == code
    out = capsys.readouterr().out
    assert out.splitlines()[-1].endswith({0: "0 error(s), 0 warning(s)", 1: "0 error(s), 1 warning(s)",
                                          2: "2 error(s), 0 warning(s)"}[code])


def test_text_output_names_file_and_line(capsys):
    main(["policy", "check", str(LINT / "passthrough_dlp.yaml"), "--today", "2026-11-23"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"{LINT / 'passthrough_dlp.yaml'}:6: warning: passthrough-dlp: hooks.example.com")


def test_json_format_for_ci(capsys):
    assert main(["policy", "check", str(LINT / "duplicate_shadowed.yaml"), "--format", "json", "--today", "2026-11-23"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == []
    assert [(w["rule"], w["line"], w["severity"]) for w in report["warnings"]] == [
        ("duplicate", 15, "warning"), ("shadowed", 22, "warning")]


def test_invalid_policy_is_exit_2_with_file_line(capsys):
    bad = REPO / "tests" / "data" / "policies" / "unknown_key.yaml"
    assert main(["policy", "check", str(bad)]) == 2
    assert f"{bad}:" in capsys.readouterr().out
    assert main(["policy", "check", str(bad), "--format", "json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] and report["errors"][0]["line"] > 0


def test_the_example_policy_is_lint_clean(capsys):
    assert main(["policy", "check", str(REPO / "policies" / "example.yaml"), "--today", "2026-11-23"]) == 0


def test_stream_mode_with_a_redacting_detector_warns():
    assert rules("stream_redact.yaml") == [("warning", "stream-redact", 1)]
    (finding,) = lint(load_policy(LINT / "stream_redact.yaml"), TODAY)
    assert "payment_card" in finding.message and "blocks" in finding.message
