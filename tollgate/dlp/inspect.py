"""Inspect one request (or WebSocket message) end to end: decode, scan, decide, redact.

Pure: the mitmproxy hook hands in plain facts and applies the Outcome. Raw values never
leave this module except inside the rewritten request itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from tollgate.audit.evidence import seal
from tollgate.audit.fingerprint import fingerprint, mask, redaction
from tollgate.dlp.content import (RequestContent, Slot, Uninspectable, decode_transport, parse_request, peel_layers,
                                  quick_view)
from tollgate.dlp.decide import DlpDecision, Finding, decide
from tollgate.dlp.detectors import BUILTIN
from tollgate.dlp.engine import Engine, ScanIncomplete
from tollgate.policy.model import Destination, DlpSettings

_SECRET = {d.id: d.secret for d in BUILTIN}


class RequestFacts(NamedTuple):  # made for every request: a tuple is cheaper than a dataclass
    path: str
    headers: list[tuple[str, str]]
    body: bytes  # as received (Content-Encoding applied)
    content_encoding: str
    content_type: str
    host: str
    destination: Destination | None


@dataclass
class Outcome:
    action: str  # "allow", "report", "redact", "block", "uninspectable"
    decision: DlpDecision | None = None
    uninspectable: str | None = None  # reason code when the content could not be inspected
    message: str = ""
    findings: Sequence[dict] = ()  # masked, for the audit log
    would: str | None = None  # report-only: the action the policy would have taken
    path: str | None = None  # rewritten request parts after a redaction
    headers: list[tuple[str, str]] | None = None
    body: bytes | None = None  # decoded body: the hook re-applies Content-Encoding


def inspect_request(engine: Engine, dlp: DlpSettings, key: bytes, facts: RequestFacts,
                    evidence_key: X25519PublicKey | None = None, report_only: bool = False) -> Outcome:
    if len(facts.body) > dlp.max_body_bytes:
        return Outcome("uninspectable", uninspectable="too_large", message="the body is larger than dlp.max_body_bytes")
    try:
        body = decode_transport(facts.body, facts.content_encoding, dlp.max_body_bytes)
        if is_clean(engine, quick_view(facts.path, facts.headers, body, facts.content_type)):
            return Outcome("allow")
        content = parse_request(facts.path, facts.headers, body, facts.content_type)
        findings = scan_slots(engine, content.slots)
    except Uninspectable as e:
        return Outcome("uninspectable", uninspectable=e.reason, message=str(e))
    except ScanIncomplete as e:
        return Outcome("uninspectable", uninspectable="scan_incomplete", message=str(e))
    stacked = "," in facts.content_encoding
    if stacked:  # the proxy cannot re-encode stacked encodings: no rewriting in place
        findings = [dataclasses.replace(f, rewritable=False, slot=-1) for f in findings]
    decision = decide(findings, dlp, facts.destination, facts.host, report_only)
    outcome = Outcome(decision.action, decision, findings=[audit_view(j, key, evidence_key) for j in decision.judged],
                      would=decision.would)
    if decision.action == "redact":
        apply_redactions(content, decision)
        query = content.query_string()
        outcome.path = content.path + (f"?{query}" if query else "")
        outcome.headers, outcome.body = content.headers, content.body_bytes()
    return outcome


def inspect_message(engine: Engine, dlp: DlpSettings, key: bytes, text: str, host: str,
                    destination: Destination | None, evidence_key: X25519PublicKey | None = None,
                    report_only: bool = False) -> tuple[Outcome, str]:
    """A WebSocket message: (outcome, the redacted text when the action is redact)."""
    holder = {"text": text}
    slot = Slot("websocket", text, replace=lambda new: holder.__setitem__("text", new))
    try:
        findings = scan_slots(engine, [slot])
    except ScanIncomplete as e:
        return Outcome("uninspectable", uninspectable="scan_incomplete", message=str(e)), text
    except Uninspectable as e:
        return Outcome("uninspectable", uninspectable=e.reason, message=str(e)), text
    decision = decide(findings, dlp, destination, host, report_only)
    outcome = Outcome(decision.action, decision, findings=[audit_view(j, key, evidence_key) for j in decision.judged],
                      would=decision.would)
    if decision.action == "redact":
        content = RequestContent("", [], [], "none", None, slots=[slot])
        apply_redactions(content, decision)
    return outcome, holder["text"]


def is_clean(engine: Engine, text: str | None, deadline: float | None = None) -> bool:
    """Fast path: one scan of all the text and its decoded layers. Most requests are clean
    and stop here; only a request with a finding pays for parsing and per-slot attribution."""
    if text is None or engine.scan(text, deadline):
        return False
    for layer in peel_layers(Slot("all", text)):
        if engine.scan(layer.text, deadline):
            return False
    return True


def clean_at_a_glance(engine: Engine, text: str | None) -> bool:
    """True when the prefilter alone shows that the text and its decoded layers hold nothing
    any detector could match: the cheap, linear part of an inspection, which the proxy runs
    on its event loop. False means "inspect fully" (in a worker thread), not "found"."""
    if text is None:
        return False
    return not engine.may_match(text) and not any(engine.may_match(layer.text)
                                                  for layer in peel_layers(Slot("all", text)))


def request_clean_at_a_glance(engine: Engine, dlp: DlpSettings, facts: RequestFacts) -> bool:
    """clean_at_a_glance for a request within the size limit and with no Content-Encoding
    (decompressing is not cheap)."""
    if len(facts.body) > dlp.max_body_bytes or facts.content_encoding.strip().lower() not in ("", "identity"):
        return False
    return clean_at_a_glance(engine, quick_view(facts.path, facts.headers, facts.body, facts.content_type))


def scan_slots(engine: Engine, slots: list[Slot], deadline: float | None = None) -> list[Finding]:
    """Findings in each slot, its decoded layers and all slots joined; ``deadline``: see
    Engine.scan."""
    joined = Slot("joined", "\n".join(s.text for s in slots))
    if is_clean(engine, joined.text, deadline):
        return []
    findings: list[Finding] = []
    seen: set[tuple[str, str]] = set()

    def add(slot: Slot, index: int, rewritable: bool) -> None:
        for m in engine.scan(slot.text, deadline):
            key = (m.detector, m.value)
            if key in seen and not rewritable:
                continue
            seen.add(key)
            findings.append(Finding(m.detector, slot.where, slot.layers, slot.text[m.start:m.end], m.start, m.end,
                                    rewritable, m.placeholder, index if rewritable else -1,
                                    slot.text[max(0, m.start - 40):m.end + 40]))

    for i, slot in enumerate(slots):
        add(slot, i, slot.replace is not None)
    for i, slot in enumerate(slots):
        for layer in peel_layers(slot):
            add(layer, -1, False)
    # A secret split across fields (key id in one, secret key in another) only shows here.
    add(joined, -1, False)
    return findings


def apply_redactions(content: RequestContent, decision: DlpDecision) -> None:
    by_slot: dict[int, list[Finding]] = {}
    for j in decision.judged:
        if j.action == "redact":
            by_slot.setdefault(j.finding.slot, []).append(j.finding)
    for index, findings in by_slot.items():
        slot = content.slots[index]
        text = slot.text
        for f in sorted(findings, key=lambda f: f.start, reverse=True):
            text = text[:f.start] + redaction(f.detector, f.value) + text[f.end:]
        slot.replace(text)


def audit_view(judged, key: bytes, evidence_key: X25519PublicKey | None = None) -> dict:
    f = judged.finding
    view = {
        "detector": f.detector, "where": f.where, "layers": list(f.layers), "action": judged.action,
        "why": judged.why, "preview": mask(f.detector, f.value, _SECRET.get(f.detector, True)),
        "fingerprint": fingerprint(key, f.value),
    }
    if judged.would:
        view["would"] = judged.would
    if evidence_key is not None:
        view["evidence"] = seal(evidence_key, f.context.encode("utf-8", "surrogateescape"))
    return view
