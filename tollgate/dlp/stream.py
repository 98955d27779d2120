"""Scan a body too large to hold, as it passes: decode, scan in windows, hold back an overlap.

Pure: the mitmproxy hook feeds raw chunks in and forwards what ``feed`` returns. The
guarantee: no byte of a match up to ``OVERLAP`` characters long is returned before the
whole match was scanned, because the last ``OVERLAP`` decoded bytes are held back and
scanned again with what follows. Once a chunk shows data that may not leave, nothing more
is returned (the hook then cuts the upstream connection).

What a stream scan does not do, unlike the full inspection of a body within
``max_body_bytes``: parse the structure (the body is scanned as text, with its encoded
layers), and redact (a match that would be redacted blocks instead: the bytes before it are
already gone).
"""

from __future__ import annotations

import re
import time
import zlib
from typing import Callable, Iterator

import brotli
import zstandard
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from tollgate.dlp.content import MAX_RATIO, Slot, Uninspectable, declared_charset, form_unquote
from tollgate.dlp.decide import Finding, decide
from tollgate.dlp.engine import PATTERN_TIMEOUT, Engine, ScanIncomplete
from tollgate.dlp.inspect import Outcome, audit_view, clean_at_a_glance, scan_slots
from tollgate.policy.model import Destination, DlpSettings

OVERLAP = 8 * 1024  # decoded bytes scanned twice: longer than any built-in match (a PEM key is ~3 KB)
WINDOW = 64 * 1024  # new decoded bytes per scan: bounds the time one scan holds the event loop
MAX_HELD = 8 * 1024 * 1024  # raw bytes held back waiting for the decoder: more is refused
KEEP_PER_DETECTOR = 25  # findings kept per detector for block_at and the audit event


