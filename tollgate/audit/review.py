"""Reading the audit log back: files in order, chain verification, filters, summaries. Pure.

Rotated files are ``audit.jsonl.<UTC timestamp>``; they sort by name, and the live
``audit.jsonl`` comes last. The chain runs across all of them.

A directory holds one or more streams, each its own chain: ``DIR/audit.jsonl`` (one
process) and ``DIR/worker-I/audit.jsonl`` (``tollgate run --workers N``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tollgate.audit.writer import GENESIS


def log_files(path: str | Path) -> list[Path]:
    """The live file and its rotations, oldest first."""
    path = Path(path)
    rotated = sorted(path.parent.glob(path.name + ".*"))
    return rotated + ([path] if path.exists() else [])


LIVE_NAME = "audit.jsonl"


def streams(path: str | Path) -> list[Path]:
    """The live file of each audit stream PATH names: a file is one stream; a directory
    holds its own audit.jsonl and one per worker, in worker order. Streams with no file
    (live or rotated) are left out."""
    path = Path(path)
    if not path.is_dir():
        return [path] if log_files(path) else []
    workers = sorted(path.glob(f"worker-*/{LIVE_NAME}"), key=lambda p: (len(p.parent.name), p.parent.name))
    return [p for p in [path / LIVE_NAME, *workers] if log_files(p)]


@dataclass(frozen=True)
class Line:
    file: Path
    number: int  # 1-based within its file
    raw: bytes
    event: dict[str, Any] | None  # None when the line is not JSON


def read_lines(path: str | Path) -> Iterator[Line]:
    for file in log_files(path):
        with open(file, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    event = json.loads(raw)
                except ValueError:
                    event = None
                yield Line(file, number, raw, event if isinstance(event, dict) else None)


@dataclass(frozen=True)
class ChainProblem:
    file: Path
    line: int
    kind: str  # "edited", "missing", "reordered", "unparseable"
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.message}"


def verify(path: str | Path) -> tuple[int, ChainProblem | None]:
    """(lines checked, the first problem or None). Each line must carry the SHA-256 of the
    line before it; the per-run sequence number tells an edit from a gap or a reordering."""
    lines = list(read_lines(path))
    positions = {hashlib.sha256(line.raw).hexdigest(): i for i, line in enumerate(lines)}
    for i, line in enumerate(lines):
        if line.event is None:
            return i + 1, ChainProblem(line.file, line.number, "unparseable", "the line is not a JSON object (edited?)")
        chain = line.event.get("tollgate", {}).get("chain", {})
        previous = lines[i - 1] if i else None
        expected = hashlib.sha256(previous.raw).hexdigest() if previous else GENESIS
        if chain.get("prev") != expected:
            # The line it names as its predecessor still exists elsewhere: the order changed.
            if chain.get("prev") in positions:
                other = lines[positions[chain["prev"]]]
                return i + 1, ChainProblem(line.file, line.number, "reordered",
                                           f"it follows {other.file.name}:{other.number}, not the line above it")
            return i + 1, _classify(previous, line, chain)
    return len(lines), None


def _classify(previous: Line | None, line: Line, chain: dict) -> ChainProblem:
    seq = chain.get("seq")
    prev_seq = previous.event.get("tollgate", {}).get("chain", {}).get("seq") if previous and previous.event else None
    where = f"{previous.file.name}:{previous.number}" if previous else "the start of the log"
    if previous is None:
        return ChainProblem(line.file, line.number, "missing", "the first line does not start the chain: earlier lines are missing")
    if isinstance(seq, int) and isinstance(prev_seq, int):
        if seq == prev_seq + 1 or seq == 1:
            return ChainProblem(line.file, line.number, "edited",
                                f"the line before it ({where}) was changed after it was written")
        if seq > prev_seq + 1:
            return ChainProblem(line.file, line.number, "missing",
                                f"{seq - prev_seq - 1} line(s) missing after {where} (sequence {prev_seq} → {seq})")
        return ChainProblem(line.file, line.number, "reordered",
                            f"out of order after {where} (sequence {prev_seq} → {seq})")
    return ChainProblem(line.file, line.number, "edited", f"does not chain to {where}")


# --- filters and summaries ---------------------------------------------------------------

_RELATIVE = re.compile(r"^(\d+)([smhd])$")


def parse_time(value: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """ISO 8601 (a date alone is midnight UTC), or relative: '30m', '24h', '7d'."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    m = _RELATIVE.match(value.strip())
    if m:
        seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return now - datetime.timedelta(seconds=seconds)
    parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


