"""Load a policy file: YAML (with line numbers) → schema validation → cross-checks → Policy.

Every problem in the file is reported in one pass as ``file:line: path: message``; the
caller gets either a complete, immutable Policy or a PolicyError, never half a policy.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tollgate.dlp.ids import BUILTIN_DETECTORS
from tollgate.policy import model
from tollgate.policy.hosts import normalize_host, parse_host_pattern
from tollgate.policy.schema import PolicySpec, parse_cidr

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class PolicyIssue:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}: {where}{self.message}"


class PolicyError(Exception):
    """The policy cannot be used; ``issues`` lists every problem found."""

    def __init__(self, issues: list[PolicyIssue]):
        self.issues = sorted(issues, key=lambda i: i.line)
        super().__init__("\n".join(str(i) for i in self.issues))


def load_policy(path: str | Path) -> model.Policy:
    """Read and validate a policy file. Raises PolicyError with file:line for every problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PolicyError([PolicyIssue(str(path), 0, "", f"cannot read policy file: {e.strerror}")]) from None
    return parse_policy(data, str(path))


def parse_policy(data: bytes, filename: str = "<policy>") -> model.Policy:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError([PolicyIssue(filename, 1, "", f"not UTF-8 text: {e}")]) from None
    raw, lines = _yaml_with_lines(text, filename)
    if not isinstance(raw, dict):
        raise PolicyError([PolicyIssue(filename, 1, "", "the policy must be a YAML mapping (version:, clients:, destinations:, ...)")])
    try:
        spec = PolicySpec.model_validate(raw)
    except ValidationError as e:
        raise PolicyError([_issue_from_pydantic(err, raw, lines, filename) for err in e.errors()]) from None
    issues = [PolicyIssue(filename, _line(lines, p), _dotted(p), msg) for p, msg in _cross_check(spec)]
    if issues:
        raise PolicyError(issues)
    return _compile(spec, filename, hashlib.sha256(data).hexdigest(), lines)


# --- YAML with line numbers -------------------------------------------------------------

