"""What a policy change grants and takes away, client by client. Pure.

A client's reach is every (destination entry, port) it may use, with the entry's mode,
enforcement and the data classes (`dlp.allow`) it may send there. The DLP section is
compared separately: a detector whose action weakens lets every client send more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tollgate.policy.model import Destination, Policy

_STRENGTH = {"report": 0, "redact": 1, "block": 2}


@dataclass(frozen=True)
class Access:
    mode: str
    enforcement: str
    data_classes: frozenset[str]


@dataclass
class ClientChanges:
    client: str
    status: str = "changed"  # "added", "removed", "changed"
    gained: list[str] = field(default_factory=list)  # "host:port (mode)"
    lost: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # "host:port: what changed"

    def empty(self) -> bool:
        return not (self.gained or self.lost or self.changed) and self.status == "changed"


@dataclass
class PolicyDiff:
    clients: list[ClientChanges]
    dlp: list[str]  # one line per detector or setting that changed
    other: list[str]

    def empty(self) -> bool:
        return not self.clients and not self.dlp and not self.other

    def as_dict(self) -> dict:
        return {"clients": [c.__dict__ for c in self.clients], "dlp": self.dlp, "other": self.other}


def reach(policy: Policy, client: str) -> dict[str, Access]:
    """'host:port' → Access for every entry that lets this client through (first entry wins)."""
    out: dict[str, Access] = {}
    for d in policy.destinations:
        if d.clients is not None and client not in d.clients:
            continue
        for port in d.ports:
            out.setdefault(f"{d.rule_id}:{port}", _access(d))
    return out


def _access(d: Destination) -> Access:
    return Access(d.mode, d.enforcement, d.dlp_allow)


def diff_policies(old: Policy, new: Policy) -> PolicyDiff:
    old_names, new_names = [c.name for c in old.clients], [c.name for c in new.clients]
    changes = []
    for name in old_names + [n for n in new_names if n not in old_names]:
        before = reach(old, name) if name in old_names else {}
        after = reach(new, name) if name in new_names else {}
        c = ClientChanges(name, "added" if name not in old_names else "removed" if name not in new_names else "changed")
        c.gained = [f"{k} ({after[k].mode})" for k in after if k not in before]
        c.lost = [k for k in before if k not in after]
        for k in (k for k in after if k in before and after[k] != before[k]):
            c.changed.append(f"{k}: {_describe(before[k], after[k])}")
        old_c, new_c = old.client(name), new.client(name)
        if old_c and new_c and (old_c.cidrs, old_c.users) != (new_c.cidrs, new_c.users):
            c.changed.append(_identity(old_c, new_c))
        if not c.empty():
            changes.append(c)
    return PolicyDiff(changes, _dlp(old, new), _other(old, new))


def _describe(a: Access, b: Access) -> str:
    parts = []
    if a.mode != b.mode:
        parts.append(f"mode {a.mode} → {b.mode}")
    if a.enforcement != b.enforcement:
        parts.append(f"enforcement {a.enforcement} → {b.enforcement}")
    gained, lost = sorted(b.data_classes - a.data_classes), sorted(a.data_classes - b.data_classes)
    if gained:
        parts.append("may now send " + ", ".join(gained))
    if lost:
        parts.append("may no longer send " + ", ".join(lost))
    return "; ".join(parts)


def _identity(a, b) -> str:
    added = sorted(map(str, set(b.cidrs) - set(a.cidrs))) + sorted(set(b.users) - set(a.users))
    removed = sorted(map(str, set(a.cidrs) - set(b.cidrs))) + sorted(set(a.users) - set(b.users))
    return "members: " + "; ".join(filter(None, [("+ " + ", ".join(added)) if added else "",
                                                  ("- " + ", ".join(removed)) if removed else ""]))


@dataclass(frozen=True)
class _Rule:
    action: str
    block_at: int | None
    mode: str
    default: bool = False

    def show(self) -> str:
        return (self.action + (f", block_at {self.block_at}" if self.block_at else "")
                + (" (default)" if self.default else "") + (" (report-only)" if self.mode == "report" else ""))


def _rules(p: Policy) -> dict[str, _Rule]:
    table = {k: _Rule(v.action, v.block_at, v.mode) for k, v in p.dlp.detectors.items()}
    table.update({c.id: _Rule(c.action, None, c.mode) for c in p.dlp.custom})
    return table


def _dlp(old: Policy, new: Policy) -> list[str]:
    out = []
    a, b = _rules(old), _rules(new)
    for k in sorted(set(a) | set(b)):
        before = a.get(k, _Rule(old.dlp.default_action, None, "enforce", default=True))
        after = b.get(k, _Rule(new.dlp.default_action, None, "enforce", default=True))
        if (before.action, before.block_at, before.mode) == (after.action, after.block_at, after.mode):
            continue
        looser_count = before.block_at is not None and (after.block_at is None or after.block_at > before.block_at)
        weaker = (_STRENGTH[after.action] < _STRENGTH[before.action] or looser_count
                  or (after.mode == "report" and before.mode != "report"))
        out.append(f"{k}: {before.show()} → {after.show()}" + (" (weaker: every client may send more)" if weaker else ""))
    for key in ("default_action", "uninspectable", "max_body_bytes", "large_bodies", "stream_max_bytes"):
        if getattr(old.dlp, key) != getattr(new.dlp, key):
            out.append(f"dlp.{key}: {getattr(old.dlp, key)} → {getattr(new.dlp, key)}")
    return out


def _other(old: Policy, new: Policy) -> list[str]:
    out = []
    if old.mode != new.mode:
        out.append(f"mode: {old.mode} → {new.mode}")
    if old.network != new.network:
        out.append("network settings changed (deny_private, allow_cidrs or resolve)")
    if old.upstream != new.upstream:
        out.append(f"upstream: {old.upstream} → {new.upstream}")
    old_pins = {d.rule_id: d.pins for d in old.destinations}
    for d in new.destinations:
        if d.rule_id in old_pins and old_pins[d.rule_id] != d.pins:
            out.append(f"{d.rule_id}: pins changed")
    return out
