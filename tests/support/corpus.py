"""A generated corpus of realistic, clean API request bodies (deterministic).

JSON, forms and multipart with the kind of values that look like findings but are not:
ids, UUIDs, hashes, timestamps, prices, version strings, tracking numbers, base64 images.
Used by the benign-corpus test (no request may be blocked) and by scripts/bench-dlp.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import uuid
from urllib.parse import urlencode

WORDS = ("alpha bravo charlie delta echo foxtrot order invoice shipment customer product catalog region "
         "status pending shipped delivered warehouse ticket priority comment review rating update sync").split()
PIXEL = base64.b64encode(bytes(range(256)) * 4).decode()


def _value(rng: random.Random) -> object:
    kind = rng.randrange(14)
    if kind == 0:
        return str(uuid.UUID(int=rng.getrandbits(128)))
    if kind == 1:
        return hashlib.sha256(rng.randbytes(16)).hexdigest()
    if kind == 2:
        return rng.randrange(10**9, 10**13)  # ids and millisecond timestamps
    if kind == 3:
        return round(rng.uniform(1, 5000), 2)
    if kind == 4:
        return f"{rng.randrange(1, 20)}.{rng.randrange(0, 30)}.{rng.randrange(0, 200)}"
    if kind == 5:
        return f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:00:00Z"
    if kind == 6:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 25)))
    if kind == 7:
        return f"ORD-{rng.randrange(10**5, 10**6)}-{rng.choice('ABCDEFGH')}"
    if kind == 8:
        return f"https://cdn.example.com/{rng.choice(WORDS)}/{rng.randrange(10**6)}.png"
    if kind == 9:
        return "data:image/png;base64," + PIXEL[: rng.randrange(64, 1024)]
    if kind == 10:
        return rng.random() < 0.5
    if kind == 11:
        return [_value(rng) for _ in range(rng.randrange(1, 4))]
    if kind == 12:
        return f"1Z{rng.randrange(10**15, 10**16)}"  # parcel tracking number
    return rng.choice(WORDS).upper()


def json_body(rng: random.Random, size: int) -> bytes:
    items = []
    while True:
        items.append({f"{rng.choice(WORDS)}_{i}": _value(rng) for i in range(rng.randrange(4, 12))})
        body = json.dumps({"data": items, "page": rng.randrange(100), "request_id": str(uuid.UUID(int=rng.getrandbits(128)))})
        if len(body) >= size:
            return body.encode()


def form_body(rng: random.Random, size: int) -> bytes:
    pairs = []
    while len(urlencode(pairs)) < size:
        pairs.append((rng.choice(WORDS), str(_value(rng))))
    return urlencode(pairs).encode()


def multipart_body(rng: random.Random, size: int) -> tuple[bytes, str]:
    boundary = f"----tollgate{rng.randrange(10**9)}"
    parts = []
    while sum(map(len, parts)) < size:
        name = rng.choice(WORDS)
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                     f"{json.dumps(_value(rng))}\r\n".encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def generate(count: int, seed: int = 7, sizes: tuple[int, ...] = (300, 1024, 4096, 16384)):
    """Yield (content_type, body) pairs: 60% JSON, 25% forms, 15% multipart."""
    rng = random.Random(seed)
    for _ in range(count):
        size = rng.choice(sizes)
        roll = rng.random()
        if roll < 0.6:
            yield "application/json", json_body(rng, size)
        elif roll < 0.85:
            yield "application/x-www-form-urlencoded", form_body(rng, size)
        else:
            body, ctype = multipart_body(rng, size)
            yield ctype, body


def filler(n: int, seed: int = 1) -> bytes:
    """`n` bytes of clean text (words, some `=number`): the bulk of a large body."""
    rnd = random.Random(seed)
    out = []
    size = 0
    while size < n:
        w = rnd.choice(WORDS) + ("=" + str(rnd.randint(1, 999)) if rnd.random() < 0.3 else "")
        out.append(w)
        size += len(w) + 1
    return " ".join(out).encode()[:n]
