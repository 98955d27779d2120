"""`tollgate policy test`, `diff` and `schema` on the example policy and small variants."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tollgate.cli import main
from tollgate.explain import explain
from tollgate.policy.diff import diff_policies
from tollgate.policy.loader import load_policy, parse_policy
from tollgate.policy_cli import schema_text

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "policies" / "example.yaml"
CASES = REPO / "policies" / "tests" / "example-tests.yaml"
AWS_KEY = "AKIAZ3MHVUTQ7PL2XKQ4"  # synthetic, not a real key


def variant(tmp_path: Path, edit, name: str = "new.yaml") -> Path:
    """A copy of the example policy with `edit(text) -> text` applied."""
    path = tmp_path / name
    path.write_text(edit(EXAMPLE.read_text()))
    return path


# --- policy test: one request ------------------------------------------------------------

def test_explains_each_stage_and_the_rule(capsys):
    code = main(["policy", "test", str(EXAMPLE), "--client", "10.20.1.7", "https://api.stripe.com/v1/charges",
                 "--no-resolve"])
    out = capsys.readouterr().out
    assert code == 0
    assert "client 'payments'" in out and "api.stripe.com:443 allowed by api.stripe.com" in out
    assert out.splitlines()[-1] == "decision: allow (allowed), rule api.stripe.com"


def test_dlp_findings_are_masked(tmp_path, capsys):
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"note": AWS_KEY}))
    code = main(["policy", "test", str(EXAMPLE), "--client", "10.20.1.7", "--method", "POST",
                 "--header", "Content-Type: application/json", "--body", f"@{body}", "--no-resolve",
                 "https://api.stripe.com/v1/charges"])
    out = capsys.readouterr().out
    assert code == 0
    assert "aws_access_key" in out and "decision: block (dlp_blocked)" in out
    assert AWS_KEY not in out and AWS_KEY[:4] in out  # masked preview only


def test_json_output_and_the_client_gate(capsys):
    main(["policy", "test", str(EXAMPLE), "--client", "10.20.2.15", "https://api.stripe.com/", "--format", "json",
          "--no-resolve"])
    result = json.loads(capsys.readouterr().out)
    assert (result["decision"], result["reason"], result["rule"]) == ("deny", "client_not_allowed", "api.stripe.com")
    assert [s["stage"] for s in result["steps"]] == ["client", "destination"]


def test_resolution_uses_the_policy_network_section():
    policy = load_policy(EXAMPLE)
    result = explain(policy, "127.0.0.1", "https://settlement.internal.example/", resolve_names=True)
    # listed in network.resolve but not on the allowlist: denied before any lookup
    assert (result.decision, result.reason) == ("deny", "destination_not_allowed")


def test_a_proxy_auth_user_maps_to_its_client():
    policy = load_policy(EXAMPLE)
    result = explain(policy, "192.0.2.50", "https://sms.notifications.example.net/", user="notify-worker",
                     resolve_names=False)
    assert (result.decision, result.steps[0].detail) == ("allow", "client 'notify'")


def test_usage_errors_exit_2(capsys):
    assert main(["policy", "test", str(EXAMPLE), "https://api.stripe.com/"]) == 2
    assert main(["policy", "test", str(EXAMPLE), "--client", "10.20.1.7", "ftp://x/"]) == 2
    assert "not an http(s) URL" in capsys.readouterr().err


# --- policy test: a file of cases --------------------------------------------------------

def test_the_committed_cases_pass_on_the_example(capsys):
    assert main(["policy", "test", str(EXAMPLE), "--cases", str(CASES), "--no-resolve"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "8 passed, 0 failed"


def test_a_policy_change_that_breaks_a_case_fails_ci(tmp_path, capsys):
    # Someone lets every client reach Stripe: the "notify may not reach Stripe" case catches it.
    changed = variant(tmp_path, lambda t: t.replace("    clients: [payments]\n    mode: intercept\n    owner: payments",
                                                    "    clients: \"*\"\n    mode: intercept\n    owner: payments"))
    assert main(["policy", "test", str(changed), "--cases", str(CASES), "--no-resolve"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  notify may not reach Stripe: allow (allowed), expected deny (client_not_allowed)" in out
    assert out.splitlines()[-1] == "7 passed, 1 failed"


@pytest.mark.parametrize("case,message", [
    ({"client": "10.20.1.7", "url": "https://api.stripe.com/", "expected": "allow"}, "unknown key(s) expected"),
    ({"client": "10.20.1.7", "url": "https://api.stripe.com/"}, "missing expect"),
    ({"client": "10.20.1.7", "url": "https://api.stripe.com/", "expect": "allowed"}, "expect 'allowed'"),
])
def test_a_malformed_case_is_a_clear_error(tmp_path, capsys, case, message):
    cases = tmp_path / "cases.yaml"
    cases.write_text(yaml.safe_dump({"tests": [case]}))
    assert main(["policy", "test", str(EXAMPLE), "--cases", str(cases), "--no-resolve"]) == 2
    assert message in capsys.readouterr().err


# --- report-only in explanations ---------------------------------------------------------

def test_report_only_policy_still_says_what_it_would_decide(tmp_path, capsys):
    report = variant(tmp_path, lambda t: t.replace("version: 1\n", "version: 1\nmode: report\n", 1))
    result = explain(load_policy(report), "10.20.2.15", "https://api.stripe.com/", resolve_names=False)
    assert (result.decision, result.reason, result.report_only) == ("deny", "client_not_allowed", True)
    main(["policy", "test", str(report), "--client", "10.20.2.15", "https://api.stripe.com/", "--no-resolve"])
    assert "report-only: the proxy audits it as a would-deny" in capsys.readouterr().out


def test_report_only_detector():
    text = EXAMPLE.read_text().replace("    aws_access_key_id: block\n", "    aws_access_key_id: {action: block, mode: report}\n")
    policy = parse_policy(text.encode(), "report-detector.yaml")
    result = explain(policy, "10.20.1.7", "https://api.stripe.com/v1/charges", method="POST",
                     headers=[("Content-Type", "application/json")], body=json.dumps({"k": AWS_KEY}).encode(),
                     resolve_names=False)
    assert (result.decision, result.report_only) == ("block", True)


# --- diff --------------------------------------------------------------------------------

def test_diff_lists_what_each_client_gains_and_loses(tmp_path, capsys):
    new = variant(tmp_path, lambda t: t
                  .replace("    clients: [ops]\n    mode: intercept\n    owner: platform@example.org\n"
                           "    justification: Release automation",
                           "    clients: [ops, payments]\n    mode: intercept\n    owner: platform@example.org\n"
                           "    justification: Release automation")
                  .replace("      allow: [payment_card, stripe_secret_key]", "      allow: [stripe_secret_key, email]")
                  .replace("  - host: hooks.slack.com\n    clients: \"*\"", "  - host: hooks.slack.com\n    clients: [ops]")
                  .replace("    email: {action: report, block_at: 25}", "    email: {action: report}"))
    assert main(["policy", "diff", str(EXAMPLE), str(new)]) == 1
    out = capsys.readouterr().out
    assert "client payments:\n  + api.github.com:443 (intercept)\n  - hooks.slack.com:443\n" \
           "  ~ api.stripe.com:443: may now send email; may no longer send payment_card\n" in out
    assert "client notify:\n  - hooks.slack.com:443\n" in out
    assert "client ops:" not in out  # ops keeps everything it had
    assert "email: report, block_at 25 → report (weaker: every client may send more)" in out


def test_diff_of_identical_policies_is_empty(capsys):
    assert main(["policy", "diff", str(EXAMPLE), str(EXAMPLE)]) == 0
    assert "no change" in capsys.readouterr().out


def test_diff_new_client_and_report_mode(tmp_path):
    new = variant(tmp_path, lambda t: t
                  .replace("version: 1\n", "version: 1\nmode: report\n", 1)
                  .replace("clients:\n  - name: payments", "clients:\n  - name: billing\n    cidrs: [10.20.9.0/24]\n"
                           "  - name: payments"))
    result = diff_policies(load_policy(EXAMPLE), load_policy(new))
    billing = next(c for c in result.clients if c.client == "billing")
    assert billing.status == "added" and billing.gained == ["hooks.slack.com:443 (passthrough)"]
    assert result.other == ["mode: enforce → report"]


def test_diff_json(tmp_path, capsys):
    new = variant(tmp_path, lambda t: t.replace("    jwt: report\n", "    jwt: block\n"))
    assert main(["policy", "diff", str(EXAMPLE), str(new), "--format", "json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"clients": [], "dlp": ["jwt: report → block"], "other": []}


# --- schema ------------------------------------------------------------------------------

def test_committed_schema_is_the_generated_one():
    assert (REPO / "policies" / "schema.json").read_text() == schema_text(), \
        "regenerate it: tollgate policy schema --out policies/schema.json"


class _EditorYaml(yaml.SafeLoader):
    """Reads dates as strings, as editors' YAML language servers do before applying a schema."""


_EditorYaml.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:timestamp"]
                                       for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}


@pytest.mark.parametrize("path", [EXAMPLE, REPO / "tests" / "data" / "policies" / "contract-example.yaml"])
def test_example_policies_validate_against_the_schema(path):
    jsonschema.validate(yaml.load(path.read_text(), _EditorYaml), json.loads(schema_text()))


def test_schema_rejects_a_typo_like_the_loader():
    data = yaml.load(EXAMPLE.read_text(), _EditorYaml)
    data["destinations"][0]["mdoe"] = "intercept"
    with pytest.raises(jsonschema.ValidationError, match="mdoe"):
        jsonschema.validate(data, json.loads(schema_text()))
