"""Every detector: true positives (in several encodings) and close-looking true negatives."""

from __future__ import annotations

import base64
import gzip
import json
from urllib.parse import quote

import pytest

from tests.support.secrets import NEGATIVE, POSITIVE
from tollgate.dlp.detectors import BUILTIN
from tollgate.dlp.engine import Engine
from tollgate.dlp.ids import BUILTIN_DETECTORS
from tollgate.dlp.inspect import RequestFacts, inspect_request
from tollgate.policy.model import DlpSettings

ENGINE = Engine(BUILTIN)
DLP = DlpSettings(default_action="block")


def detected(text: str) -> set[str]:
    return {m.detector for m in ENGINE.scan(text)}


def test_every_builtin_id_has_a_detector_and_an_example():
    assert {d.id for d in BUILTIN} == BUILTIN_DETECTORS
    assert {det for det, _ in POSITIVE.values()} == BUILTIN_DETECTORS


@pytest.mark.parametrize("label", list(POSITIVE))
def test_true_positive(label):
    detector, value = POSITIVE[label]
    assert detector in detected(f"payload: {value} ;"), label


@pytest.mark.parametrize("label", list(NEGATIVE))
def test_true_negative(label):
    detector, text = NEGATIVE[label]
    assert detector not in detected(text), label


def test_documentation_placeholders_are_reported_not_blocked():
    (match,) = [m for m in ENGINE.scan("key AKIAIOSFODNN7EXAMPLE") if m.detector == "aws_access_key_id"]
    assert match.placeholder
    (stripe,) = [m for m in ENGINE.scan("sk_test_Zx3MhvUtQ7pL2xKq4Rt8wB6c") if m.detector == "stripe_secret_key"]
    assert stripe.placeholder


def request(body: bytes, content_type: str = "application/json", encoding: str = "", path: str = "/",
            headers: tuple = ()) -> set[str]:
    outcome = inspect_request(ENGINE, DLP, b"k" * 32, RequestFacts(path, list(headers), body, encoding, content_type,
                                                                    "example.net", None))
    return {f["detector"] for f in outcome.findings}


CONTAINERS = {
    "json": lambda v: (json.dumps({"data": {"items": [v]}}).encode(), "application/json", "", "/", ()),
    # PHP's json_encode and others escape every "/" as "\/" and quotes inside strings as \".
    "json_escaped_slashes": lambda v: (json.dumps({"v": v}).replace("/", "\\/").encode(), "application/json", "", "/", ()),
    "json_unicode_escaped": lambda v: (json.dumps({"v": v}, ensure_ascii=True).encode().replace(b'"v"', b'"\\u0076"'),
                                       "application/json", "", "/", ()),
    "form": lambda v: (f"a=1&field={quote(v)}".encode(), "application/x-www-form-urlencoded", "", "/", ()),
    "multipart": lambda v: (b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n" + v.encode()
                            + b"\r\n--XyZ--\r\n", "multipart/form-data; boundary=XyZ", "", "/", ()),
    "multipart_base64_part": lambda v: (b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n"
                                        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(v.encode())
                                        + b"\r\n--XyZ--\r\n", "multipart/form-data; boundary=XyZ", "", "/", ()),
    "header": lambda v: (b"", "", "", "/", (("X-Debug", v),)),
    "query": lambda v: (b"", "", "", f"/search?q={quote(v)}", ()),
    "path": lambda v: (b"", "", "", f"/files/{quote(v, safe='')}", ()),
    "gzip": lambda v: (gzip.compress(v.encode()), "text/plain", "gzip", "/", ()),
    "base64": lambda v: (base64.b64encode(v.encode()), "text/plain", "", "/", ()),
    "double_percent": lambda v: (quote(quote(v, safe=""), safe="").encode(), "text/plain", "", "/", ()),
    "fullwidth": lambda v: ("".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in v).encode(), "text/plain",
                            "", "/", ()),
    "zero_width": lambda v: ("\u200b".join(v).encode(), "text/plain", "", "/", ()),
}

# Every positive example in every container and encoding.
MATRIX = sorted(POSITIVE)


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("label", MATRIX)
def test_detected_in_every_container_and_encoding(label, container):
    detector, value = POSITIVE[label]
    body, ctype, enc, path, headers = CONTAINERS[container](value)
    assert detector in request(body, ctype, enc, path, headers), f"{label} in {container}"
