"""The scanning engine: prefilter, match, validate. Pure; no mitmproxy, no policy actions.

Every pattern runs with a timeout so that no input (or custom pattern) can stall the proxy;
a timeout becomes a ``scan_incomplete`` finding, never a silent pass.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Iterator

import regex

from tollgate.dlp.detectors import BUILTIN, DIGITS, Detector, compile_custom
from tollgate.dlp.normalize import detection_view
from tollgate.dlp import prefilter as prefilters
from tollgate.policy.model import DlpSettings

PATTERN_TIMEOUT = 0.5  # seconds per detector per text
_DIGIT_RUN = regex.compile(r"\d(?:[ -]?\d){5}")
_DIGIT_RUN_ASCII = r"[0-9](?:[ -]?[0-9]){5}"  # the same on ASCII text, for hyperscan
# Catch-all detectors give way to a specific one on the same characters.
_CATCH_ALL = frozenset({"generic_secret", "email"})


@dataclass(frozen=True)
class Match:
    detector: str
    start: int  # in the original text
    end: int
    value: str  # the matched value, as it appears in the detection view (never logged raw)
    placeholder: bool = False


class ScanIncomplete(Exception):
    """A detector timed out: the caller treats the content as uninspectable."""

    def __init__(self, detector: str):
        super().__init__(f"detector {detector} timed out")
        self.detector = detector


class Engine:
    def __init__(self, detectors: tuple[Detector, ...], prefilter: bool = True):
        self.detectors = detectors
        self.prefilter = prefilter  # off only in the benchmark and tests, to prove it changes no finding
        self._by_id = {d.id: (i, d) for i, d in enumerate(detectors)}
        keywords = tuple(sorted({k for d in detectors for k in d.keywords}))
        locatable = frozenset(d.id for d in detectors if d.max_length and not d.keywords_inside)
        custom = frozenset(d.id for d in detectors if d not in BUILTIN)
        self._multi = prefilters.build(tuple((d.id, d.pattern.pattern, bool(d.pattern.flags & regex.IGNORECASE),
                                              d.context, d.keywords, d.shape) for d in detectors),
                                       keywords, DIGITS, _DIGIT_RUN_ASCII, locatable, custom) \
            if prefilter else None

    @classmethod
    def for_policy(cls, dlp: DlpSettings) -> "Engine":
        return cls(BUILTIN + tuple(compile_custom(c) for c in dlp.custom))

    def scan(self, text: str, deadline: float | None = None) -> list[Match]:
        """The matches in the text. Each detector has PATTERN_TIMEOUT, and none runs past
        ``deadline`` (time.monotonic()) when one is given: a caller on the event loop bounds
        all its scans together. Past either, ScanIncomplete."""
        view = None if text.isascii() else detection_view(text)  # ASCII text is its own view
        hits = self._multi.scan(text if view is None else view.text) if self._multi else prefilters.Hits(None, None)
        candidates = hits.detectors
        if candidates is not None and not candidates:
            return []  # the usual case: a clean text, one pass
        view = view or detection_view(text)
        keywords = _Keywords(view.text, hits.keywords)
        matches: list[Match] = []
        for detector in self._runnable(candidates):
            if self.prefilter and detector.keywords and not keywords.any_of(detector.keywords):
                continue
            try:
                limit = time.monotonic() + PATTERN_TIMEOUT
                limit = limit if deadline is None else min(limit, deadline)
                places = self._places(detector, view.text, keywords) if self.prefilter else None
                if places is None:
                    places = [(0, len(view.text))]
                found = _within(detector.pattern, view.text, places, limit)
                for m in found:
                    matches.extend(self._confirm(detector, m, view))
            except TimeoutError:
                raise ScanIncomplete(detector.id) from None
        specific = [m for m in matches if m.detector not in _CATCH_ALL]
        return [m for m in matches if m.detector not in _CATCH_ALL
                or not any(o.start < m.end and m.start < o.end for o in specific)]

    def may_match(self, text: str) -> bool:
        """Whether scan() would run any detector's regex on this text: the prefilter passes
        alone, cheap and linear. False means scan() returns no match."""
        if self._multi is None:
            return True
        view = detection_view(text)
        hits = self._multi.scan(view.text)
        candidates = hits.detectors
        if candidates is None:
            return True
        keywords = _Keywords(view.text, hits.keywords)
        return any(not d.keywords or keywords.any_of(d.keywords) for d in self._runnable(candidates))

    def _runnable(self, candidates: set[str] | None) -> list[Detector]:
        """The candidate detectors (all when None), in the order of self.detectors: a text
        usually has a few, and scan() runs on every field of a request with a finding."""
        if candidates is None:
            return list(self.detectors)
        return [d for _, d in sorted(self._by_id[c] for c in candidates if c in self._by_id)]

    def _places(self, detector: Detector, text: str, keywords: "_Keywords") -> list[tuple[int, int]] | None:
        """The stretches of the text that hold every match of the detector, when they are
        known and few; None: the whole text. Around the places hyperscan says a match may
        end, or, for a detector whose every match holds one of its keywords, around each
        keyword (in ASCII text, where caseless means lowercase)."""
        reach = detector.max_length
        if not reach:
            return None
        if detector.keywords_inside:
            if not text.isascii():
                return None
            places = []
            for keyword in detector.keywords:
                at = keywords.lowered.find(keyword)
                while at != -1 and len(places) <= prefilters.LOCATE_LIMIT:
                    places.append((at + len(keyword) - reach, at + reach))
                    at = keywords.lowered.find(keyword, at + 1)
            return None if len(places) > prefilters.LOCATE_LIMIT else sorted(places)
        ends = self._multi.locate(text, detector.id) if self._multi else None
        return None if ends is None else [(end - reach, end) for end in ends]

    def _confirm(self, detector: Detector, m: regex.Match, view) -> list[Match]:
        group = "v" if "v" in detector.pattern.groupindex else 0
        value = m.group(group)
        start, end = m.span(group)
        if detector.context:
            window = view.text[max(0, start - prefilters.CONTEXT_REACH):start].lower()
            if not any(word in window for word in detector.context):
                return []
        if detector.validate and not detector.validate(value):
            return []
        placeholder = bool(detector.placeholder and detector.placeholder(value))
        o_start, o_end = view.to_original(start, end)
        return [Match(detector.id, o_start, o_end, value, placeholder)]


def _within(pattern: regex.Pattern, text: str, places: list[tuple[int, int]], deadline: float) -> Iterator[regex.Match]:
    """The matches a scan of the whole text would find, found only in ``places`` (sorted
    (start, end) stretches such that each match of a whole-text scan lies within one of them),
    widened by a margin for lookarounds; overlapping windows are merged, so each whole-text
    match lies inside one window, which never starts inside a match. Lookbehinds see the text before a
    window. A match that touches a window's cut-off end could be an artefact of the cut (the
    text goes on there); it is dropped: a real match there would end later, in a window of
    its own. All the windows share one ``deadline`` (TimeoutError after it), as one scan of the
    whole text would have."""
    margin = 8
    windows: list[list[int]] = []
    for start, stop in places:
        start, stop = max(0, start - margin), min(len(text), stop + margin)
        if windows and start <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], stop)
        else:
            windows.append([start, stop])
    for start, stop in windows:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        for m in pattern.finditer(text, start, stop, timeout=left):
            if m.end() == stop < len(text):
                break
            yield m


class _Keywords:
    """Which detector keywords a text holds: what the prefilter found in its pass over ASCII
    text, else the lowercased text and a digit-run search, each done at most once and only
    when asked."""

    def __init__(self, text: str, present: set[str] | None):
        self.text = text
        self.present = present

    @functools.cached_property
    def lowered(self) -> str:
        return self.text.lower()

    @functools.cached_property
    def has_digits(self) -> bool:
        return _DIGIT_RUN.search(self.text) is not None

    def any_of(self, keywords: tuple[str, ...]) -> bool:
        if self.present is not None:
            return any(k in self.present for k in keywords)
        return any(self.has_digits if k == DIGITS else k in self.lowered for k in keywords)
