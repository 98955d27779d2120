"""The native encoded-layer finder (tollgate/dlp/_native.c) against its Python reference."""

from __future__ import annotations

import base64
import random
import sys

import pytest

from tollgate.dlp import content


def test_the_native_finder_is_built():
    # The install builds it (setup.py) wherever gcc and the Python headers are; without it
    # the same layers are found in Python, several times slower. A build that silently
    # failed would only show as a slow proxy: here it fails.
    if not sys.platform.startswith("linux"):
        pytest.skip("built and checked on Linux")
    assert content._native_layers is not None, \
        "tollgate/dlp/_native.c was not built: install gcc and the Python headers, then reinstall (pip install -e .)"


PIECES = ["hello world ", "4111 1111 1111 1111", "Müller ", "日本語", "\t", "\n", "\r", "\x00", "\x07", "\u200b",
          "\x7f", "ab", "é", "\ud7ff", "😀", "user:secret@example.com"]


def _piece(rng: random.Random) -> str:
    """A piece of a text: encodings of text (accepted or not), binary, separators, words."""
    raw = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12))).encode("utf-8")
    kind = rng.random()
    if kind < 0.25:
        return base64.b64encode(raw).decode().rstrip("=" if rng.random() < 0.5 else "")
    if kind < 0.35:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")
    if kind < 0.45:
        return raw.hex() if rng.random() < 0.5 else raw.hex().upper()
    if kind < 0.5:
        return base64.b64encode(rng.randbytes(rng.randint(5, 40))).decode()
    if kind < 0.55:
        return rng.randbytes(rng.randint(10, 40)).hex()
    if kind < 0.62:
        return rng.choice([":", " ", "\n", "\u2003", "-"]).join(f"{b:02x}" for b in raw)
    if kind < 0.7:
        return rng.choice([" ", "\n", "=", ".", "é", "\ud800", "日", '"', "::"])
    if kind < 0.8:
        return "".join(rng.choice("Ab9+/_-") for _ in range(rng.randint(1, 20)))
    return raw.decode()


@pytest.mark.skipif(content._native_layers is None, reason="the native finder is not built (see the test above)")
def test_native_and_python_find_the_same_layers():
    rng = random.Random(11)
    accepted = {"base64": 0, "base64 not ASCII": 0, "base64 not wholly printable": 0, "hex": 0,
                "hex not ASCII": 0, "separated hex": 0}
    for _ in range(30000):
        text = "".join(_piece(rng) for _ in range(rng.randint(0, 8)))
        native = content.encoded_layers(text)
        assert native == content._encoded_layers_in_python(text), repr(text)
        b64, hex_texts, separated = native
        accepted["base64"] += len(b64)
        accepted["base64 not ASCII"] += sum(not t.isascii() for t in b64)
        accepted["base64 not wholly printable"] += sum(not t.isprintable() for t in b64)
        accepted["hex"] += len(hex_texts)
        accepted["hex not ASCII"] += sum(not t.isascii() for t in hex_texts)
        accepted["separated hex"] += separated
    # Every way a layer is accepted was exercised, not only rejections.
    assert min(accepted.values()) > 100, accepted


@pytest.mark.skipif(content._native_layers is None, reason="the native finder is not built (see the test above)")
@pytest.mark.parametrize("text, b64, hex_texts", [
    ("", [], []),
    ("dXNlcjpodW50ZXIy", ["user:hunter2"], []),  # base64 of text: a layer
    ("dXNlcjpodW50ZXIy" + "A", [], []),  # one longer than a multiple of four: not base64
    ("AAECAwQFBgcICQoLDA0ODxAREhMU", [], []),  # binary: no layer
    ("Content-Disposition", [], []),  # mixed case, decodes to bytes that are not text
    ("ZGF0YQ==" * 1, [], []),  # 8 characters: shorter than a candidate
    ("6d7953656372657450617373776f7264", [], ["mySecretPassword"]),
    ("6d7953656372657450617373776f72640a", [], []),  # a newline: not wholly printable
    ("SGVsbG8sIHdvcmxkIQ0KU2Vjb25kIGxpbmU", ["Hello, world!\r\nSecond line"], []),  # \r\n: 95% printable
])
def test_native_layers_examples(text, b64, hex_texts):
    assert content.encoded_layers(text)[:2] == (b64, hex_texts)
    assert content._encoded_layers_in_python(text)[:2] == (b64, hex_texts)


