"""From findings to one action, by the policy. Pure: no mitmproxy, no I/O.

Precedence for each finding, in order:
  1. a detector the destination's ``dlp.allow`` lists → ignored (that data class may go there);
  2. a credential sent to its own issuer (a GitHub token to api.github.com) → ignored;
  3. a documentation placeholder (AKIAIOSFODNN7EXAMPLE, sk_test_…) → report;
  4. the detector's action from ``dlp.detectors`` / the custom detector, else ``default_action``.
Then ``block_at``: a detector with that many findings in one request blocks. The request's
action is the strongest: block > redact > report > allow. A redaction that cannot be made in
place (inside an encoded layer, a multipart part or a binary body) becomes a block.
Last, report-only (``mode: report`` on the policy, the destination or the detector): a block
or redact becomes a report that remembers what it ``would`` have been.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tollgate.dlp.detectors import BUILTIN
from tollgate.policy.model import Destination, DlpSettings

_ISSUERS = {d.id: d.issuers for d in BUILTIN}
_RANK = {"allow": 0, "report": 1, "redact": 2, "block": 3}


@dataclass(frozen=True)
class Finding:
    detector: str
    where: str
    layers: tuple[str, ...]
    value: str = field(repr=False)  # raw: only for redaction and fingerprinting, never logged or returned
    start: int
    end: int
    rewritable: bool
    placeholder: bool = False
    slot: int = -1  # index of the rewritable slot it was found in (-1: a decoded layer or the joined view)
    context: str = field(default="", repr=False)  # the text around the value: only ever stored sealed to a reviewer's key


@dataclass(frozen=True)
class Judged:
    finding: Finding
    action: str  # "ignore", "report", "redact", "block"
    why: str  # "allowed_for_destination", "own_issuer", "placeholder", "policy", "block_at", "not_redactable"
    would: str | None = None  # the enforced action this report-only finding stands for


@dataclass(frozen=True)
class DlpDecision:
    action: str  # "allow", "report", "redact", "block": what is done
    judged: tuple[Judged, ...]
    would: str | None = None  # set when report-only mode kept a stronger action from being done

    @property
    def detectors(self) -> list[str]:
        return sorted({j.finding.detector for j in self.judged if j.action != "ignore"})


def _issuer_matches(host: str, issuers: tuple[str, ...]) -> bool:
    return any(host == i or (i.startswith(".") and host.endswith(i)) for i in issuers)


def decide(findings: list[Finding], dlp: DlpSettings, destination: Destination | None, host: str,
           report_only: bool = False) -> DlpDecision:
    custom_actions = {c.id: c.action for c in dlp.custom}
    report_detectors = {k for k, s in dlp.detectors.items() if s.mode == "report"} | {
        c.id for c in dlp.custom if c.mode == "report"}
    judged: list[Judged] = []
    for f in findings:
        if destination is not None and f.detector in destination.dlp_allow:
            judged.append(Judged(f, "ignore", "allowed_for_destination"))
        elif _issuer_matches(host, _ISSUERS.get(f.detector, ())):
            judged.append(Judged(f, "ignore", "own_issuer"))
        elif f.placeholder:
            judged.append(Judged(f, "report", "placeholder"))
        else:
            setting = dlp.detectors.get(f.detector)
            action = setting.action if setting else custom_actions.get(f.detector, dlp.default_action)
            if action == "redact" and not f.rewritable:
                judged.append(Judged(f, "block", "not_redactable"))
            else:
                judged.append(Judged(f, action, "policy"))
    counts = Counter(j.finding.detector for j in judged if j.action != "ignore")
    for i, j in enumerate(judged):
        setting = dlp.detectors.get(j.finding.detector)
        if setting and setting.block_at and counts[j.finding.detector] >= setting.block_at and j.action != "ignore":
            judged[i] = Judged(j.finding, "block", "block_at")
    enforced_action = _strongest(j.action for j in judged)
    for i, j in enumerate(judged):
        if j.action in ("block", "redact") and (report_only or j.finding.detector in report_detectors):
            judged[i] = Judged(j.finding, "report", j.why, would=j.action)
    action = _strongest(j.action for j in judged)
    return DlpDecision(action, tuple(judged), would=enforced_action if enforced_action != action else None)


def _strongest(actions) -> str:
    return max((a for a in actions if a != "ignore"), key=_RANK.__getitem__, default="allow")
