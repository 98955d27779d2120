"""`tollgate policy ...`: check and lint a policy, explain decisions, run policy test cases,
print the JSON Schema."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import yaml

from tollgate.explain import explain
from tollgate.policy.diff import diff_policies
from tollgate.policy.lint import lint
from tollgate.policy.loader import PolicyError, load_policy
from tollgate.policy.schema import PolicySpec


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("policy", help="check, explain and test policies")
    cmds = parser.add_subparsers(dest="policy_command", required=True)
    check = cmds.add_parser("check", help="validate (errors, exit 2) and lint (warnings, exit 1)")
    check.add_argument("file")
    check.add_argument("--format", choices=["text", "json"], default="text")
    check.add_argument("--today", type=datetime.date.fromisoformat, default=None,
                       help="the date review_by is compared with (default: today)")
    test = cmds.add_parser("test", help="explain the decision for a request, or run a file of test cases")
    test.add_argument("file")
    test.add_argument("url", nargs="?")
    test.add_argument("--client", help="the client's source address, e.g. 10.20.1.7")
    test.add_argument("--user", help="a proxy-auth user name")
    test.add_argument("--method", default="GET")
    test.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'")
    test.add_argument("--body", default="", help="the body, or @FILE")
    test.add_argument("--cases", metavar="FILE", help="a YAML file of test cases (see the README)")
    test.add_argument("--no-resolve", action="store_true", help="skip name resolution (no DNS)")
    test.add_argument("--format", choices=["text", "json"], default="text")
    diff = cmds.add_parser("diff", help="which clients gain or lose which destinations and data classes")
    diff.add_argument("old")
    diff.add_argument("new")
    diff.add_argument("--format", choices=["text", "json"], default="text")
    schema = cmds.add_parser("schema", help="the JSON Schema of the policy format")
    schema.add_argument("--out", help="write it to this file instead of standard output")


def run(args: argparse.Namespace) -> int:
    return {"check": _check, "test": _test, "diff": _diff, "schema": _schema}[args.policy_command](args)


def _check(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.file)
    except PolicyError as e:
        if args.format == "json":
            print(json.dumps({"errors": [{"line": i.line, "path": i.path, "message": i.message} for i in e.issues],
                              "warnings": []}, indent=2))
        else:
            print(e)
        return 2
    findings = lint(policy, args.today)
    errors = [f for f in findings if f.severity == "error"]
    warnings = [f for f in findings if f.severity == "warning"]
    if args.format == "json":
        print(json.dumps({"errors": [f.as_dict() for f in errors], "warnings": [f.as_dict() for f in warnings]}, indent=2))
    else:
        for f in findings:
            print(f"{args.file}:{f.line}: {f.severity}: {f.rule}: {f.message}")
        print(f"{args.file}: {len(errors)} error(s), {len(warnings)} warning(s)")
    return 2 if errors else 1 if warnings else 0


def _headers(values: list[str]) -> list[tuple[str, str]]:
    out = []
    for h in values:
        name, sep, value = h.partition(":")
        if not sep:
            raise ValueError(f"--header {h!r}: use 'Name: value'")
        out.append((name.strip(), value.strip()))
    return out


def _body(value: str) -> bytes:
    return Path(value[1:]).read_bytes() if value.startswith("@") else value.encode()


def _test(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.file)
    except PolicyError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        if args.cases:
            return _run_cases(policy, args)
        if not args.url or not args.client:
            print("tollgate policy test: give URL and --client, or --cases FILE", file=sys.stderr)
            return 2
        result = explain(policy, args.client, args.url, user=args.user, method=args.method,
                         headers=_headers(args.header), body=_body(args.body), resolve_names=not args.no_resolve)
    except (ValueError, OSError) as e:
        print(f"tollgate policy test: {e}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(result.as_dict(), indent=2))
    else:
        for step in result.steps:
            print(f"  {step.stage:<12} {step.outcome:<14} {step.detail}")
        for f in result.findings:
            print(f"  finding      {f['detector']} in {f['where']}: {f['preview']} → {f.get('would', f['action'])} ({f['why']})")
        print(f"decision: {result.decision} ({result.reason})" + (f", rule {result.rule}" if result.rule else "")
              + ("; report-only: the proxy audits it as a would-deny and lets the traffic pass" if result.report_only else ""))
    return 0


def _run_cases(policy, args: argparse.Namespace) -> int:
    """tests: [{name, client, url, method?, user?, headers?, body?, expect, reason?}]"""
    data = yaml.safe_load(Path(args.cases).read_text())
    cases = (data or {}).get("tests") if isinstance(data, dict) else None
    if not isinstance(cases, list):
        raise ValueError(f"{args.cases}: expected a top-level 'tests:' list")
    failures = 0
    for i, case in enumerate(cases):
        name = case.get("name", f"case {i + 1}") if isinstance(case, dict) else f"case {i + 1}"
        problem = _case_problem(case)
        if problem:
            raise ValueError(f"{args.cases}: test {name!r}: {problem}")
        result = explain(policy, str(case["client"]), case["url"], user=case.get("user"),
                         method=case.get("method", "GET"),
                         headers=[(str(k), str(v)) for k, v in (case.get("headers") or {}).items()],
                         body=str(case.get("body", "")).encode(), resolve_names=not args.no_resolve)
        ok = result.decision == case["expect"] and case.get("reason", result.reason) == result.reason
        failures += not ok
        note = " [report-only]" if result.report_only else ""
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {result.decision} ({result.reason}){note}"
              + ("" if ok else f", expected {case['expect']}" + (f" ({case['reason']})" if case.get("reason") else "")))
    print(f"{len(cases) - failures} passed, {failures} failed")
    return 1 if failures else 0


def _diff(args: argparse.Namespace) -> int:
    """Exit 0: no change that matters; 1: changes (listed); 2: a file does not load."""
    try:
        old, new = load_policy(args.old), load_policy(args.new)
    except PolicyError as e:
        print(e, file=sys.stderr)
        return 2
    result = diff_policies(old, new)
    if args.format == "json":
        print(json.dumps(result.as_dict(), indent=2))
        return 1 if not result.empty() else 0
    for c in result.clients:
        print(f"client {c.client}" + (f" ({c.status})" if c.status != "changed" else "") + ":")
        for line in c.gained:
            print(f"  + {line}")
        for line in c.lost:
            print(f"  - {line}")
        for line in c.changed:
            print(f"  ~ {line}")
    for title, lines in (("dlp", result.dlp), ("other", result.other)):
        if lines:
            print(f"{title}:")
            for line in lines:
                print(f"  ~ {line}")
    if result.empty():
        print("no change in who may reach what or send which data")
    return 1 if not result.empty() else 0


_CASE_KEYS = {"name", "client", "url", "method", "user", "headers", "body", "expect", "reason"}
_DECISIONS = {"allow", "deny", "block", "redact", "report", "uninspectable"}


def _case_problem(case: object) -> str | None:
    if not isinstance(case, dict):
        return "each test is a mapping with client, url and expect"
    unknown = sorted(set(case) - _CASE_KEYS)
    if unknown:
        return f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_CASE_KEYS))}"
    missing = [k for k in ("client", "url", "expect") if k not in case]
    if missing:
        return f"missing {', '.join(missing)}"
    if case["expect"] not in _DECISIONS:
        return f"expect {case['expect']!r}: use one of {', '.join(sorted(_DECISIONS))}"
    if not isinstance(case.get("headers") or {}, dict):
        return "headers: a mapping of name: value"
    return None


def schema_text() -> str:
    schema = PolicySpec.model_json_schema()
    # The loader accepts "email: report" as shorthand for "email: {action: report}".
    detectors = schema["$defs"]["DlpSpec"]["properties"]["detectors"]
    detectors["additionalProperties"] = {"anyOf": [{"$ref": "#/$defs/DetectorSpec"},
                                                   schema["$defs"]["DetectorSpec"]["properties"]["action"]]}
    clients = schema["$defs"]["DestinationSpec"]["properties"]["clients"]
    clients["anyOf"] = [{"const": "*"}, {"type": "array", "items": {"type": "string"}}]
    del clients["type"], clients["items"]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Tollgate policy, format version 1"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def _schema(args: argparse.Namespace) -> int:
    if args.out:
        Path(args.out).write_text(schema_text())
    else:
        sys.stdout.write(schema_text())
    return 0