@pytest.mark.skipif(content._native_layers is None, reason="the native finder is not built (see the test above)")
def test_native_layers_take_only_bytes():
    with pytest.raises(TypeError):
        content._native_layers("text")
    assert content._native_layers(bytearray(b"dXNlcjpodW50ZXIy"))[0] == ["user:hunter2"]


@pytest.mark.skipif(content._native_layers is None, reason="the native module is not built (see the first test)")
@pytest.mark.parametrize("detector_id", ["payment_card", "us_ssn", "iban", "uk_nino"])
def test_a_number_shape_fires_wherever_its_detector_matches(detector_id):
    """number_shapes stands in for the detector's pattern in the prefilter (ASCII text): it
    may fire where the regex finds nothing, never the other way round."""
    from tollgate.dlp._native import number_shapes
    from tollgate.dlp.detectors import BUILTIN
    from tollgate.dlp.prefilter import SHAPE_BITS

    detector = next(d for d in BUILTIN if d.id == detector_id)
    bit = SHAPE_BITS[detector.shape]
    rng = random.Random(detector_id)
    # Pieces near the shapes: digits, capitals, the separators and boundaries they care about.
    pieces = ["4111", "1111", "0", "12", "123", "-", " ", "  ", "GB", "AB", "QQ", "D", "x", "_", "/", "+", '"', ":",
              "\n", "é", "GB82 WEST 1234 5698 7654 32", "123-45-6789", "4111 1111 1111 1111", "AB123456C"]
    matched = 0
    for _ in range(20000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 14)))
        data = text.encode("ascii", "ignore")
        ascii_text = data.decode()
        if detector.pattern.search(ascii_text):
            matched += 1
            assert number_shapes(data) & bit, repr(ascii_text)
    assert matched > 500, matched  # the generator makes real matches


@pytest.mark.skipif(content._native_layers is None, reason="the native module is not built (see the first test)")
def test_number_shapes_examples():
    from tollgate.dlp._native import number_shapes
    from tollgate.dlp.prefilter import SHAPE_BITS as S

    assert number_shapes(b"") == 0
    assert number_shapes(b'{"card": "4111 1111 1111 1111"}') == S["card"]
    assert number_shapes(b"4111111111111111") == S["card"]  # at the very start and end
    assert number_shapes(b'{"tracking": "1Z9511827059713117"}') == 0  # digits inside a longer token
    assert number_shapes(b'{"id": "41111111111111111111"}') == 0  # 20 digits: longer than any card
    assert number_shapes(b"ssn=123-45-6789;") == S["ssn"]
    assert number_shapes(b"ssn=123-45-67890") == 0
    assert number_shapes(b"iban: GB82 WEST 1234 5698 7654 32") & S["iban"]
    assert number_shapes(b"nino AB 12 34 56 C.") & S["nino"]
    assert number_shapes(b"xAB123456C") == 0  # not at a word boundary
    # Every 16-byte block position, for the vector scan.
    for pad in range(40):
        assert number_shapes(b"a" * pad + b" 4111-1111-1111-1111 " + b"b" * pad) == S["card"], pad


@pytest.mark.skipif(content._native_layers is None, reason="the native module is not built (see the first test)")
def test_runs_read_sixteen_bytes_at_a_time_give_the_same_layers():
    # Long runs are read in blocks of 16: a hex run or a base64 run of text starting and
    # ending at every offset of a block, inside longer runs of base64 characters.
    hex_text = b"my secret is card 4111 1111 1111 1111".hex()
    b64_text = base64.b64encode(b"user: ann@example.com, key: sk_live_abcdefghijklmnop").decode()
    for before in range(0, 40):
        for after in (0, 1, 7, 16, 33):
            for middle in (hex_text, hex_text.upper(), b64_text, hex_text[:33], hex_text[:31]):
                for left, right in (("Zq" * 40, "Zq" * 40), ("", ""), ("x", "y")):
                    text = " " + left[:before] + middle + right[:after] + " "
                    assert content.encoded_layers(text) == content._encoded_layers_in_python(text), (before, after, middle)


