"""What a request carries, as text to scan: decode the transport, parse the structure,
peel encoded layers. Pure: no mitmproxy.

Each piece of text is a ``Slot`` that knows where it came from and, where the proxy can
rewrite it in place, how to put a redacted value back. Anything that cannot be decoded
raises ``Uninspectable``: the caller blocks (or reports, if the policy says so); it never
forwards what it could not read.
"""

from __future__ import annotations

import base64
import binascii
import html
import io
import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote, unquote_plus, urlencode

import brotli
import zstandard

from tollgate.dlp.prefilter import build as build_prefilter, build_trigger

try:  # the native parts (setup.py builds them); the same results in Python without them
    from tollgate.dlp._native import encoded_layers as _native_layers, has_entity as _native_has_entity, \
        percent_decoded as _native_percent
except ImportError:  # pragma: no cover - depends on the build
    _native_layers = _native_percent = _native_has_entity = None

MAX_RATIO = 200  # decompressed/compressed: more than this is treated as a decompression bomb
MAX_LAYER_DEPTH = 3  # base64/hex/percent/entities inside each other


class Uninspectable(Exception):
    """The content cannot be decoded safely; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Slot:
    where: str  # e.g. "body", "body:$.user.card", "query:token", "header:authorization", "path"
    text: str
    layers: tuple[str, ...] = ()  # encodings peeled to get here, outermost first
    replace: Callable[[str], None] | None = None  # writes a new value back (None: not rewritable)


@dataclass
class RequestContent:
    path: str
    query: list[tuple[str, str]]
    headers: list[tuple[str, str]]
    body_kind: str  # "none", "json", "form", "text", "multipart", "binary"
    body: Any  # parsed JSON, a list of pairs, a str, or bytes
    charset: str = "utf-8"
    slots: list[Slot] = field(default_factory=list)

    def body_bytes(self) -> bytes:
        """The (possibly redacted) body, serialised in its original structure."""
        if self.body_kind == "json":
            return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode(self.charset)
        if self.body_kind == "form":
            return urlencode(self.body).encode("ascii")
        if self.body_kind == "text":
            return self.body.encode(self.charset)
        return self.body or b""

    def query_string(self) -> str:
        return urlencode(self.query)


# --- transport -------------------------------------------------------------------------

def decode_transport(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """Undo Content-Encoding (stacked, any order), capped in size and ratio."""
    if not content_encoding:
        return raw if len(raw) <= limit else _too_large()
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip() and c.strip().lower() != "identity"]
    data = raw
    for coding in reversed(codings):
        if len(data) > limit:
            raise Uninspectable("too_large", "the body is larger than dlp.max_body_bytes")
        cap = min(limit, max(len(data) * MAX_RATIO, 65536))
        if coding in ("gzip", "x-gzip"):
            data = _zlib(data, 16 + zlib.MAX_WBITS, cap)
        elif coding == "deflate":
            try:
                data = _zlib(data, zlib.MAX_WBITS, cap)
            except Uninspectable:
                data = _zlib(data, -zlib.MAX_WBITS, cap)  # raw deflate, as some clients send it
        elif coding == "br":
            data = _brotli(data, cap)
        elif coding == "zstd":
            data = _zstd(data, cap)
        else:
            raise Uninspectable("unknown_encoding", f"Content-Encoding {coding!r} cannot be decoded")
    if len(data) > limit:
        raise Uninspectable("too_large", "the body is larger than dlp.max_body_bytes")
    return data


def _too_large() -> bytes:
    raise Uninspectable("too_large", "the body is larger than dlp.max_body_bytes")


def _bomb(cap: int) -> Uninspectable:
    return Uninspectable("decompression_bomb", f"the body decompresses to more than {cap} bytes")


def _zlib(data: bytes, wbits: int, cap: int) -> bytes:
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(data, cap + 1)
    except zlib.error as e:
        raise Uninspectable("corrupt_encoding", f"the compressed body is corrupt: {e}") from None
    if len(out) > cap:
        raise _bomb(cap)
    if not d.eof:
        raise Uninspectable("corrupt_encoding", "the compressed body is truncated")
    return out


def _brotli(data: bytes, cap: int) -> bytes:
    # brotli 1.1 (pinned by mitmproxy 11.0) has no output limit: feed small steps and stop early.
    d = brotli.Decompressor()
    out = bytearray()
    try:
        for i in range(0, len(data), 32):
            out += d.process(data[i:i + 32])
            if len(out) > cap:
                raise _bomb(cap)
    except brotli.error as e:
        raise Uninspectable("corrupt_encoding", f"the compressed body is corrupt: {e}") from None
    if not d.is_finished():
        raise Uninspectable("corrupt_encoding", "the compressed body is truncated")
    return bytes(out)


def _zstd(data: bytes, cap: int) -> bytes:
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            out = reader.read(cap + 1)
    except zstandard.ZstdError as e:
        raise Uninspectable("corrupt_encoding", f"the compressed body is corrupt: {e}") from None
    if len(out) > cap:
        raise _bomb(cap)
    return out


def decode_text(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset)
    except (LookupError, UnicodeDecodeError):
        raise Uninspectable("undecodable_text", f"the body is not valid {charset} text") from None


# --- structure --------------------------------------------------------------------------

def quick_view(path: str, headers: list[tuple[str, str]], body: bytes, content_type: str) -> str | None:
    """Everything as one text, when scanning it raw finds what a structured scan would.

    Text with backslash escapes (JSON's \\u, \\" and \\/, which PHP and others write for every
    slash) is parsed first (None): raw, an escape splits a value and hides it from a detector.
    """
    media = (content_type or "").split(";")[0].strip().lower()
    charset = _CHARSET.search(content_type) if "=" in (content_type or "") else None
    if charset and charset.group(1).lower() not in ("utf-8", "utf8", "us-ascii"):
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\\" in text:
        return None
    if media == "application/x-www-form-urlencoded":
        text = form_unquote(text)
    elif media == "multipart/form-data" and _base64_part(text):
        return None
    head = "\n".join(f"{k}: {v}" for k, v in headers) if headers else ""
    return f"{percent_unquote(path) if '%' in path else path}\n{head}\n{text}"


_CHARSET = re.compile(r"charset=\"?([\w.:-]+)", re.IGNORECASE)
_BASE64_PART = re.compile(r"(?i)content-transfer-encoding:\s*base64")


def _base64_part(text: str) -> bool:
    # The caseless regex is slow over a large body; in ASCII text, caseless is lowercase.
    if text.isascii() and "content-transfer-encoding" not in text.lower():
        return False
    return _BASE64_PART.search(text) is not None


def form_unquote(text: str) -> str:
    """urllib.parse.unquote_plus(text): natively for ASCII text (urllib decodes each escape
    in a Python loop, and forms are full of them)."""
    if _native_percent is None or not text.isascii():
        return unquote_plus(text)
    return _native_percent(text.encode("ascii"), True)


def percent_unquote(text: str) -> str:
    """urllib.parse.unquote(text), natively for ASCII text."""
    if _native_percent is None or not text.isascii():
        return unquote(text)
    return _native_percent(text.encode("ascii"), False)


def declared_charset(content_type: str) -> str:
    match = _CHARSET.search(content_type or "")
    return match.group(1).lower() if match else "utf-8"


def parse_request(path: str, headers: list[tuple[str, str]], body: bytes, content_type: str) -> RequestContent:
    """Split a request (body already transport-decoded) into slots to scan."""
    raw_path, _, raw_query = path.partition("?")
    charset = declared_charset(content_type)
    media = (content_type or "").split(";")[0].strip().lower()
    content = RequestContent(raw_path, parse_qsl(raw_query, keep_blank_values=True), list(headers), "none", None, charset)

    content.slots.append(Slot("path", unquote(raw_path)))
    for i, (name, value) in enumerate(content.query):
        content.slots.append(Slot(f"query:{name}", f"{name}={value}", replace=_query_setter(content, i, name)))
    for i, (name, value) in enumerate(headers):
        if name.lower() in ("host", "content-length", "content-type", "content-encoding", "transfer-encoding"):
            continue
        content.slots.append(Slot(f"header:{name.lower()}", f"{name}: {value}", replace=_header_setter(content, i, name)))

    if not body:
        return content
    if media == "multipart/form-data":
        content.body_kind, content.body = "multipart", body
        content.slots.extend(_multipart_slots(body, content_type))
        return content
    if media.endswith("json") or media.startswith("application/") and body[:1] in (b"{", b"["):
        text = decode_text(body, charset)
        try:
            content.body_kind, content.body = "json", json.loads(text)
        except ValueError:
            content.body_kind, content.body = "text", text
    elif media == "application/x-www-form-urlencoded":
        text = decode_text(body, charset)
        content.body_kind, content.body = "form", parse_qsl(text, keep_blank_values=True)
    elif media.startswith("text/") or media in ("", "application/xml", "application/javascript") or _is_text(body):
        content.body_kind, content.body = "text", decode_text(body, charset)
    else:
        content.body_kind, content.body = "binary", body
    content.slots.extend(_body_slots(content))
    return content


def _is_text(body: bytes) -> bool:
    try:
        body[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _query_setter(content: RequestContent, i: int, name: str) -> Callable[[str], None]:
    def set_value(text: str) -> None:
        content.query[i] = (name, text.split("=", 1)[1] if "=" in text else "")
    return set_value


def _header_setter(content: RequestContent, i: int, name: str) -> Callable[[str], None]:
    def set_value(text: str) -> None:
        content.headers[i] = (name, text.split(": ", 1)[1] if ": " in text else "")
    return set_value


def _body_slots(content: RequestContent) -> list[Slot]:
    if content.body_kind == "text":
        def set_text(text: str) -> None:
            content.body = text
        return [Slot("body", content.body, replace=set_text)]
    if content.body_kind == "form":
        slots = []
        for i, (name, value) in enumerate(content.body):
            def set_pair(text: str, i: int = i, name: str = name) -> None:
                content.body[i] = (name, text.split("=", 1)[1] if "=" in text else "")
            slots.append(Slot(f"body:{name}", f"{name}={value}", replace=set_pair))
        return slots
    if content.body_kind == "json":
        return list(_json_slots(content.body, "$", None))
    # Binary: scan what looks like text inside it, but never rewrite it.
    return [Slot("body", content.body.decode("latin-1"))]


def _json_slots(node: Any, path: str, setter: Callable[[Any], None] | None):
    if isinstance(node, dict):
        for key in list(node):
            yield Slot(f"body:{path}.{key}(key)", str(key))
            def set_value(v: Any, key: Any = key) -> None:
                node[key] = v
            yield from _json_slots(node[key], f"{path}.{key}", set_value)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            def set_item(v: Any, i: int = i) -> None:
                node[i] = v
            yield from _json_slots(item, f"{path}[{i}]", set_item)
    elif isinstance(node, str):
        yield Slot(f"body:{path}", node, replace=setter)
    elif node is not None and not isinstance(node, bool):
        yield Slot(f"body:{path}", str(node))  # numbers: a card or SSN sent as a JSON number


_BOUNDARY = re.compile(r"boundary=\"?([^\";]+)\"?", re.IGNORECASE)


def _multipart_slots(body: bytes, content_type: str) -> list[Slot]:
    """Every part: its headers (filename included) and its body, base64 parts decoded.

    Our own parser, because mitmproxy's drops line breaks and skips some parts.
    """
    match = _BOUNDARY.search(content_type)
    if not match:
        raise Uninspectable("malformed_multipart", "multipart body without a boundary")
    delimiter = b"--" + match.group(1).encode("latin-1")
    slots = []
    for i, part in enumerate(body.split(delimiter)[1:]):
        if part.startswith(b"--"):
            break
        head, _, payload = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        payload = payload.removesuffix(b"\r\n")
        head_text = head.decode("utf-8", "replace")
        slots.append(Slot(f"body:part[{i}]:headers", head_text))
        if _BASE64_PART.search(head_text):
            try:
                payload = base64.b64decode(payload, validate=False)
            except (binascii.Error, ValueError):
                raise Uninspectable("malformed_multipart", f"part {i} is not valid base64") from None
            slots.append(Slot(f"body:part[{i}]", payload.decode("utf-8", "replace"), layers=("base64",)))
        else:
            slots.append(Slot(f"body:part[{i}]", payload.decode("utf-8", "replace")))
    return slots


# --- encoded layers ---------------------------------------------------------------------

# Candidate finders. Each is linear in the text (a run is looked at from its start only), which
# is why the stdlib `re` (several times faster than `regex` here) needs no timeout. Runs are
# found by masking the bytes (C speed; a hyperscan pass was slower over ordinary text). Base64
# of text mixes upper and lower case: a run of one case (hex digests, UUIDs, plain words) is no
# base64 candidate. Contiguous hex is a run of its own; _HEX_SEPARATED finds "aa:bb:cc..." and
# "aa bb cc ...", after a hyperscan pass says it may occur.
_B64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"
_B64_MASK = bytes(ord("a") if c in _B64_CHARS else ord(" ") for c in range(256))
_B64_MIN_RUN = 12
_HEX_MASK = bytes(ord("a") if c in b"0123456789abcdefABCDEF" else ord(" ") for c in range(256))
_HEX_MIN_RUN = 32
_HEX_SEPARATED = re.compile(r"(?<![0-9a-fA-F:])[0-9a-fA-F]{2}(?:[:\s][0-9a-fA-F]{2}){15,}")
_HEX_TRIGGER = build_prefilter((("hex", _HEX_SEPARATED.pattern, False),))  # for other than ASCII text
_MASKED_HEX_TRIGGER = build_trigger(rb"aa(?: aa){15}")  # _HEX_SEPARATED in _B64_MASK'd ASCII text
_PERCENT = re.compile(r"%[0-9a-fA-F]{2}")
_ENTITY = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);")


def peel_layers(slot: Slot, depth: int = 0) -> list[Slot]:
    """Decoded views of encoded text inside a slot (never rewritable: a hit there blocks)."""
    if depth >= MAX_LAYER_DEPTH:
        return []
    return _peel(slot, depth)


def _peel(slot: Slot, depth: int) -> list[Slot]:
    found: list[Slot] = []
    text = slot.text
    if "%" in text and _PERCENT.search(text):
        found.append(Slot(slot.where, percent_unquote(text), slot.layers + ("percent",)))
    if "&" in text and ";" in text and has_entity(text):
        found.append(Slot(slot.where, html.unescape(text), slot.layers + ("html",)))
    b64_texts, hex_texts, hex_possible = encoded_layers(text)
    if b64_texts:
        found.extend(Slot(slot.where, decoded, slot.layers + ("base64",)) for decoded in b64_texts)
    if hex_possible:
        separated = (_hex_text(re.sub(r"[:\s]", "", m.group())) for m in _HEX_SEPARATED.finditer(text))
        hex_texts = hex_texts + [decoded for decoded in separated if decoded is not None]
    if hex_texts:
        found.extend(Slot(slot.where, decoded, slot.layers + ("hex",)) for decoded in hex_texts)
    if not found or depth + 1 >= MAX_LAYER_DEPTH:
        return found
    return found + [d for f in found for d in _peel(f, depth + 1)]


def has_entity(text: str) -> bool:
    """Whether an HTML entity (_ENTITY) occurs: natively in ASCII text."""
    if _native_has_entity is None or not text.isascii():
        return _ENTITY.search(text) is not None
    return _native_has_entity(text.encode("ascii"))


def encoded_layers(text: str) -> tuple[list[str], list[str], bool]:
    """(the texts its base64 candidates decode to, the texts its hex runs decode to, whether
    separated hex may occur): in one native pass where tollgate/dlp/_native.c is built, else
    in Python, with the same result (a test checks it)."""
    if _native_layers is None:
        return _encoded_layers_in_python(text)
    b64_texts, hex_texts, masked_hex = _native_layers(text.encode("utf-8", "surrogatepass"))
    return b64_texts, hex_texts, masked_hex if text.isascii() else _separated_hex_possible(text)


def _encoded_layers_in_python(text: str) -> tuple[list[str], list[str], bool]:
    b64_runs, hex_runs, hex_possible = _layer_candidates(text)
    b64_texts = [decoded for decoded in map(_b64, b64_runs) if decoded]
    hex_texts = [decoded for decoded in (_hex_text(run[:len(run) - len(run) % 2]) for run in hex_runs)
                 if decoded is not None]
    return b64_texts, hex_texts, hex_possible


def _hex_text(run: str) -> str | None:
    """The text a run of hex digits (whole bytes) decodes to, when it is wholly printable."""
    try:
        decoded = bytes.fromhex(run).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded if decoded.isprintable() else None


def _layer_candidates(text: str) -> tuple[list[str], list[str], bool]:
    """(the base64 candidates: runs of base64 characters at least _B64_MIN_RUN long that mix
    upper and lower case, the runs of hex digits at least _HEX_MIN_RUN long, whether separated
    hex may occur). Hex digits are base64 characters, so hex runs are looked for inside the
    long base64 runs."""
    raw = text.encode("utf-8", "surrogatepass")  # non-ASCII becomes bytes >= 0x80: separators
    masked = raw.translate(_B64_MASK)
    runs = _runs(raw, masked, _B64_MIN_RUN)
    long_runs = [run for run in runs if len(run) >= _HEX_MIN_RUN]
    if long_runs:
        joined = " ".join(long_runs).encode("ascii")
        hex_runs = _runs(joined, joined.translate(_HEX_MASK), _HEX_MIN_RUN)
    else:
        hex_runs = []
    # Hex digits are base64 characters and the separators (":" and white space) are not, so
    # in the masked ASCII text separated hex reads "aa aa aa ...": a simpler pattern to find.
    hex_possible = _MASKED_HEX_TRIGGER(masked) if text.isascii() else _separated_hex_possible(text)
    return [run for run in runs if run.lower() != run != run.upper()], hex_runs, hex_possible


def _runs(raw: bytes, masked: bytes, min_run: int) -> list[str]:
    """Every maximal run of ``raw`` where ``masked`` (``raw`` translated by a mask) holds "a",
    at least ``min_run`` long. Masking to bytes and searching with bytes.find is ten times
    faster than a regex walk over ordinary text, where long runs are rare."""
    needle = b"a" * min_run
    runs = []
    start = masked.find(needle)
    while start != -1:  # found from the left, so a run's first character: the one before is a separator
        end = masked.find(b" ", start + min_run)
        end = len(masked) if end == -1 else end
        runs.append(raw[start:end].decode("ascii"))
        start = masked.find(needle, end)
    return runs


def _separated_hex_possible(text: str) -> bool:
    """One hyperscan pass (where available) before the slower regex walk."""
    hits = _HEX_TRIGGER.candidates(text)
    return hits is None or "hex" in hits


_URLSAFE = str.maketrans("-_", "+/")


def _b64(token: str) -> str | None:
    """The text a base64 (or base64url) token decodes to, when it is text. Called for every
    candidate run, so binascii directly (base64.b64decode costs twice as much per call)."""
    if "-" in token or "_" in token:
        token = token.translate(_URLSAFE)
    try:
        raw = binascii.a2b_base64(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.isprintable():
        return text or None
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return text if printable / len(text) > 0.95 else None
