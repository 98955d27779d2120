"""A self-contained HTML report of the audit log: inline SVG charts and the incident table.

No scripts, no external resources: it opens offline, in a mail attachment, or an archive.
Every value from the log is HTML-escaped.
"""

from __future__ import annotations

import datetime
import html
from collections import Counter
from typing import Any

from tollgate.audit.review import event_time, summarise

_INCIDENT_ACTIONS = {"connection-denied", "request-denied", "client-refused", "request-blocked", "request-redacted",
                     "request-uninspectable", "message-blocked", "message-redacted", "upstream-tls-failed", "tls-denied",
                     "internal-error"}
_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px}
.meta{color:#5a6275}.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:16px}
.card{border:1px solid #dde1ea;border-radius:8px;padding:12px;min-width:0} svg{display:block;max-width:100%}
.kpis{display:flex;gap:12px;flex-wrap:wrap}.kpi{border:1px solid #dde1ea;border-radius:8px;padding:8px 14px}
.kpi b{display:block;font-size:20px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceff5}
th{background:#f5f7fb} code{font-size:12px}
"""


def render(events: list[dict[str, Any]], title: str = "Tollgate audit report") -> str:
    numbers = summarise(events)
    actions = dict(numbers["by_action"])
    allowed = actions.get("request-allowed", 0) + actions.get("connection-allowed", 0)
    incidents = [e for e in events if e.get("event", {}).get("action") in _INCIDENT_ACTIONS]
    kpis = [("events", numbers["events"]), ("allowed", allowed), ("blocked by DLP", actions.get("request-blocked", 0)),
            ("redacted", actions.get("request-redacted", 0)),
            ("denied", actions.get("connection-denied", 0) + actions.get("request-denied", 0)
             + actions.get("client-refused", 0)),
            ("certificate failures", actions.get("upstream-tls-failed", 0))]
    detectors = Counter()
    for e in events:
        for f in e.get("tollgate", {}).get("dlp", {}).get("findings", []):
            detectors[f.get("detector", "?")] += 1
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1><p class=meta>{numbers['events']} events from {_e(numbers['from'])} to {_e(numbers['to'])}"
        f" · generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC</p>",
        "<div class=kpis>" + "".join(f"<div class=kpi><b>{n}</b>{_e(k)}</div>" for k, n in kpis) + "</div>",
        "<div class=grid>",
        f"<div class=card><h2>Decisions over time</h2>{_timeline(events)}</div>",
        f"<div class=card><h2>DLP findings by detector</h2>{_bars(detectors.most_common(12), '#c2410c')}</div>",
        f"<div class=card><h2>Top destinations</h2>{_bars(numbers['top_destinations'], '#1d4ed8')}</div>",
        f"<div class=card><h2>Denied destinations</h2>{_bars(numbers['denied_destinations'], '#7c3aed')}</div>",
        "</div>",
        f"<h2>Incidents ({len(incidents)})</h2>",
        _incident_table(incidents),
        "</body></html>",
    ]
    return "\n".join(parts)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _bars(rows: list[tuple[Any, int]], colour: str) -> str:
    if not rows:
        return "<p class=meta>none</p>"
    top = max(n for _, n in rows) or 1
    height = 22 * len(rows)
    bars = []
    for i, (name, n) in enumerate(rows):
        width = 180 * n / top
        y = i * 22
        bars.append(f'<text x="0" y="{y + 15}" font-size="12">{_e(name)[:38]}</text>'
                    f'<rect x="240" y="{y + 4}" width="{width:.1f}" height="14" fill="{colour}" rx="2"/>'
                    f'<text x="{244 + width:.1f}" y="{y + 15}" font-size="12">{n}</text>')
    return f'<svg role="img" width="100%" viewBox="0 0 460 {height}">{"".join(bars)}</svg>'


def _timeline(events: list[dict[str, Any]]) -> str:
    times = [(t, e) for e in events if (t := event_time(e))]
    if not times:
        return "<p class=meta>none</p>"
    start, end = min(t for t, _ in times), max(t for t, _ in times)
    buckets = 24
    span = max((end - start).total_seconds(), 1) / buckets
    ok, bad = [0] * buckets, [0] * buckets
    for t, e in times:
        i = min(int((t - start).total_seconds() / span), buckets - 1)
        if e.get("event", {}).get("outcome") == "failure" or e.get("event", {}).get("action") in _INCIDENT_ACTIONS:
            bad[i] += 1
        else:
            ok[i] += 1
    top = max(a + b for a, b in zip(ok, bad)) or 1
    bars = []
    for i in range(buckets):
        h_ok, h_bad = 120 * ok[i] / top, 120 * bad[i] / top
        x = 10 + i * 18
        bars.append(f'<rect x="{x}" y="{130 - h_ok - h_bad:.1f}" width="14" height="{h_bad:.1f}" fill="#dc2626"/>'
                    f'<rect x="{x}" y="{130 - h_ok:.1f}" width="14" height="{h_ok:.1f}" fill="#16a34a"/>')
    legend = ('<text x="10" y="150" font-size="11">allowed</text><rect x="60" y="141" width="10" height="10" fill="#16a34a"/>'
              '<text x="80" y="150" font-size="11">denied, blocked, redacted</text>'
              '<rect x="230" y="141" width="10" height="10" fill="#dc2626"/>')
    return (f'<svg role="img" width="100%" viewBox="0 0 450 160">{"".join(bars)}{legend}</svg>'
            f'<p class=meta>{_e(start.isoformat(timespec="seconds"))} → {_e(end.isoformat(timespec="seconds"))}</p>')


def _incident_table(incidents: list[dict[str, Any]]) -> str:
    if not incidents:
        return "<p class=meta>no incidents</p>"
    rows = ["<table><tr><th>time</th><th>decision</th><th>client</th><th>destination</th><th>reason</th>"
            "<th>findings (masked)</th><th>incident</th></tr>"]
    for e in incidents[-500:]:
        ev, tg, d = e.get("event", {}), e.get("tollgate", {}), e.get("destination", {})
        findings = "<br>".join(f"{_e(f.get('detector'))} {_e(f.get('preview'))} → {_e(f.get('action'))}"
                               for f in tg.get("dlp", {}).get("findings", []))
        dest = f"{d.get('domain') or d.get('ip') or ''}:{d.get('port', '')}".strip(":")
        rows.append(f"<tr><td>{_e(e.get('@timestamp', '')[:19])}</td><td>{_e(ev.get('action'))}</td>"
                    f"<td>{_e(tg.get('client'))}</td><td>{_e(dest)}</td><td>{_e(ev.get('reason'))}</td>"
                    f"<td>{findings}</td><td><code>{_e(tg.get('incident'))}</code></td></tr>")
    rows.append("</table>")
    return "\n".join(rows)
