"""The multi-pattern prefilter: it may report a detector that does not match, never miss one
that does. Checked by comparing the engine with and without it on hard inputs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.support.corpus import generate
from tests.support.secrets import NEGATIVE, POSITIVE
from tollgate.dlp import prefilter
from tollgate.dlp.detectors import BUILTIN
from tollgate.dlp.engine import Engine

WITH, WITHOUT = Engine(BUILTIN), Engine(BUILTIN, prefilter=False)
# Around a value: Unicode word characters, symbols, invisible characters, wide forms.
SURROUNDINGS = ["", " ", "é", "→", "_", "-", "\u200b", "Ａ", "日本", "\u00a0", "K", "\u212a", "ß", "١٢٣"]


def findings(engine: Engine, text: str) -> list[tuple]:
    return sorted((m.detector, m.start, m.end) for m in engine.scan(text))


def assert_same(text: str, label: object) -> None:
    """The same findings with and without the prefilter. Only labels and (detector, start,
    end) reach a failure message: the texts hold test secrets."""
    got, expected = findings(WITH, text), findings(WITHOUT, text)
    assert got == expected, label


@pytest.mark.skipif(not WITH._multi.active, reason="hyperscan is not available on this platform")
def test_hyperscan_takes_every_builtin_but_the_caseless_one():
    assert WITH._multi.always == {"generic_secret"}


@pytest.mark.parametrize("label", sorted(POSITIVE))
def test_never_misses_a_positive_whatever_surrounds_it(label):
    _, value = POSITIVE[label]
    rng = random.Random(label)
    for before in SURROUNDINGS:
        for after in rng.sample(SURROUNDINGS, 5):
            text = f"x{before}{value}{after}y"
            assert_same(text, (label, before, after))


@pytest.mark.parametrize("label", sorted(NEGATIVE))
def test_same_answer_on_near_misses(label):
    _, value = NEGATIVE[label]
    assert_same(value, label)


def test_same_answer_on_the_benign_corpus_with_unicode_noise():
    rng = random.Random(3)
    for _, body in generate(300, 11):
        text = body.decode("utf-8", "replace")
        cut = rng.randrange(len(text) + 1)
        text = text[:cut] + rng.choice(SURROUNDINGS) + text[cut:]
        assert_same(text, "benign corpus")


def test_a_clean_text_needs_no_detector():
    assert WITH._multi.candidates('{"id": 17, "name": "widget", "tags": ["a", "b"]}') in (set(), None)


def test_a_detector_without_its_keywords_is_no_candidate():
    # generic_secret is beyond hyperscan (caseless): its keywords alone decide. NHS numbers
    # need "nhs": a ten-digit number without it is not a candidate, with it one is.
    gate = WITH._multi
    if not gate.active:
        pytest.skip("hyperscan not available")
    assert "generic_secret" not in gate.candidates('{"name": "widget", "value": "Zx81Qq0PlmN4Rt7Yw2"}')
    assert "generic_secret" in gate.candidates('{"name": "widget", "api_token": "Zx81Qq0PlmN4Rt7Yw2"}')
    assert "uk_nhs_number" not in gate.candidates('{"ref": "943 476 5919"}')
    assert "uk_nhs_number" in gate.candidates('{"nhs": "943 476 5919"}')


@pytest.mark.parametrize("source, loose", [
    (r"\bAKIA[A-Z2-7]{16}\b", "AKIA[A-Z2-7]{16}"),
    # An opening lookbehind and a closing lookahead of one class become a consumed character.
    (r"(?<![\w-])\d{3}(?![\d-])", r"(?:^|[^\w-])[\d\x{80}-\x{10FFFF}]{3}(?:$|[^\d-])"),
    (r"x(?<![\w-])\d(?=y)", r"x[\d\x{80}-\x{10FFFF}]"),  # elsewhere, or positive: dropped
    (r"(?<![^x])a(?!bc)", "a"),  # not one plain class: dropped
    (r"[\w.-]{0,40}x", r"[\w\x{80}-\x{10FFFF}.-]{0,}x"),
    (r"[^\s:/@]{1,64}", r"[^\s:/@]{1,}"),  # widening inside a negated class would narrow it
    (r"[\s\S]{64,16384}?", r"[\s\x1c-\x1f\x{80}-\x{10FFFF}\S]{32,}?"),
    (r"a\sb", r"a[\s\x1c-\x1f\x{80}-\x{10FFFF}]b"),  # Python's \s takes \x1c-\x1f, PCRE's does not
    (r"\w{82}", r"[\w\x{80}-\x{10FFFF}]{32,}"),
    (r"a{2,}", "a{2,}"),
    (r"(?:x(?=y))+", "(?:x)+"),
])
def test_loosen(source, loose):
    assert prefilter.loosen(source) == loose


@pytest.mark.parametrize("source, loose", [
    (r"(?<![\w-])\d{3}(?![\d-])", r"(?:^|[^\w-])\d{3}(?:$|[^\d-])"),
    (r"[\w.-]{0,40}x", r"[\w.-]{0,}x"),
    (r"[^\s:/@]{1,64}", r"[^\t\n\x0b\x0c\r\x1c-\x1f :/@]{1,}"),
    (r"a\sb", r"a[\t\n\x0b\x0c\r\x1c-\x1f ]b"),
])
def test_loosen_for_ascii_text_keeps_ascii_classes(source, loose):
    # Python's \s takes \x1c-\x1f as whitespace, PCRE's does not: spelled out, both agree.
    assert prefilter.loosen(source, ascii_text=True) == loose


ASCII_SEPARATORS = [" ", "\t", "\n", "\x0b", "\x0c", "\r", "\x1c", "\x1d", "\x1e", "\x1f", "=", ":", '"', "/"]


@pytest.mark.parametrize("label", sorted(label for label, (_, value) in POSITIVE.items() if value.isascii()))
def test_never_misses_a_positive_in_ascii_text(label):
    # ASCII text goes through the ASCII database: \d, \w and \s there must mean what they mean in `regex`.
    _, value = POSITIVE[label]
    for sep in ASCII_SEPARATORS:
        for text in (f"x{sep}{value}{sep}y", value.replace(" ", sep), f"{sep}{value}"):
            assert text.isascii()
            assert_same(text, (label, repr(sep)))


@pytest.mark.parametrize("source", [r"\p{L}+", "[a-z", r"(?<!x"])
def test_unknown_syntax_is_refused_and_the_detector_always_runs(source):
    with pytest.raises(ValueError):
        prefilter.loosen(source)
    p = prefilter.Prefilter([("custom", source, False), ("digits", r"\d{4}", False)])
    if p.active:
        assert p.candidates("nothing here") == {"custom"}


@pytest.mark.parametrize("text", [
    "github_pat_" + "é" * 82,
    "glpat-" + "日" * 20,
    "sk-ant-api03-" + "ü" * 93 + "AA",
    "AIza" + "ß" * 35,
    "SG." + "ñ" * 22 + "." + "ø" * 43,
])
def test_never_misses_unicode_word_characters_inside_a_match(text):
    # `regex` \w is Unicode: these match the detectors' patterns, so the prefilter must let them through
    assert_same(text, "unicode word characters")


@pytest.mark.parametrize("text", ["token " + "ß" * 200, "api_key=" + "ß" * 200, "ß" * 500, "password: " + "ﬀ" * 100])
def test_caseless_detector_does_not_backtrack_on_case_folding(text):
    # With full case folding (ß = "ss") generic_secret took seconds here and timed out.
    assert WITHOUT.scan(text) == [] and WITH.scan(text) == []


KEYWORDS = tuple(sorted({k for d in BUILTIN for k in d.keywords}))


@pytest.mark.skipif(not WITH._multi.active, reason="hyperscan is not available on this platform")
def test_keywords_found_in_the_prefilter_pass_agree_with_lowercase_search_on_ascii_text():
    from tollgate.dlp.engine import _DIGIT_RUN, _DIGIT_RUN_ASCII, DIGITS, _Keywords

    gate = prefilter.Prefilter([("digits", r"\d{4}", False)], KEYWORDS, DIGITS, _DIGIT_RUN_ASCII)
    rng = random.Random(7)
    pieces = ["KeY", "SeCrEt", "toKEN", "PASSWD", "pwd", "Credential", "12 34-56", "1234 5", "123456", "k e y",
              "monkey", "tok en", " ", "x", "-", "9", "S", "k", "sK", "@", "+"]  # short keywords: "sk", "@"
    for _ in range(600):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        expected = {k for k in KEYWORDS if (_DIGIT_RUN.search(text) is not None if k == DIGITS else k in text.lower())}
        assert gate.scan(text).keywords == expected, text
        assert _Keywords(text, None).any_of(KEYWORDS) == bool(expected)
    # Non-ASCII text: str.lower() is not ASCII case folding (U+212A KELVIN SIGN lowers to "k"),
    # so the prefilter does not say and the engine searches in Python.
    assert gate.scan("\u212aey").keywords is None
    assert _Keywords("\u212aey", None).any_of(("key",))
    # A keyword that is not ASCII: keywords are never taken from the prefilter.
    assert prefilter.Prefilter([("digits", r"\d{4}", False)], ("clé",)).scan("clé 1234").keywords is None


def test_base64_runs_are_the_maximal_runs_of_twelve_or_more():
    import re

    from tollgate.dlp.content import _B64_MASK, _layer_candidates, _runs

    reference = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{12,}")
    rng = random.Random(3)
    alphabet = ["a", "Z", "0", "+", "/", "_", "-", "=", " ", ".", "é", "\u212a", "\ud800", "\n", "日"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) if rng.random() < 0.3 else "Ab9" for _ in range(rng.randint(0, 40)))
        expected = [m.group() for m in reference.finditer(text)]
        raw = text.encode("utf-8", "surrogatepass")
        assert _runs(raw, raw.translate(_B64_MASK), 12) == expected, repr(text)
        mixed_case = [run for run in expected if run.lower() != run != run.upper()]
        assert _layer_candidates(text)[0] == mixed_case, repr(text)  # and only the mixed-case ones are candidates


def test_hex_runs_are_the_maximal_runs_of_thirty_two_or_more():
    import re

    from tollgate.dlp.content import _layer_candidates

    reference = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{32,}")
    rng = random.Random(4)
    alphabet = ["a", "F", "0", "9", "g", "Z", "-", " ", "é", "\n"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) if rng.random() < 0.05 else "c0ffee" for _ in range(rng.randint(0, 30)))
        assert _layer_candidates(text)[1] == [m.group() for m in reference.finditer(text)], repr(text)


@pytest.mark.parametrize("separators", [
    [":", " ", "\t", "\x1c", "\n", "\u2003"] * 4 + ["::", "-"],
    [":", " ", "\t", "\x0b", "\x0c", "\r", "\x1c", "\x1f", "\n"] * 4 + ["::", "-", "/"],  # ASCII text
])
def test_the_separated_hex_trigger_never_misses(separators):
    from tollgate.dlp.content import _HEX_SEPARATED, _layer_candidates

    rng = random.Random(5)
    pairs = ["ab", "0f", "C3", "12"] * 5 + ["g1", "abc", "xab"]  # mostly hex, sometimes broken
    found = 0
    for _ in range(3000):
        text = "".join(rng.choice(pairs) + rng.choice(separators) for _ in range(rng.randint(12, 24)))
        if _HEX_SEPARATED.search(text):
            found += 1
            assert _layer_candidates(text)[2], repr(text)
    assert found > 100  # the generator makes real candidates


def test_a_glance_never_passes_what_a_full_inspection_would_not():
    """The proxy allows content that is clean at a glance without the full inspection: the
    glance must never pass a body that inspect_request would not allow."""
    from tollgate.dlp.inspect import RequestFacts, inspect_request, request_clean_at_a_glance
    from tollgate.policy.loader import load_policy

    policy = load_policy(Path(__file__).resolve().parents[2] / "policies" / "example.yaml")
    engine = Engine.for_policy(policy.dlp)
    # Labels only in assertion messages: test output never shows a secret.
    bodies = [(f"corpus {i}", ct, body) for i, (ct, body) in enumerate(generate(300, 11))]
    bodies += [(f"{label} in JSON", "application/json", b'{"x": "%s"}' % value.encode())
               for label, (_, value) in POSITIVE.items()]
    bodies += [(f"{label} as text", "text/plain", value.encode()) for label, (_, value) in POSITIVE.items()]
    glanced = 0
    for label, content_type, body in bodies:
        facts = RequestFacts("/v1/x", [("content-type", content_type)], body, "", content_type, "api.example.org", None)
        if request_clean_at_a_glance(engine, policy.dlp, facts):
            glanced += 1
            assert inspect_request(engine, policy.dlp, b"k" * 32, facts).action == "allow", label
    assert glanced > 30  # the glance does pass ordinary clean bodies
    for label, (_, value) in POSITIVE.items():  # and never a known secret
        facts = RequestFacts("/", [], value.encode(), "", "text/plain", "api.example.org", None)
        assert not request_clean_at_a_glance(engine, policy.dlp, facts), label


def test_max_length_is_the_longest_match_of_the_pattern():
    # The engine scans only max_length (+ a margin) before each place a match may end: a
    # number below the pattern's real maximum would miss matches.
    import re

    for d in BUILTIN:
        if d.max_length:
            assert re._parser.parse(d.pattern.pattern.removeprefix("(?-f)")).getwidth()[1] == d.max_length, d.id


@pytest.mark.parametrize("seed", range(6))
def test_scanning_around_match_ends_finds_what_a_whole_scan_finds(seed):
    # Digit-heavy ASCII text: cards, NHS numbers, SSNs and phone numbers next to ids, timestamps,
    # long digit runs and each other; with and without the prefilter (whole-text regex scans).
    rng = random.Random(seed)
    pieces = ["4111 1111 1111 1111", "4111111111111111", "5500-0000-0000-0004", "943 476 5919", "nhs ",
              "4-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-6",  # a 19-digit card at the pattern's longest (37)
              "078-05-1120", "+44 20 7946 0958", "1700000000000", "12345678901234567890123", "GB82WEST12345698765432",
              "AB123456C", " ", "-", "x", "\n", "0", "42", ":", "+"]
    for _ in range(150):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
        assert_same(text, f"seed {seed}")


SECRET_PIECES = ["api_key", "API-KEY", "secret", "Token", "password", "passwd", "pwd", "credential", "auth_key",
                 "access-key", "sha256_token", "token_hash", "=", ": ", '"', "'", " ", "\n", "x" * 30, "-", ".",
                 "hQ7vN2pL9xK4mR8t", "W3yB6cF1jD5gS0aZeUoIiPQr!@#", "a" * 12, "0123456789abcdef", "{", ","]


@pytest.mark.parametrize("seed", range(6))
def test_scanning_near_keywords_finds_what_a_whole_scan_finds(seed):
    # generic_secret runs only near its keywords: keyword-dense ASCII text, secret-like values
    # next to each other, at the pattern's longest.
    rng = random.Random(seed)
    for _ in range(150):
        text = "".join(rng.choice(SECRET_PIECES) for _ in range(rng.randint(1, 60)))
        assert_same(text, f"seed {seed}")


def test_every_generic_secret_match_holds_a_keyword():
    # What running generic_secret only near its keywords rests on.
    detector = next(d for d in BUILTIN if d.id == "generic_secret")
    assert detector.keywords_inside
    rng = random.Random(9)
    matched = 0
    for _ in range(3000):
        text = "".join(rng.choice(SECRET_PIECES) for _ in range(rng.randint(1, 20)))
        for m in detector.pattern.finditer(text):
            matched += 1
            assert any(k in m.group().lower() for k in detector.keywords), f"match at {m.span()}"
    assert matched > 300


def test_too_many_places_to_look_falls_back_to_one_whole_scan():
    text = " ".join(["4111111111111111"] * 400)  # far more match ends than LOCATE_LIMIT
    assert WITH._multi.locate(text, "payment_card") is None or not WITH._multi.active
    assert_same(text, "400 cards")
    assert len(findings(WITH, text)) == 400


@pytest.mark.parametrize("word, value", [("NHS", "9434765919"), ("nhs", "943 476 5919"), ("aws", "Hq7vN2pL9xK4mR8tW3yB6cF1jD5gS0aZeUoIiPQr"),
                                         ("SECRET", "Hq7vN2pL9xK4mR8tW3yB6cF1jD5gS0aZeUoIiPQr")])
def test_context_words_at_every_distance(word, value):
    # The ASCII gate holds the context word within reach of the value: found exactly as far
    # away as the engine looks (64 characters before the value), and not beyond.
    for gap in range(0, 70):
        for filler in ("x", " ", "-", "/"):
            assert_same(f"{word}{filler * gap}{value} end", (word, gap, filler))
            assert_same(f"{filler * gap}{word}{filler * gap}{value}", (word, gap, filler))


@pytest.mark.skipif(not WITH._multi.active, reason="hyperscan is not available on this platform")
@pytest.mark.parametrize("text, detector", [
    ("sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "payment_card"),
    ('{"id": 1700000000123, "n": 123456789012}', "payment_card"),  # 12-13 digits: no card is that short
    ("tracking 1Z1234567890123456", "payment_card"),
    ("call 943 476 5919", "uk_nhs_number"),  # no context word before it
    ("943 476 5919 is not an NHS number", "uk_nhs_number"),
    ("nhs" + "x" * 62 + "9434765919", "uk_nhs_number"),  # the word is out of reach
    ("id 0123-45-6789x", "us_ssn"),
    ("blob " + "Hq7vN2pL9xK4mR8tW3yB6cF1jD5gS0aZeUoIiPQr", "aws_secret_access_key"),  # no "aws" or "secret"
    ("aws" + "-" * 70 + " Hq7vN2pL9xK4mR8tW3yB6cF1jD5gS0aZeUoIiPQr", "aws_secret_access_key"),  # out of reach
])
def test_near_misses_make_no_candidate(text, detector):
    # What made most clean bodies need a full scan: digits inside tokens, ids, far context words.
    assert detector not in WITH._multi.candidates(text)


@pytest.mark.skipif(not WITH._multi.active, reason="hyperscan is not available on this platform")
def test_most_of_the_benign_corpus_is_clean_at_a_glance():
    from tollgate.dlp.inspect import clean_at_a_glance
    bodies = [body.decode() for _, body in generate(400, 5)]
    clean = sum(clean_at_a_glance(WITH, text) for text in bodies)
    assert clean >= 0.9 * len(bodies), clean


@pytest.mark.skipif(not WITH._multi.active, reason="hyperscan is not available on this platform")
def test_keywords_are_searched_only_for_detectors_the_database_cannot_take():
    # "sk", "@", "ghp_", "://": every built-in detector with one is in the database, whose
    # pattern is the stronger condition, so the keyword is reported without a search.
    gate = WITH._multi
    if not gate.active:
        pytest.skip("hyperscan not available")
    assert gate._searched_short == []
    assert {"sk", "ghp_", "://", "sk_live"} <= gate.scan("nothing here").keywords
    # generic_secret (caseless: beyond the database) and the context words of NHS numbers and
    # AWS secret keys (kept out of the fast pass) are searched.
    assert {"token", "passw", "secret", "nhs", "aws"} <= set(gate._keywords)
    assert not {"token", "nhs", "aws"} & gate.scan("nothing here").keywords
    assert {"token", "nhs"} <= gate.scan("a token and an NHS number").keywords
    # A detector hyperscan cannot take (\p{L}) runs whenever its keyword occurs: searched.
    p = prefilter.Prefilter([("custom", r"\p{L}zq\d", False, (), ("zq",)), ("digits", r"\d{4}", False, (), ("ab",))],
                            ("ab", "zq"))
    assert p.always == {"custom"}
    assert "zq" not in p.scan("nothing here").keywords
    assert "zq" in p.scan("xZq1").keywords and "ab" in p.scan("nothing here").keywords


SLOW = r"(a|aa)+c"  # backtracks exponentially on a run of "a" not followed by "c"


def test_windows_share_one_deadline(monkeypatch):
    # Scanning in windows must not turn one timeout per detector and text into one per
    # window: 40 windows that each take a while run out of the one budget.
    import time

    import regex

    from tollgate.dlp import engine as engine_module

    pattern = regex.compile(SLOW)
    text = ("a" * 24 + "!" + "-" * 20) * 40  # apart: the windows do not merge
    places = [(i * 45, i * 45 + 25) for i in range(40)]
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        list(engine_module._within(pattern, text, places, time.monotonic() + 0.3))
    assert time.monotonic() - started < 2.0  # the 40 windows alone take longer (about 3 s here)


def test_a_pattern_that_runs_too_long_makes_the_text_uninspectable():
    # A custom detector that backtracks: the scan stops at PATTERN_TIMEOUT with
    # ScanIncomplete (the request is then uninspectable and blocked), never a silent pass.
    from tollgate.dlp.detectors import compile_custom
    from tollgate.dlp.engine import ScanIncomplete
    from tollgate.dlp.inspect import RequestFacts, inspect_request
    from tollgate.policy.loader import load_policy
    from tollgate.policy.model import CustomDetector

    slow = compile_custom(CustomDetector("slow_one", SLOW))
    engine = Engine(BUILTIN + (slow,))
    text = "a" * 40 + "! ac"
    with pytest.raises(ScanIncomplete):
        engine.scan(text)
    policy = load_policy(Path(__file__).resolve().parents[2] / "policies" / "example.yaml")
    facts = RequestFacts("/", [], text.encode(), "", "text/plain", "api.example.org", None)
    outcome = inspect_request(engine, policy.dlp, b"k" * 32, facts)
    assert (outcome.action, outcome.uninspectable) == ("uninspectable", "scan_incomplete")


def test_a_custom_detectors_keywords_still_gate_its_pattern():
    # README: "keywords: ... the pattern runs only if one occurs". Built-in keywords are
    # implied by their patterns, so the pass need not search them; a custom detector's are a
    # condition its author set, which its pattern need not imply.
    from tollgate.dlp.detectors import compile_custom
    from tollgate.policy.model import CustomDetector

    engine = Engine(BUILTIN + (compile_custom(CustomDetector("staff_number", r"\bST\d{6}\b", ("employee",))),))
    found = {m.detector for m in engine.scan('{"ref": "ST123456"}')}
    assert "staff_number" not in found
    found = {m.detector for m in engine.scan('{"employee": "ST123456"}')}
    assert "staff_number" in found
    if engine._multi.active:
        assert "employee" in engine._multi._keywords  # searched in the pass