@pytest.mark.skipif(content._native_layers is None, reason="the native module is not built (see the first test)")
def test_has_entity_is_the_entity_regex():
    rng = random.Random(12)
    pieces = ["&", ";", "#", "x", "X", "amp", "lt", "12", "1F", "ab", "g", "=", " ", "&#", "&#x", "&amp;", "a&b=c"]
    for _ in range(30000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        assert content.has_entity(text) == bool(content._ENTITY.search(text)), repr(text)
    assert content.has_entity("a=1&b=2;c") is False and content.has_entity("x &#x41; y") is True


@pytest.mark.skipif(content._native_layers is None, reason="the native module is not built (see the first test)")
def test_without_the_native_module_the_inspection_finds_the_same():
    """README: where _native.c is not built, the same inspection runs in Python and
    hyperscan, with the same findings. Both ways over known secrets in several encodings and
    over a generated corpus."""
    import base64 as b64
    import urllib.parse

    from tollgate.dlp import prefilter
    from tollgate.dlp.detectors import BUILTIN
    from tollgate.dlp.engine import Engine
    from tollgate.dlp.inspect import is_clean
    from tests.support.corpus import generate
    from tests.support.secrets import POSITIVE

    texts = []
    for _, value in POSITIVE.values():
        texts += [f'{{"note": "x {value} y"}}', f"a={urllib.parse.quote_plus(value)}&b=2",
                  f"blob {b64.b64encode(value.encode()).decode()} end", f"hex {value.encode().hex()} end"]
    texts += [body.decode("utf-8", "replace") for _, body in generate(300, 21)]

    def results(engine):
        return [([(m.detector, m.start, m.end) for m in engine.scan(t)], is_clean(engine, t),
                 [(s.layers, s.text) for s in content.peel_layers(content.Slot("all", t))]) for t in texts]

    native = results(Engine(BUILTIN))
    saved = (prefilter.number_shapes, content._native_layers, content._native_percent, content._native_has_entity)
    prefilter.build.cache_clear()
    try:
        prefilter.number_shapes = content._native_layers = content._native_percent = content._native_has_entity = None
        fallback_engine = Engine(BUILTIN)
        assert not getattr(fallback_engine._multi, "_shapes", {})  # the number detectors went to hyperscan
        fallback = results(fallback_engine)
    finally:
        prefilter.number_shapes, content._native_layers, content._native_percent, content._native_has_entity = saved
        prefilter.build.cache_clear()  # no later engine may get the fallback's prefilter
    # Indexes, not the results: the layers hold the test secrets decoded.
    differ = [i for i, (one, other) in enumerate(zip(fallback, native)) if one != other]
    assert not differ, f"texts {differ[:10]} are inspected differently without the native module"
    assert sum(not clean for _, clean, _ in native) >= len(POSITIVE)  # the secrets were found


@pytest.mark.skipif(content._native_layers is None, reason="the native module is not built (see the first test)")
def test_runs_that_fill_the_whole_window_give_the_same_layers():
    # A run that starts at a 64-byte boundary and fills the 128-byte window it is read
    # through (image data) has no end in the window: it is walked, not measured.
    image = base64.b64encode(bytes(range(256)) * 2).decode()
    text_run = base64.b64encode(b"card 4111 1111 1111 1111, " * 8).decode()
    for start in (0, 1, 63, 64, 65, 127, 128):
        for run in (image, text_run, text_run[:128], text_run[:127]):
            text = ("x" * (start - 1) + " " if start else "") + run + " end"
            assert content.encoded_layers(text) == content._encoded_layers_in_python(text), (start, len(run))