class StreamScanner:
    def __init__(self, engine: Engine, dlp: DlpSettings, key: bytes, host: str, destination: Destination | None,
                 content_encoding: str, content_type: str = "", evidence_key: X25519PublicKey | None = None,
                 report_only: bool = False):
        self._engine, self._dlp, self._key, self._evidence_key = engine, dlp, key, evidence_key
        self._host, self._destination, self._report_only = host, destination, report_only
        self.stopped: Outcome | None = None  # block or uninspectable: nothing more goes out
        self._passing = False  # see pass_rest
        self._finished = False
        try:  # a body that cannot be scanned at all is stopped before any byte moves
            self._charset = _ascii_compatible(declared_charset(content_type))
            self._decoder = streaming_decoder(content_encoding)
        except Uninspectable as e:
            self._charset, self._decoder = "utf-8", None
            self._stop_uninspectable(e)
        self._identity = self._decoder is None
        self._media = (content_type or "").split(";")[0].strip().lower()
        self._json = self._media.endswith("json") or self._media == "application/x-ndjson"
        self._held: list[tuple[bytes, int]] = []  # raw chunks not yet forwarded, with the decoded end of each
        self._held_bytes = 0
        self._tail = b""  # the last OVERLAP decoded bytes: scanned again with what follows
        self._kept: dict[str, list[Finding]] = {}
        self._seen_layered: set[tuple[str, str]] = set()
        self._deferred: list[Finding] = []  # matches at the end of the last window, judged with what follows
        self.received = 0  # raw bytes in
        self.decoded = 0  # decoded bytes scanned
        self.forwarded = 0  # raw bytes out

    # --- the two calls the hook makes ---------------------------------------------------

    def feed(self, raw: bytes) -> list[bytes]:
        """Raw bytes in; the raw bytes that may go out now (possibly none)."""
        if self._passing:
            self.received += len(raw)
            self.forwarded += len(raw)
            return [raw] if raw else []
        if self.stopped:
            return []
        self.received += len(raw)
        if self._finished:
            # mitmproxy calls the end of a body and an empty HTTP/2 DATA frame alike: data after
            # "the end" means the held-back overlap went out early. Cut rather than go on.
            self._held.append((raw, self.decoded))
            self._held_bytes += len(raw)
            return self._stop_uninspectable(Uninspectable("data_after_end", "more body after an empty data frame"))
        self._held.append((raw, self.decoded))  # its decoded end is set once it is decoded
        self._held_bytes += len(raw)
        try:
            if self.received > self._dlp.stream_max_bytes:
                raise Uninspectable("too_large", "the body is larger than dlp.stream_max_bytes")
            # Piece by piece, each scanned and dropped: a few bytes of brotli can decode to
            # gigabytes, which are never held at once.
            for piece in ([raw] if self._identity else self._decoder.decompress(raw)):
                self._check_ratio(len(piece))
                self._scan_new(piece)
                if self.stopped:
                    return []
            self._held[-1] = (raw, self.decoded)
            if self._held_bytes > MAX_HELD:
                raise Uninspectable("stream_stalled", "the compressed body holds too much that does not decode")
        except (Uninspectable, ScanIncomplete) as e:
            return self._stop_uninspectable(e)
        if self.stopped:
            return []
        return self._release(self.decoded - OVERLAP)

    def finish(self) -> list[bytes]:
        """End of the body: scan what the decoder still holds; the rest goes out if clean."""
        if self.stopped or self._passing:
            return []
        self._finished = True
        try:
            if not self._identity:
                self._decoder.finish()
            if not self.stopped:  # nothing follows: the matches at the very end are whole
                deferred, self._deferred = self._deferred, []
                self._count(deferred)
        except (Uninspectable, ScanIncomplete) as e:
            return self._stop_uninspectable(e)
        if self.stopped:
            return []
        return self._release(self.decoded)

    @property
    def passing(self) -> bool:
        return self._passing

    def pass_rest(self) -> list[bytes]:
        """After a stop the policy only reports (uninspectable: report, or a report-only rule):
        the held bytes, and from now on every byte, go out unscanned."""
        self._passing = True
        out = [raw for raw, _ in self._held if raw]
        self._held, self._held_bytes = [], 0
        self.forwarded += sum(map(len, out))
        return out

    def outcome(self) -> Outcome:
        """What the whole stream amounted to (so far): for the audit event."""
        if self.stopped:
            return self.stopped
        return self._judge()

    # --- inside -------------------------------------------------------------------------

    def _check_ratio(self, more: int) -> None:
        if self.decoded + more > max(self.received * MAX_RATIO, 65536):
            raise _bomb()

    def _release(self, upto: int) -> list[bytes]:
        """Forward the held raw bytes whose decoded content ends at or before `upto`."""
        out: list[bytes] = []
        while self._held and self._held[0][1] <= upto:
            raw, _ = self._held.pop(0)
            out.append(raw)
        if self._identity and self._held and upto > self.forwarded + sum(len(o) for o in out):
            # Identity: raw and decoded are the same bytes, so a chunk can be split exactly.
            raw, end = self._held[0]
            cut = upto - (end - len(raw))
            out.append(raw[:cut])
            self._held[0] = (raw[cut:], end)
        sent = sum(len(o) for o in out)
        self._held_bytes -= sent
        self.forwarded += sent
        return [o for o in out if o]  # never b"": mitmproxy would send it as the last chunk

    def _scan_new(self, data: bytes) -> None:
        for i in range(0, len(data), WINDOW):
            piece = data[i:i + WINDOW]
            self._scan_window(self._tail + piece, len(self._tail))
            self.decoded += len(piece)
            self._tail = (self._tail + piece)[-OVERLAP:]
            if self.stopped:
                return

    def _view(self, data: bytes) -> str:
        """The text a window is scanned as: as a whole-body inspection's fast path sees it."""
        text = data.decode(self._charset, "replace")
        if self._media == "application/x-www-form-urlencoded":
            return form_unquote(text)  # "+" is a space here, not the start of a phone number
        if self._json and "\\" in text:
            return json_unescaped(text)  # a key written as \u0041KIA... or https:\/\/...
        return text

    def _scan_window(self, window: bytes, seen_before: int) -> None:
        deferred, self._deferred = self._deferred, []
        text = self._view(window)
        if clean_at_a_glance(self._engine, text):
            return
        seen_chars = len(self._view(window[:seen_before]))
        again = {(f.detector, f.value) for f in deferred}
        new: list[Finding] = []
        # On the event loop: all of one window's scans share one pattern budget.
        for f in scan_slots(self._engine, [Slot("body", text)], time.monotonic() + PATTERN_TIMEOUT):
            if f.where == "body" and not f.layers:
                if f.end <= seen_chars and (f.detector, f.value) not in again:
                    continue  # wholly in the overlap: counted in the window before
                if f.end >= len(text) and len(text) - f.start <= OVERLAP // 4:
                    # It touches the end of what arrived so far and may be cut short (a
                    # 39-character prefix of a 40-character key). Still held back: judge it
                    # in the next window, whole. (A character is at most 4 bytes.)
                    self._deferred.append(f)
                    continue
            else:
                key = (f.detector, f.value)
                if key in self._seen_layered:
                    continue
                self._seen_layered.add(key)
            new.append(f)
        self._count(new)

    def _count(self, new: list[Finding]) -> None:
        if not new:
            return
        for f in new:
            kept = self._kept.setdefault(f.detector, [])
            if len(kept) < KEEP_PER_DETECTOR:
                kept.append(f)
        verdict = self._judge()
        if verdict.action == "block":
            self.stopped = verdict

    def _judge(self) -> Outcome:
        findings = [f for kept in self._kept.values() for f in kept]
        decision = decide(findings, self._dlp, self._destination, self._host, self._report_only)
        return Outcome(decision.action, decision, would=decision.would,
                       findings=[audit_view(j, self._key, self._evidence_key) for j in decision.judged])

    def _stop_uninspectable(self, e: Uninspectable | ScanIncomplete) -> list[bytes]:
        reason = e.reason if isinstance(e, Uninspectable) else "scan_incomplete"
        self.stopped = Outcome("uninspectable", uninspectable=reason, message=str(e))
        return []


