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
import re
import threading
from typing import Callable, Iterable, NamedTuple

logger = logging.getLogger("tollgate")

try:  # a binary wheel for x86-64 Linux; elsewhere the engine runs every detector
    import hyperscan
except ImportError:  # pragma: no cover - depends on the platform
    hyperscan = None
try:  # built at install (setup.py); without it, those detectors' patterns go to hyperscan
    from tollgate.dlp._native import SHAPES as SHAPE_BITS, number_shapes  # a shape's name → its bit
except ImportError:  # pragma: no cover - depends on the build
    number_shapes, SHAPE_BITS = None, {}

_FLAGS = _ASCII_FLAGS = 0
if hyperscan is not None:
    # Not UCP (Unicode classes make compiling take seconds per pattern): `loosen` widens the
    # pattern instead, so that it still matches everything the Unicode regex matches.
    _ASCII_FLAGS = hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_ALLOWEMPTY
    _FLAGS = _ASCII_FLAGS | hyperscan.HS_FLAG_UTF8
_NON_ASCII = r"\x{80}-\x{10FFFF}"
# What Python's Unicode \s matches among ASCII characters (the \x1c-\x1f separators too,
# which PCRE's \s leaves out).
_ASCII_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f "
_PY_ONLY_SPACE = r"\x1c-\x1f"  # in Python's \s, not in PCRE's
_MAX_REPEAT = 32


