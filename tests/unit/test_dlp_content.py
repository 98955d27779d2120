"""Transport decoding with caps, structure parsing, layers."""

from __future__ import annotations

import gzip
import json
import zlib

import brotli
import pytest
import zstandard

from tollgate.dlp.content import Uninspectable, decode_transport, parse_request, peel_layers

LIMIT = 10 * 1024 * 1024
TEXT = b'{"hello": "world"}' * 50


@pytest.mark.parametrize("encoding, encode", [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress),
    ("br", brotli.compress), ("zstd", lambda d: zstandard.ZstdCompressor().compress(d)),
    ("gzip, br", lambda d: brotli.compress(gzip.compress(d))), ("identity", lambda d: d), ("", lambda d: d),
])
def test_transport_decoding(encoding, encode):
    assert decode_transport(encode(TEXT), encoding, LIMIT) == TEXT


def test_raw_deflate():
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode_transport(c.compress(TEXT) + c.flush(), "deflate", LIMIT) == TEXT


@pytest.mark.parametrize("encoding, encode", [
    ("gzip", gzip.compress), ("br", brotli.compress), ("zstd", lambda d: zstandard.ZstdCompressor().compress(d)),
])
def test_decompression_bombs_are_uninspectable(encoding, encode):
    bomb = encode(b"\0" * (50 * 1024 * 1024))
    with pytest.raises(Uninspectable) as err:
        decode_transport(bomb, encoding, LIMIT)
    assert err.value.reason == "decompression_bomb"


@pytest.mark.parametrize("body, encoding, reason", [
    (b"not gzip at all", "gzip", "corrupt_encoding"),
    (gzip.compress(TEXT)[:-10], "gzip", "corrupt_encoding"),
    (b"abc", "compress", "unknown_encoding"),
    (b"x" * 100, "bz2", "unknown_encoding"),
])
def test_undecodable_is_uninspectable(body, encoding, reason):
    with pytest.raises(Uninspectable) as err:
        decode_transport(body, encoding, LIMIT)
    assert err.value.reason == reason


def test_declared_charset_and_undecodable_text():
    content = parse_request("/", [], "naïve café".encode("latin-1"), "text/plain; charset=ISO-8859-1")
    assert content.body == "naïve café"
    with pytest.raises(Uninspectable):
        parse_request("/", [], b"\xff\xfe\xfa", "text/plain; charset=utf-8")


def test_json_keys_values_and_numbers_are_slots():
    content = parse_request("/p?q=1", [("Authorization", "Bearer x")],
                            json.dumps({"secret_key": ["a", 4111111111111111]}).encode(), "application/json")
    wheres = {s.where for s in content.slots}
    assert {"path", "query:q", "header:authorization", "body:$.secret_key(key)", "body:$.secret_key[0]",
            "body:$.secret_key[1]"} <= wheres


def test_multipart_keeps_line_breaks_filenames_and_every_part():
    body = (b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"secret-AKIA.txt\"\r\n\r\nline1\r\nline2"
            b"\r\n--b\r\nX-Custom: hello\r\n\r\nsecond\r\n--b--\r\n")
    content = parse_request("/", [], body, "multipart/form-data; boundary=b")
    texts = [s.text for s in content.slots if s.where.startswith("body")]
    assert any("filename=\"secret-AKIA.txt\"" in t for t in texts)
    assert "line1\r\nline2" in texts
    assert "second" in texts and any("X-Custom" in t for t in texts)


def test_layers_are_bounded_and_never_rewritable():
    from tollgate.dlp.content import Slot
    import base64
    nested = base64.b64encode(base64.b64encode(base64.b64encode(base64.b64encode(b"deep secret value")))).decode()
    layers = peel_layers(Slot("body", nested))
    assert all(layer.replace is None for layer in layers)
    assert max(len(layer.layers) for layer in layers) <= 3


def test_form_and_percent_unquote_are_urllibs():
    import random
    from urllib.parse import unquote, unquote_plus

    from tollgate.dlp.content import form_unquote, percent_unquote

    rng = random.Random(8)
    pieces = ["a", "=", "&", "+", "%", "%41", "%3D", "%3d", "%25", "%2B", "%00", "%C3%A9", "%E2%82", "%zz", "%4", "=3D",
              "%%41", "\r\n", "\n", "_", "é", "\x00", " ", "=\n", "%\r\n"]
    # What takes the native path: ASCII.
    escapes_only = [p for p in pieces if p.isascii()]
    for choices in (pieces, escapes_only):
        for _ in range(10000):
            text = "".join(rng.choice(choices) for _ in range(rng.randint(0, 12)))
            assert form_unquote(text) == unquote_plus(text), repr(text)
            assert percent_unquote(text) == unquote(text), repr(text)
    assert form_unquote("email=ann%40example.com&note=a+b%2Bc") == "email=ann@example.com&note=a b+c"