_JSON_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|(.))", re.DOTALL)
_JSON_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def json_unescaped(text: str) -> str:
    """JSON string escapes undone wherever they are (a window need not start at a string)."""
    def one(m: re.Match) -> str:
        if m.group(1):
            code = int(m.group(1), 16)
            return "\ufffd" if 0xD800 <= code <= 0xDFFF else chr(code)
        return _JSON_SIMPLE.get(m.group(2), m.group(2))

    return _JSON_ESCAPE.sub(one, text)


def _ascii_compatible(charset: str) -> str:
    """Windows start at any byte: only a charset where ASCII is one byte each decodes from
    anywhere (UTF-8, Latin-1, Shift_JIS... not UTF-16 or UTF-32)."""
    probe = "Az09:=_-"
    try:
        if probe.encode(charset) == probe.encode("ascii") and probe.encode("ascii").decode(charset) == probe:
            return charset
    except (LookupError, UnicodeError):
        pass
    raise Uninspectable("undecodable_text", f"a streamed body in charset {charset!r} cannot be scanned")


# --- Content-Encoding, one chunk at a time --------------------------------------------------

class _Decoder:
    """decompress(raw) yields the decoded output in pieces (so it is never all in memory);
    finish() checks the stream was complete."""

    def __init__(self, decompress: Callable[[bytes], Iterator[bytes]], finish: Callable[[], None]):
        self.decompress, self.finish = decompress, finish


def streaming_decoder(content_encoding: str) -> _Decoder | None:
    """None for identity; a decoder for one gzip, deflate, br or zstd coding; Uninspectable
    for anything else (stacked codings included: each layer would need its own hold-back)."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip() and c.strip().lower() != "identity"]
    if not codings:
        return None
    if len(codings) > 1:
        raise Uninspectable("unknown_encoding", "a streamed body with stacked Content-Encodings cannot be decoded")
    coding = codings[0]
    if coding in ("gzip", "x-gzip", "deflate"):
        return _zlib_decoder(16 + zlib.MAX_WBITS if coding != "deflate" else zlib.MAX_WBITS)
    if coding == "br":
        return _stepped_decoder(brotli.Decompressor(), brotli.error, lambda d: d.is_finished(), "process", 32)
    if coding == "zstd":
        return _stepped_decoder(zstandard.ZstdDecompressor().decompressobj(), zstandard.ZstdError, lambda d: d.eof,
                                "decompress", 256)
    raise Uninspectable("unknown_encoding", f"Content-Encoding {coding!r} cannot be decoded")


def _bomb() -> Uninspectable:
    return Uninspectable("decompression_bomb", f"the body decompresses to more than {MAX_RATIO}x its size")


def _corrupt(e: Exception) -> Uninspectable:
    return Uninspectable("corrupt_encoding", f"the compressed body is corrupt: {e}")


def _truncated() -> Uninspectable:
    return Uninspectable("corrupt_encoding", "the compressed body is truncated")


def _zlib_decoder(wbits: int) -> _Decoder:
    state = {"d": zlib.decompressobj(wbits), "raw_deflate_tried": wbits != zlib.MAX_WBITS, "started": False}

    def decompress(raw: bytes) -> Iterator[bytes]:
        data = raw
        while True:
            try:
                out = state["d"].decompress(data, WINDOW)
            except zlib.error as e:
                if state["started"] or state["raw_deflate_tried"]:
                    raise _corrupt(e) from None
                # "deflate" as some clients send it: raw, with no zlib header.
                state["d"], state["raw_deflate_tried"] = zlib.decompressobj(-zlib.MAX_WBITS), True
                continue
            state["started"] = True
            data = state["d"].unconsumed_tail
            if out:
                yield out
            if not data and len(out) < WINDOW:  # (a full piece may leave output pending)
                return

    def finish() -> None:
        if not state["d"].eof:
            raise _truncated()

    return _Decoder(decompress, finish)


def _stepped_decoder(d, error: type[Exception], finished: Callable, method: str, step: int) -> _Decoder:
    """brotli and zstd have no output limit: feed small steps, yield what each gives."""
    def decompress(raw: bytes) -> Iterator[bytes]:
        for i in range(0, len(raw), step):
            try:
                out = getattr(d, method)(raw[i:i + step])
            except error as e:
                raise _corrupt(e) from None
            if out:
                yield out

    def finish() -> None:
        if not finished(d):
            raise _truncated()

    return _Decoder(decompress, finish)