def loosen(source: str, ascii_text: bool = False, lead: bool = True, edges: bool = True) -> str:
    """A pattern that matches at least wherever ``source`` matches (as a Unicode `regex`),
    written so that hyperscan compiles it fast without Unicode classes:
      - ``\\w``, ``\\d``, ``\\s`` (outside negated classes) also match any non-ASCII character,
        and ``\\s`` the \\x1c-\\x1f separators, as in Python;
        with ``ascii_text`` (the pattern only ever scans ASCII text) they keep their ASCII
        meaning instead, which hyperscan runs much faster;
      - a negative lookbehind of one character class that opens the pattern becomes that
        character consumed, or the start of the text (``(?<![\\w-])`` becomes
        ``(?:^|[^\\w-])``), and a negative lookahead that closes it likewise: the number
        detectors then stop firing on digits inside hashes and longer tokens. With ``lead``
        false the opening one is dropped instead (when something comes before the pattern),
        with ``edges`` false both are (hyperscan runs a pattern that opens with a class of
        almost every character much slower);
      - other lookarounds and ``\\b`` are dropped (a dropped condition only widens);
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
            if ascii_text and esc == "s":
                out.append(_ASCII_SPACE if in_class else f"[{_ASCII_SPACE}]")
            elif ascii_text and esc in "wd":
                out.append(source[i:i + 2])
            elif esc in "wds":
                extra = _PY_ONLY_SPACE if esc == "s" else ""
                if not in_class:
                    out.append(f"[\\{esc}{extra}{_NON_ASCII}]")
                elif not negated:
                    out.append(f"\\{esc}{extra}{_NON_ASCII}")
                else:
                    out.append(f"\\{esc}")  # PCRE's [^\s] admits \x1c-\x1f: wider, never narrower
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
            end = _skip_group(source, i)
            edge = None if not edges else "^" if i == 0 and lead and source.startswith("(?<!", i) else \
                "$" if end == n and source.startswith("(?!", i) else None
            single = edge and _single_class(source[source.index("!", i) + 1:end - 1])
            if single:
                out.append(loosen(f"(?:{edge}|[^{single}])", ascii_text))
            i = end
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


_LEADING_CLASS = re.compile(r"(?:\[(?:\\.|[^\]\\])+\]|\\[wdsWDS])(?:\{\d+(?:,\d*)?\}|[+*?])?")
# A literal character that must occur (no "?", "*" or "{" after it: those may repeat it zero times).
_LITERAL_START = re.compile(r"(?:[^\[\](){}|?*+.^$\\]|\\[^wdsWDSbBpPxX0-9])(?![?*{])")


def without_leading_classes(pattern: str) -> str:
    """A wider pattern that hyperscan runs much faster: the character classes that open a
    loosened pattern dropped, when a literal comes next (``[A-Za-z0-9._%+-]{1,}@...``
    becomes ``@...``). A pattern with no anchor matches wherever its end does, so any text
    it matches, the rest matches too. (An opening class makes hyperscan follow it at every
    position; a literal lets it skip to the places that hold one.)"""
    rest = pattern
    while (lead := _LEADING_CLASS.match(rest)) is not None:
        rest = rest[lead.end():]
    if rest is pattern or "|" in _top_level(rest) or not _LITERAL_START.match(rest):
        return pattern
    return rest


def _top_level(pattern: str) -> str:
    """The pattern with every group and class taken out (to look for a top-level "|")."""
    out, depth, i = [], 0, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            i = _skip_class(pattern, i)
            continue
        depth += ch == "("
        if depth == 0:
            out.append(ch)
        depth -= ch == ")"
        i += 1
    return "".join(out)


def _skip_class(pattern: str, i: int) -> int:
    i += 2 if pattern.startswith("[^", i) else 1
    i += pattern.startswith("]", i)  # a literal ] first in a class
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def _with_context(source: str, context: tuple[str, ...]) -> str:
    """The ASCII gate of a detector: its loosened pattern, preceded by one of its context
    words (caseless) within reach when it has them. The value must start the match (as in
    every built-in with context words), since the words are looked for before the value."""
    if not _context_applies(source, context):
        return loosen(source, ascii_text=True)
    words = "|".join("".join(f"\\x{b:02x}" for b in w.encode()) for w in context)
    reach = CONTEXT_REACH - min(map(len, context))
    # The word may end right where the value starts, so the boundary before the value goes.
    return f"(?i:{words})[\\s\\S]{{0,{reach}}}(?:{loosen(source, ascii_text=True, lead=False)})"


def _context_applies(source: str, context: tuple[str, ...]) -> bool:
    lookbehind = _skip_group(source, 0) if source.startswith("(?<") else 0
    value_opens = "(?P<v>" not in source or source.startswith("(?P<v>", lookbehind)
    return bool(context) and value_opens and all(w.isascii() and w for w in context)


CONTEXT_REACH = 64  # characters before a value where the engine looks for a context word


def _single_class(inner: str) -> str | None:
    """The members of a lookaround's one-character condition (``[\\w-]`` or ``\\d``), when
    that is all it holds; else None."""
    if re.fullmatch(r"\\[dws]", inner):
        return inner
    match = re.fullmatch(r"\[((?:[^\]\[\\^]|\\.)(?:[^\]\[\\]|\\.)*)\]", inner)
    return match.group(1) if match else None


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
def build(patterns: tuple[tuple, ...], keywords: tuple[str, ...] = (), digits_marker: str = "",
          digits_pattern: str = "", locatable: frozenset[str] = frozenset(),
          keyword_gated: frozenset[str] = frozenset()) -> "Prefilter":
    """Compiling takes about a second: every engine with the same detectors shares one."""
    return Prefilter(patterns, keywords, digits_marker, digits_pattern, locatable, keyword_gated)


class Hits(NamedTuple):  # a tuple: made for every text scanned, cheaper than a dataclass
    detectors: set[str] | None  # the detectors that may match; None: run them all
    keywords: set[str] | None  # the keywords present; None: not known (search in Python)


class Prefilter:
    def __init__(self, patterns: Iterable[tuple], keywords: Iterable[str] = (),
                 digits_marker: str = "", digits_pattern: str = "", locatable: frozenset[str] = frozenset(),
                 keyword_gated: frozenset[str] = frozenset()):
        """``patterns``: (detector id, regex source, case-insensitive[, context words[, its
        keywords[, its native shape]]]). A detector with a shape (see SHAPE_BITS) is gated in
        ASCII text by the native test of that name instead of a pattern in the pass.
        Case-insensitive patterns always run: Unicode case folding (the Kelvin sign is a k) is
        beyond ASCII mode. Context words (one must occur in the 64 characters before the value)
        join the pattern in the second ASCII pass: a number near "nhs", not any number.

        ``keywords``: the detectors' keywords, found in the same pass over ASCII text (ASCII
        caseless matching equals str.lower() there, and only there). ``digits_marker`` stands
        for a digit run, found with ``digits_pattern``.

        ``locatable``: detectors whose match ends `locate` reports in ASCII text.

        ``keyword_gated``: detectors whose keywords are searched even when their pattern is
        in the pass (a custom detector's keywords are a condition its user set; a built-in's
        are implied by its pattern or only save work)."""
        self.always: set[str] = set()  # detectors the prefilter cannot vouch for
        self._ids: list[str] = []
        self._keywords: list[str] = []
        self._db = None
        self._locators: dict[str, tuple] = {}
        patterns = list(patterns)
        if hyperscan is None:
            self.always = {d for d, *_ in patterns}
            return
        # Two databases of the same detectors: one for any UTF-8 text, and one for ASCII text
        # (most request bodies), where \d, \w and \s need not admit non-ASCII characters.
        # For ASCII text, two passes: a fast one with each pattern loosened the most, then,
        # only for the detectors it reports whose tighter gate differs (with the boundaries
        # and context words), a pass with the tight gates. Most bodies stop after the first.
        # (detector, pattern for any text, ASCII: fast pattern, tight gate, every match end)
        compiled: list[tuple[str, bytes, bytes, bytes, bytes]] = []
        context_words: dict[str, frozenset[str]] = {}
        keywords_of: dict[str, tuple[str, ...] | None] = {}
        shapes: dict[str, int] = {}
        gated: set[str] = set()
        for detector, source, caseless, *rest in patterns:
            context = rest[0] if rest else ()
            keywords_of[detector] = rest[1] if len(rest) > 1 else None  # None: not told
            if len(rest) > 2 and rest[2] and number_shapes is not None:
                shapes[detector] = SHAPE_BITS[rest[2]]
            source = source.removeprefix("(?-f)")  # case folding is moot: caseless patterns always run
            if context and _context_applies(source, context):
                context_words[detector] = frozenset(context)
            try:
                edgeless = None if caseless or "(?i" in source else loosen(source, ascii_text=True, edges=False)
                loose = None if edgeless is None else \
                    (loosen(source), without_leading_classes(edgeless), _with_context(source, context),
                     loosen(source, ascii_text=True))
            except ValueError:
                loose = None
            if loose is not None and loose[2] != edgeless:  # the tight gate says more than the fast pattern
                gated.add(detector)
            if loose is not None and _compiles(loose[0], _FLAGS) and all(_compiles(p, _ASCII_FLAGS) for p in loose[1:]):
                compiled.append((detector, *(p.encode() for p in loose)))
            else:
                self.always.add(detector)
        keywords = list(keywords)
        keywords_known = all(k.isascii() for k in keywords)  # ASCII caseless = str.lower() only there
        # A detector with context words that are all keywords (NHS numbers, AWS secret keys)
        # stays out of the fast pass: the keywords found there tell whether its tight gate (a
        # word within reach of the value) is worth a look.
        self._by_keyword = [(d, words) for d, words in context_words.items()
                            if keywords_known and words <= set(keywords)]
        # Keywords are searched only for a detector the database cannot take, a
        # `keyword_gated` one, and those gated by their context words. For the others the
        # pattern in the pass is the stronger condition ("sk_live_" and 10 more, not any
        # "sk_live"; "SK" and 32 hex digits, not any "sk"), so their keywords are reported
        # present without a search: fewer literals make a faster pass, and a two-character
        # `in` over 64 KB that finds nothing takes 0.05 ms.
        searched = {k for d, own in keywords_of.items() if d in self.always or d in keyword_gated or own is None
                    for k in (keywords if own is None else own)} | {w for _, words in self._by_keyword for w in words}
        self._assumed = frozenset(k for k in keywords if k not in searched)
        # Searched keywords of one or two characters ("@") are found with `in`: in the
        # database they slow the whole pass several times over.
        self._searched_short = [(k, k.lower().encode()) for k in keywords
                                if k in searched and len(k) <= 2 and k != digits_marker]
        keyword_expressions = _keyword_expressions(
            [k for k in keywords if k in searched and (len(k) > 2 or k == digits_marker)], digits_marker, digits_pattern) \
            if keywords_known else None
        if keyword_expressions is not None:
            self._keywords = [k for k, _, _ in keyword_expressions]
        if not compiled:
            return
        self._ids = [d for d, *_ in compiled]
        self._db = _database([p for _, p, _, _, _ in compiled], [_FLAGS] * len(compiled))
        by_keyword = {d for d, _ in self._by_keyword}
        self._shapes = {d: bit for d, bit in shapes.items() if d in self._ids}
        tight = [(d, gate) for d, _, _, gate, _ in compiled if (d in gated or d in by_keyword) and d not in self._shapes]
        # One database a detector: usually one needs refining (NHS numbers where "nhs" occurs),
        # and its gate alone scans faster than all of them together.
        databases = {d: _database([gate], [_ASCII_FLAGS]) for d, gate in tight}
        self._tight = {d: (db, hyperscan.Scratch(db), threading.local()) for d, db in databases.items()}
        self._refinable = frozenset(self._tight)
        fast = [(d, p) for d, _, p, _, _ in compiled if d not in by_keyword and d not in self._shapes]
        self._ascii_ids = [d for d, _ in fast]
        self._ascii_db = _database([p for _, p in fast] + [e for _, e, _ in keyword_expressions or []],
                                   [_ASCII_FLAGS] * len(fast) + [f for _, _, f in keyword_expressions or []])
        self._scratch = hyperscan.Scratch(self._db)
        self._ascii_scratch = hyperscan.Scratch(self._ascii_db)
        self._local = threading.local()  # scratch space is per thread; scans run in worker threads
        self._ascii_local = threading.local()
        self._keywords_known = keyword_expressions is not None
        self._keywords_of = {d: frozenset(own) for d, own in keywords_of.items() if own}
        # What an ASCII text with no match, no shape and no searched keyword gets: the
        # detectors the pass cannot vouch for that need no keyword, and the assumed keywords.
        self._nothing_found = Hits(frozenset(d for d in self.always if d not in self._keywords_of), self._assumed)
        for detector, _, _, _, ascii_pattern in compiled:
            if detector in locatable:  # every match end, not just "somewhere"
                db = _database([ascii_pattern], [_ASCII_FLAGS & ~hyperscan.HS_FLAG_SINGLEMATCH])
                self._locators[detector] = (db, hyperscan.Scratch(db), threading.local())

    @property
    def active(self) -> bool:
        return self._db is not None

    def candidates(self, text: str) -> set[str] | None:
        """Detectors that may match; None when the text cannot be prefiltered (run all)."""
        return self.scan(text).detectors

    def scan(self, text: str) -> Hits:
        """One pass: the detectors that may match, and (for ASCII text) the keywords present."""
        if self._db is None:
            return Hits(None, None)
        if text.isascii():
            return self._scan_ascii(text.encode("ascii"))
        hits: set[str] = set(self.always)
        try:
            data = text.encode("utf-8")  # strict: lone surrogates would be invalid UTF-8 for hyperscan
        except UnicodeEncodeError:
            return Hits(None, None)

        def on_match(index: int, _from: int, _to: int, _flags: int, _ctx: object) -> None:
            hits.add(self._ids[index])

        _scan(self._db, self._scratch, self._local, data, on_match)
        return Hits(hits, None)

    def _scan_ascii(self, data: bytes) -> Hits:
        matched: list[int] = []

        def on_match(index: int, _from: int, _to: int, _flags: int, _ctx: object) -> None:
            matched.append(index)

        _scan(self._ascii_db, self._ascii_scratch, self._ascii_local, data, on_match)
        shapes = number_shapes(data) if self._shapes else 0
        if not matched and not shapes and not self._searched_short and self._keywords_known:
            return self._nothing_found  # the usual case: a clean text, one pass
        hits: set[str] = set(self.always)
        found: set[str] = set()
        count = len(self._ascii_ids)
        for index in matched:
            if index < count:
                hits.add(self._ascii_ids[index])
            else:
                found.add(self._keywords[index - count])
        if shapes:
            hits.update(d for d, bit in self._shapes.items() if shapes & bit)
        if self._keywords_known:
            found.update(self._assumed)
            if self._searched_short:
                lowered = data.lower()  # ASCII: caseless is lowercase
                found.update(k for k, needle in self._searched_short if needle in lowered)
            for d, words in self._by_keyword:
                if not words.isdisjoint(found):
                    hits.add(d)
            # A detector none of whose keywords occur does not run: no gate to refine.
            for d in [d for d in hits if d in self._keywords_of]:
                if self._keywords_of[d].isdisjoint(found):
                    hits.discard(d)
        for detector in hits & self._refinable:  # its tight gate must pass too
            db, scratch, local = self._tight[detector]
            passed: list[bool] = []
            _scan(db, scratch, local, data, lambda *_: passed.append(True))
            if not passed:
                hits.discard(detector)
        return Hits(hits, found if self._keywords_known else None)

    def locate(self, text: str, detector: str) -> list[int] | None:
        """Every offset in ASCII ``text`` where a match of ``detector`` may end (a superset of
        where its regex matches end), in order; None when not known (not ASCII, not locatable,
        or too many to be worth it)."""
        locator = self._locators.get(detector)
        if locator is None or not text.isascii():
            return None
        db, scratch, local = locator
        ends: list[int] = []

        def on_match(_index: int, _from: int, end: int, _flags: int, _ctx: object) -> bool | None:
            ends.append(end)
            return True if len(ends) > LOCATE_LIMIT else None  # True stops the scan

        try:
            _scan(db, scratch, local, text.encode("ascii"), on_match)
        except hyperscan.ScanTerminated:
            return None  # stopped at the limit
        return ends


LOCATE_LIMIT = 256  # match ends; beyond that one regex pass over the whole text is cheaper


def _keyword_expressions(keywords: list[str], digits_marker: str,
                         digits_pattern: str) -> list[tuple[str, bytes, int]] | None:
    """(keyword, hyperscan expression, flags) for each keyword; None when one is not ASCII
    (ASCII caseless matching cannot stand in for str.lower() then)."""
    out = []
    for keyword in keywords:
        if keyword == digits_marker:
            out.append((keyword, digits_pattern.encode(), hyperscan.HS_FLAG_SINGLEMATCH))
        elif keyword.isascii():
            literal = "".join(f"\\x{b:02x}" for b in keyword.encode()).encode()
            out.append((keyword, literal, hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_CASELESS))
        else:
            return None
    return out


def _scan(db, scratch, local: threading.local, data: bytes, on_match) -> None:
    """One hyperscan pass with this thread's own scratch space (scans run on the event loop
    and in worker threads; a scratch may not be shared between threads)."""
    own = getattr(local, "scratch", None)
    if own is None:
        own = local.scratch = scratch.clone()
    db.scan(data, match_event_handler=on_match, scratch=own)


def _database(expressions: list[bytes], flags: list[int]):
    db = hyperscan.Database()
    db.compile(expressions=expressions, ids=list(range(len(expressions))), elements=len(expressions), flags=flags)
    return db


def _compiles(source: str, flags: int) -> bool:
    try:
        _database([source.encode()], [flags])
        return True
    except hyperscan.error:
        logger.info("tollgate: DLP prefilter cannot take a pattern; its detector always runs")
        return False


def build_trigger(pattern: bytes) -> Callable[[bytes], bool]:
    """A test of whether ``pattern`` (a plain regex, the same in hyperscan and `re`) occurs in
    bytes: one hyperscan pass, or `re` without hyperscan."""
    if hyperscan is None:
        search = re.compile(pattern).search
        return lambda data: search(data) is not None
    db = _database([pattern], [hyperscan.HS_FLAG_SINGLEMATCH])
    scratch, local = hyperscan.Scratch(db), threading.local()

    def occurs(data: bytes) -> bool:
        found = []
        _scan(db, scratch, local, data, lambda *_: found.append(True))
        return bool(found)

    return occurs