def event_time(event: dict[str, Any]) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(event["@timestamp"].replace("Z", "+00:00"))
    except (KeyError, ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class Filter:
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    client: str | None = None
    destination: str | None = None  # a domain (its subdomains match too) or an IP
    detector: str | None = None
    outcome: str | None = None  # success | failure
    action: str | None = None  # event.action, e.g. request-blocked
    fingerprint: str | None = None
    incident: str | None = None

    def matches(self, e: dict[str, Any]) -> bool:
        t = event_time(e)
        if self.since and (t is None or t < self.since) or self.until and (t is None or t >= self.until):
            return False
        tg, dest, ev = e.get("tollgate", {}), e.get("destination", {}), e.get("event", {})
        findings = tg.get("dlp", {}).get("findings", [])
        checks = [
            (self.client, lambda: tg.get("client") == self.client),
            (self.destination, lambda: _dest_matches(dest, self.destination)),
            (self.detector, lambda: any(f.get("detector") == self.detector for f in findings)),
            (self.outcome, lambda: ev.get("outcome") == self.outcome),
            (self.action, lambda: ev.get("action") == self.action),
            (self.fingerprint, lambda: any(f.get("fingerprint") == self.fingerprint for f in findings)),
            (self.incident, lambda: tg.get("incident") == self.incident),
        ]
        return all(check() for wanted, check in checks if wanted)


def _dest_matches(dest: dict[str, Any], wanted: str) -> bool:
    domain, ip = dest.get("domain", ""), dest.get("ip", "")
    wanted = wanted.lower().rstrip(".")
    return domain == wanted or domain.endswith("." + wanted) or ip == wanted


def events(path: str | Path) -> list[dict[str, Any]]:
    """Every event of every stream PATH names; several streams are merged by time."""
    found = [[line.event for line in read_lines(stream) if line.event] for stream in streams(path)]
    if len(found) == 1:
        return found[0]
    return sorted((e for stream in found for e in stream), key=lambda e: str(e.get("@timestamp", "")))


def search(path: str | Path, flt: Filter) -> list[dict[str, Any]]:
    return [e for e in events(path) if flt.matches(e)]


def summarise(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers a reviewer asks for first."""
    times = [t for t in (event_time(e) for e in events) if t]
    by_action = Counter(e.get("event", {}).get("action", "?") for e in events)
    destinations = Counter(_dest(e) for e in events if e.get("event", {}).get("category") == ["network"] and _dest(e))
    clients = Counter(e.get("tollgate", {}).get("client") for e in events if e.get("tollgate", {}).get("client"))
    detector_actions: Counter = Counter()
    for e in events:
        for f in e.get("tollgate", {}).get("dlp", {}).get("findings", []):
            detector_actions[(f.get("detector"), f.get("action"))] += 1
    denied = Counter(_dest(e) for e in events if e.get("event", {}).get("action") in ("connection-denied", "request-denied"))
    cert_failures = Counter((_dest(e), e.get("event", {}).get("reason")) for e in events
                            if e.get("event", {}).get("action") == "upstream-tls-failed")
    return {
        "events": len(events),
        "from": min(times).isoformat() if times else None,
        "to": max(times).isoformat() if times else None,
        "by_action": by_action.most_common(),
        "top_destinations": destinations.most_common(10),
        "top_clients": clients.most_common(10),
        "findings_by_detector": [(f"{d} → {a}", n) for (d, a), n in detector_actions.most_common()],
        "denied_destinations": denied.most_common(10),
        "certificate_failures": [(f"{d} ({r})", n) for (d, r), n in cert_failures.most_common()],
    }


def _dest(e: dict[str, Any]) -> str:
    d = e.get("destination", {})
    name = d.get("domain") or d.get("ip") or ""
    return f"{name}:{d['port']}" if name and d.get("port") else name


CSV_COLUMNS = ("@timestamp", "event.action", "event.outcome", "event.reason", "tollgate.client", "source.ip",
               "destination.domain", "destination.ip", "destination.port", "http.request.method", "url.full",
               "rule.id", "tollgate.incident", "detectors", "fingerprints", "message")


def flat_row(e: dict[str, Any]) -> list[str]:
    findings = e.get("tollgate", {}).get("dlp", {}).get("findings", [])
    row = []
    for column in CSV_COLUMNS:
        if column == "detectors":
            row.append(" ".join(sorted({f.get("detector", "") for f in findings})))
        elif column == "fingerprints":
            row.append(" ".join(f.get("fingerprint", "") for f in findings))
        else:
            value: Any = e
            for part in column.split(".") if column != "@timestamp" else [column]:
                value = value.get(part, "") if isinstance(value, dict) else ""
            row.append(str(value))
    return row
