"""`tollgate audit ...`: verify, summarise, search, follow and export the audit log."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from tollgate.audit import evidence, review

DEFAULT_LOG = "var/audit"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("audit", help="review the audit log")
    cmds = parser.add_subparsers(dest="audit_command", required=True)

    def log_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--log", default=DEFAULT_LOG,
                       help="a live audit file (its rotations are read too), or a directory: its audit.jsonl and "
                            f"every worker-I/audit.jsonl of `tollgate run --workers N` (default: {DEFAULT_LOG})")

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--since", help="ISO time or date, or relative: 30m, 24h, 7d")
        p.add_argument("--until", help="ISO time or date, or relative")
        p.add_argument("--client")
        p.add_argument("--destination", help="a domain (subdomains included) or an IP")
        p.add_argument("--detector")
        p.add_argument("--outcome", choices=["success", "failure"])
        p.add_argument("--action", help="event.action, e.g. request-blocked")
        p.add_argument("--fingerprint")
        p.add_argument("--incident")

    verify = cmds.add_parser("verify", help="check the hash chain: the first edited, missing or reordered line")
    log_arg(verify)
    summary = cmds.add_parser("summary", help="decisions, destinations, clients, findings, failures")
    log_arg(summary)
    filters(summary)
    summary.add_argument("--format", choices=["table", "json"], default="table")
    search = cmds.add_parser("search", help="events matching filters")
    log_arg(search)
    filters(search)
    search.add_argument("--format", choices=["table", "json"], default="table")
    tail = cmds.add_parser("tail", help="the last events, and with --follow the live ones")
    log_arg(tail)
    tail.add_argument("-n", "--lines", type=int, default=20)
    tail.add_argument("-f", "--follow", action="store_true")
    report = cmds.add_parser("report", help="a self-contained HTML report with charts and the incident table")
    log_arg(report)
    filters(report)
    report.add_argument("--html", required=True, metavar="FILE")
    keygen = cmds.add_parser("keygen", help="a reviewer key pair for encrypted evidence")
    keygen.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.key (0600) and PREFIX.pub")
    reveal = cmds.add_parser("reveal", help="decrypt an incident's evidence with the reviewer's private key")
    log_arg(reveal)
    reveal.add_argument("--key", required=True, help="the reviewer's private key (PREFIX.key)")
    reveal.add_argument("--incident", required=True)
    export = cmds.add_parser("export", help="events matching filters as CSV, for spreadsheets")
    log_arg(export)
    filters(export)
    export.add_argument("--csv", required=True, metavar="FILE", help="file to write ('-' for standard output)")


def run(args: argparse.Namespace) -> int:
    if args.audit_command not in ("tail", "keygen") and not review.streams(args.log):
        print(f"tollgate audit: no audit log at {args.log}", file=sys.stderr)
        return 2
    try:
        return _COMMANDS[args.audit_command](args)
    except (ValueError, evidence.EvidenceError, FileExistsError) as e:
        print(f"tollgate audit {args.audit_command}: {e}", file=sys.stderr)
        return 2


def _filter(args: argparse.Namespace) -> review.Filter:
    return review.Filter(
        since=review.parse_time(args.since) if args.since else None,
        until=review.parse_time(args.until) if args.until else None,
        client=args.client, destination=args.destination, detector=args.detector, outcome=args.outcome,
        action=args.action, fingerprint=args.fingerprint, incident=args.incident)


def _verify(args: argparse.Namespace) -> int:
    """Each stream is its own hash chain; all must be intact."""
    streams = review.streams(args.log)
    broken = 0
    for stream in streams:
        count, problem = review.verify(stream)
        name = f"{stream}: " if len(streams) > 1 else ""
        if problem:
            print(f"{name}BROKEN after {count - 1} good lines: {problem}")
            broken += 1
        else:
            print(f"{name}OK: {count} lines in {len(review.log_files(stream))} file(s), hash chain intact")
    return 1 if broken else 0


def _summary(args: argparse.Namespace) -> int:
    numbers = review.summarise(review.search(args.log, _filter(args)))
    if args.format == "json":
        print(json.dumps(numbers, indent=2))
        return 0
    print(f"{numbers['events']} events from {numbers['from']} to {numbers['to']}")
    for title, key in (("Decisions", "by_action"), ("Top destinations", "top_destinations"),
                       ("Top clients", "top_clients"), ("DLP findings by detector → action", "findings_by_detector"),
                       ("Denied destinations", "denied_destinations"), ("Certificate failures", "certificate_failures")):
        print(f"\n{title}")
        rows = numbers[key] or [("(none)", "")]
        width = max(len(str(name)) for name, _ in rows)
        for name, n in rows:
            print(f"  {str(name):<{width}}  {n}")
    return 0


_TABLE = ("@timestamp", "event.action", "event.reason", "tollgate.client", "destination.domain",
          "destination.port", "detectors", "tollgate.incident")


def _print_table(events: list[dict[str, Any]]) -> None:
    indexes = [review.CSV_COLUMNS.index(c) for c in _TABLE]
    rows = [[row[i] for i in indexes] for row in (review.flat_row(e) for e in events)]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(_TABLE)]
    print("  ".join(c.ljust(w) for c, w in zip(_TABLE, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def _search(args: argparse.Namespace) -> int:
    events = review.search(args.log, _filter(args))
    if args.format == "json":
        for e in events:
            print(json.dumps(e, ensure_ascii=False))
    else:
        _print_table(events)
        print(f"({len(events)} events)")
    return 0


def _tail(args: argparse.Namespace) -> int:
    # Where following starts is taken first: an event written while the last ones are read
    # may show twice, never not at all.
    positions = {path: path.stat().st_size for path in _live_files(args.log)} if args.follow else {}
    events = review.events(args.log)
    _print_table(events[-args.lines:] if args.lines else [])
    sys.stdout.flush()  # the header and the last events before the wait, also into a pipe
    if not args.follow:
        return 0
    try:
        while True:
            time.sleep(0.5)
            # A directory's streams are looked for again on each round: a worker may start later.
            for path in _live_files(args.log):
                for e in _new_events(path, positions):
                    print("  ".join(review.flat_row(e)[review.CSV_COLUMNS.index(c)] for c in _TABLE), flush=True)
    except KeyboardInterrupt:
        return 0


def _live_files(log: str) -> list[Path]:
    path = Path(log)
    return [p for p in (review.streams(path) if path.is_dir() else [path]) if p.exists()]


def _new_events(path: Path, positions: dict[Path, int]) -> list[dict[str, Any]]:
    """Whole lines appended to PATH since the last look (from the start after a rotation)."""
    position = positions.get(path, 0)
    if path.stat().st_size < position:
        position = 0  # rotated: the new live file starts empty
    with open(path, "rb") as f:
        f.seek(position)
        chunk = f.read()
    complete = chunk[:chunk.rfind(b"\n") + 1]
    positions[path] = position + len(complete)
    found = []
    for raw in complete.splitlines():
        try:
            found.append(json.loads(raw))
        except ValueError:
            continue
    return found


def _export(args: argparse.Namespace) -> int:
    events = review.search(args.log, _filter(args))
    out = sys.stdout if args.csv == "-" else open(args.csv, "w", newline="", encoding="utf-8")
    try:
        writer = csv.writer(out)
        writer.writerow(review.CSV_COLUMNS)
        for e in events:
            writer.writerow(review.flat_row(e))
    finally:
        if out is not sys.stdout:
            out.close()
    if args.csv != "-":
        print(f"wrote {len(events)} events to {args.csv}", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    from tollgate.audit.report import render

    events = review.search(args.log, _filter(args))
    Path(args.html).write_text(render(events), encoding="utf-8")
    print(f"wrote a report of {len(events)} events to {args.html}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    key, pub = evidence.generate_keypair(args.out)
    print(f"private key: {key} (0600: keep it with the reviewers, never on the proxy)")
    print(f"public key:  {pub} (put it in the policy: audit.evidence_public_key)")
    return 0


def _reveal(args: argparse.Namespace) -> int:
    private = evidence.load_private_key(args.key)
    events = review.search(args.log, review.Filter(incident=args.incident))
    if not events:
        raise ValueError(f"no event with incident {args.incident}")
    shown = 0
    for e in events:
        for f in e.get("tollgate", {}).get("dlp", {}).get("findings", []):
            if "evidence" in f:
                context = evidence.unseal(private, f["evidence"]).decode("utf-8", "replace")
                print(f"{f['detector']} in {f['where']}: {context!r}")
                shown += 1
    if not shown:
        raise ValueError(f"incident {args.incident} carries no evidence (is audit.evidence_public_key set?)")
    return 0


_COMMANDS = {"verify": _verify, "summary": _summary, "search": _search, "tail": _tail, "export": _export,
             "keygen": _keygen, "reveal": _reveal, "report": _report}