def _yaml_with_lines(text: str, filename: str) -> tuple[Any, dict[Path_, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(e, "problem", None) or str(e)
        raise PolicyError([PolicyIssue(filename, line, "", f"YAML syntax error: {problem}")]) from None
    if node is None:
        raise PolicyError([PolicyIssue(filename, 1, "", "the policy file is empty")])
    lines: dict[Path_, int] = {}
    issues: list[PolicyIssue] = []
    constructor = yaml.SafeLoader("")  # only for scalar construction (ints, bools, dates)

    def build(n: yaml.Node, path: Path_) -> Any:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in n.value:
                key = build(key_node, path + ("<key>",))
                if not isinstance(key, (str, int)):
                    issues.append(PolicyIssue(filename, key_node.start_mark.line + 1, _dotted(path), "keys must be plain names"))
                    continue
                if key in out:
                    issues.append(PolicyIssue(filename, key_node.start_mark.line + 1, _dotted(path + (key,)),
                                              f"duplicate key {key!r} (first at line {lines[path + (key,)]})"))
                    continue
                lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = build(value_node, path + (key,))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(item, path + (i,)) for i, item in enumerate(n.value)]
        return constructor.construct_object(n, deep=True)

    value = build(node, ())
    if issues:
        raise PolicyError(issues)
    return value, lines


def _line(lines: dict[Path_, int], path: Path_) -> int:
    for i in range(len(path), -1, -1):
        if path[:i] in lines:
            return lines[path[:i]]
    return 1


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _issue_from_pydantic(err: Any, raw: Any, lines: dict[Path_, int], filename: str) -> PolicyIssue:
    # Keep only the loc parts that exist in the data (pydantic adds union/validator tags).
    path: list[str | int] = []
    node = raw
    for part in err["loc"]:
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            path.append(part)
        elif err["type"] in ("extra_forbidden", "missing") and part == err["loc"][-1]:
            path.append(part)
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        message = f"unknown key {path[-1]!r}"
    elif kind == "missing":
        message = f"missing required key {path[-1]!r}"
        path = path[:-1] + [path[-1]]
    elif kind == "literal_error" and "expected" in err.get("ctx", {}):
        message = f"{err.get('input')!r} is not allowed; use {err['ctx']['expected']}"
    elif kind.endswith("_type") or kind.endswith("_parsing"):
        message = f"{msg} (got {err.get('input')!r})"
    else:
        message = msg.removeprefix("Value error, ")
    p = tuple(path)
    line = _line(lines, p if kind != "missing" else p[:-1])
    return PolicyIssue(filename, line, _dotted(p), message)


# --- cross-references -------------------------------------------------------------------

def _cross_check(spec: PolicySpec) -> list[tuple[Path_, str]]:
    problems: list[tuple[Path_, str]] = []
    names: dict[str, int] = {}
    users: dict[str, str] = {}
    for i, c in enumerate(spec.clients):
        if c.name in names:
            problems.append((("clients", i, "name"), f"duplicate client name {c.name!r} (also clients[{names[c.name]}])"))
        names.setdefault(c.name, i)
        for j, u in enumerate(c.users):
            if u in users and users[u] != c.name:
                problems.append((("clients", i, "users", j), f"user {u!r} is already mapped to client {users[u]!r}"))
            users.setdefault(u, c.name)
    custom_ids: dict[str, int] = {}
    for i, d in enumerate(spec.dlp.custom):
        if d.id in BUILTIN_DETECTORS:
            problems.append((("dlp", "custom", i, "id"), f"{d.id!r} is a built-in detector id; pick another id"))
        if d.id in custom_ids:
            problems.append((("dlp", "custom", i, "id"), f"duplicate custom detector id {d.id!r}"))
        custom_ids.setdefault(d.id, i)
    known_detectors = BUILTIN_DETECTORS | set(custom_ids)
    for det in spec.dlp.detectors:
        if det not in known_detectors:
            problems.append((("dlp", "detectors", det), f"unknown detector {det!r}; see the detector ids in the README"))
    for i, dest in enumerate(spec.destinations):
        for j, ref in enumerate(dest.clients):
            if ref != "*" and ref not in names:
                problems.append((("destinations", i, "clients", j), f"unknown client {ref!r}; defined clients: {', '.join(names) or 'none'}"))
        if dest.dlp:
            for j, det in enumerate(dest.dlp.allow):
                if det not in known_detectors:
                    problems.append((("destinations", i, "dlp", "allow", j), f"unknown detector {det!r}"))
        if len(set(dest.ports)) != len(dest.ports):
            problems.append((("destinations", i, "ports"), "duplicate port"))
    return problems


# --- compile ----------------------------------------------------------------------------

def _compile(spec: PolicySpec, filename: str, sha256: str, lines: dict[Path_, int]) -> model.Policy:
    clients = tuple(
        model.ClientGroup(name=c.name, cidrs=tuple(parse_cidr(x) for x in c.cidrs), users=tuple(c.users),
                          line=lines.get(("clients", i), 0))
        for i, c in enumerate(spec.clients)
    )
    destinations = []
    for i, d in enumerate(spec.destinations):
        if d.host is not None:
            name, wildcard = parse_host_pattern(d.host)
            rule_id, cidr = ("*." + name if wildcard else name), None
        else:
            name, wildcard, cidr = None, False, parse_cidr(d.cidr or "")
            rule_id = str(cidr)
        destinations.append(model.Destination(
            rule_id=rule_id, host=name, wildcard=wildcard, cidr=cidr, ports=tuple(d.ports),
            clients=None if d.clients == ["*"] else frozenset(d.clients), mode=d.mode, enforcement=d.enforcement,
            owner=d.owner, justification=d.justification, review_by=d.review_by,
            pins=tuple(d.pins), dlp_allow=frozenset(d.dlp.allow) if d.dlp else frozenset(),
            line=lines.get(("destinations", i), 0),
        ))
    dlp = model.DlpSettings(
        default_action=spec.dlp.default_action,
        detectors={k: model.DetectorSetting(v.action, v.block_at, v.mode) for k, v in spec.dlp.detectors.items()},
        custom=tuple(model.CustomDetector(c.id, c.pattern, tuple(c.keywords), c.action, c.validator, c.mode,
                                   line=lines.get(("dlp", "custom", i), 0))
                     for i, c in enumerate(spec.dlp.custom)),
        uninspectable=spec.dlp.uninspectable,
        max_body_bytes=spec.dlp.max_body_bytes,
        large_bodies=spec.dlp.large_bodies,
        stream_max_bytes=spec.dlp.stream_max_bytes,
    )
    network = model.NetworkSettings(
        deny_private=spec.network.deny_private,
        allow_cidrs=tuple(parse_cidr(c) for c in spec.network.allow_cidrs),
        resolve={
            normalize_host(k): tuple(ipaddress.ip_address(a) for a in ([v] if isinstance(v, str) else v))
            for k, v in spec.network.resolve.items()
        },
    )
    return model.Policy(
        version=spec.version, clients=clients, destinations=tuple(destinations), dlp=dlp, network=network,
        upstream=model.UpstreamSettings(tuple(spec.upstream.extra_ca_files), spec.upstream.min_tls_version),
        audit=model.AuditSettings(spec.audit.path, spec.audit.rotate_bytes, spec.audit.evidence_public_key),
        mode=spec.mode, source=filename, sha256=sha256,
    )
