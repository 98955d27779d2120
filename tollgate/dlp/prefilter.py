"""One multi-pattern pass that says which detectors can possibly match a text.

Hyperscan (x86-64) compiles every detector's pattern in prefilter mode: it may report a
detector that does not match, never miss one that does. Only the detectors it reports run
their own regex and validator, so a clean body costs one pass at memory speed instead of
some thirty regex passes. Where hyperscan is missing or cannot compile a pattern, that
detector always runs (the keyword gate in the engine still applies): slower, never weaker.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Iterable

logger = logging.getLogger("tollgate")

try:  # a binary wheel for x86-64 Linux; elsewhere the engine runs every detector
    import hyperscan
except ImportError:  # pragma: no cover - depends on the platform
    hyperscan = None

_FLAGS = 0
if hyperscan is not None:
    # Not UCP (Unicode classes make compiling take seconds per pattern): `loosen` widens the
    # pattern instead, so that it still matches everything the Unicode regex matches.
    _FLAGS = hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_UTF8 \
        | hyperscan.HS_FLAG_ALLOWEMPTY
_NON_ASCII = r"\x{80}-\x{10FFFF}"
_MAX_REPEAT = 32


def loosen(source: str) -> str:
    """A pattern that matches at least wherever ``source`` matches (as a Unicode `regex`),
    written so that hyperscan compiles it fast in ASCII mode:
      - ``\\w``, ``\\d``, ``\\s`` (outside negated classes) also match any non-ASCII character;
      - ``\\b`` and lookarounds are dropped (a dropped condition only widens);
      - repeats above 32 become open-ended.
    Raises ValueError on syntax it does not know; the detector then always runs."""
    out: list[str] = []
    i, n = 0, len(source)
    in_class = negated = False
    while i < n:
        ch = source[i]
        if ch == "\\":
            if i + 1 >= n:
                raise ValueError("trailing backslash")
            esc = source[i + 1]
            if esc in "wds":
                if not in_class:
                    out.append(f"[\\{esc}{_NON_ASCII}]")
                elif not negated:
                    out.append(f"\\{esc}{_NON_ASCII}")
                else:
                    out.append(f"\\{esc}")
            elif esc in "bB" and not in_class:
                pass
            elif esc in "pPNXGKR" or (esc == "x" and i + 2 < n and source[i + 2] == "{"):
                raise ValueError(f"\\{esc}")
            else:
                out.append(source[i:i + 2])
            i += 2
            continue
        if in_class:
            if ch == "]" and not (out and out[-1] in ("[", "[^")):
                in_class = False
            elif ch == "[":
                raise ValueError("nested class")
            out.append(ch)
            i += 1
            continue
        if ch == "[":
            negated = source.startswith("[^", i)
            in_class = True
            out.append("[^" if negated else "[")
            i += 2 if negated else 1
            if i < n and source[i] == "]":  # a literal ] first in a class
                out.append("\\]")
                i += 1
            continue
        if source.startswith(("(?=", "(?!", "(?<=", "(?<!"), i):
            i = _skip_group(source, i)
            continue
        if ch == "{":
            close = source.find("}", i)
            body = source[i + 1:close] if close > 0 else ""
            low, sep, high = body.partition(",")
            if low.isdigit() and (not sep or not high or high.isdigit()):
                top = int(high) if high else (int(low) if not sep else None)
                if top is not None and top > _MAX_REPEAT:
                    body = f"{min(int(low), _MAX_REPEAT)},"
                out.append("{" + body + "}")
                i = close + 1
                continue
        out.append(ch)
        i += 1
    if in_class:
        raise ValueError("unterminated class")
    return "".join(out)


def _skip_group(source: str, i: int) -> int:
    """The index just past the group that opens at ``i`` (escapes and classes respected)."""
    depth, in_class = 0, False
    while i < len(source):
        ch = source[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            if source.startswith("[]", i) or source.startswith("[^]", i):
                i += 2
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced group")


@functools.lru_cache(maxsize=16)
def build(patterns: tuple[tuple[str, str, bool], ...]) -> "Prefilter":
    """Compiling takes about a second: every engine with the same detectors shares one."""
    return Prefilter(patterns)


class Prefilter:
    def __init__(self, patterns: Iterable[tuple[str, str, bool]]):
        """``patterns``: (detector id, regex source, case-insensitive). Case-insensitive
        patterns always run: Unicode case folding (the Kelvin sign is a k) is beyond ASCII mode."""
        self.always: set[str] = set()  # detectors the prefilter cannot vouch for
        self._ids: list[str] = []
        self._db = None
        patterns = list(patterns)
        if hyperscan is None:
            self.always = {d for d, _, _ in patterns}
            return
        compiled: list[tuple[str, bytes]] = []
        for detector, source, caseless in patterns:
            source = source.removeprefix("(?-f)")  # case folding is moot: caseless patterns always run
            try:
                loose = None if caseless or "(?i" in source else loosen(source)
            except ValueError:
                loose = None
            if loose is not None and _compiles(loose):
                compiled.append((detector, loose.encode()))
            else:
                self.always.add(detector)
        if compiled:
            self._db = hyperscan.Database()
            self._db.compile(expressions=[p for _, p in compiled], ids=list(range(len(compiled))),
                             elements=len(compiled), flags=[_FLAGS] * len(compiled))
            self._ids = [d for d, _ in compiled]
        self._scratch = hyperscan.Scratch(self._db) if self._db else None
        self._local = threading.local()  # scratch space is per thread; scans run in worker threads

    @property
    def active(self) -> bool:
        return self._db is not None

    def candidates(self, text: str) -> set[str] | None:
        """Detectors that may match; None when the text cannot be prefiltered (run all)."""
        if self._db is None:
            return None
        try:
            data = text.encode("utf-8")  # strict: lone surrogates would be invalid UTF-8 for hyperscan
        except UnicodeEncodeError:
            return None
        hits: set[str] = set(self.always)
        ids = self._ids

        def on_match(index: int, _from: int, _to: int, _flags: int, _ctx: object) -> None:
            hits.add(ids[index])

        _scan(self._db, self._scratch, self._local, data, on_match)
        return hits


def _scan(db, scratch, local: threading.local, data: bytes, on_match) -> None:
    """One hyperscan pass with this thread's own scratch space (scans run on the event loop
    and in worker threads; a scratch may not be shared between threads)."""
    own = getattr(local, "scratch", None)
    if own is None:
        own = local.scratch = scratch.clone()
    db.scan(data, match_event_handler=on_match, scratch=own)


def _compiles(source: str) -> bool:
    try:
        db = hyperscan.Database()
        db.compile(expressions=[source.encode()], ids=[0], elements=1, flags=[_FLAGS])
        return True
    except hyperscan.error:
        logger.info("tollgate: DLP prefilter cannot take a pattern; its detector always runs")
        return False


@functools.lru_cache(maxsize=16)
def build_keyword_gate(keywords: tuple[str, ...], digits_marker: str, digits_pattern: str) -> "KeywordGate":
    return KeywordGate(keywords, digits_marker, digits_pattern)


class KeywordGate:
    """Which detector keywords occur in a text, in one hyperscan pass instead of one substring
    search per keyword over the lowercased text. Exact for ASCII text only (ASCII caseless
    matching equals str.lower() there); for any other text `present` says None and the engine
    checks in Python."""

    def __init__(self, keywords: tuple[str, ...], digits_marker: str, digits_pattern: str):
        self._names: list[str] = []
        self._db = None
        if hyperscan is None:
            return
        expressions, flags = [], []
        for keyword in keywords:
            if keyword == digits_marker:
                expressions.append(digits_pattern.encode())
                flags.append(hyperscan.HS_FLAG_SINGLEMATCH)
            elif keyword.isascii():
                expressions.append("".join(f"\\x{b:02x}" for b in keyword.encode()).encode())
                flags.append(hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_CASELESS)
            else:
                return  # a non-ASCII keyword: ASCII caseless matching cannot stand in for lower()
            self._names.append(keyword)
        if expressions:
            self._db = hyperscan.Database()
            self._db.compile(expressions=expressions, ids=list(range(len(expressions))),
                             elements=len(expressions), flags=flags)
            self._scratch = hyperscan.Scratch(self._db)
            self._local = threading.local()

    def present(self, text: str) -> set[str] | None:
        if self._db is None or not text.isascii():
            return None
        found: set[str] = set()
        names = self._names

        def on_match(index: int, _from: int, _to: int, _flags: int, _ctx: object) -> None:
            found.add(names[index])

        _scan(self._db, self._scratch, self._local, text.encode("ascii"), on_match)
        return found
