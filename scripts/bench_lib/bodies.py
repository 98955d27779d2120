"""Clean JSON request bodies of an exact size: order-like records made of plain words and
small numbers, so no DLP detector (cards, phones, IBANs, keys, high-entropy strings) fires."""

from __future__ import annotations

import json
import random

WORDS = ("alpha bravo canal delta ember falcon garden harbor island jasper kettle lantern meadow "
         "nectar orchid pepper quartz river saddle timber umber velvet willow yarrow zephyr amber "
         "basil cedar dune fern grove hazel iris juniper kelp lotus maple nutmeg olive pine quill "
         "rowan sage thyme upland violet walnut").split()


def _phrase(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_body(size: int, seed: int) -> bytes:
    """A JSON object of exactly `size` bytes (size >= 200)."""
    rng = random.Random(seed)
    doc = {"event": "order.updated", "source": "warehouse-sync", "region": rng.choice(["north", "south", "east"]),
           "items": [], "note": ""}
    while True:
        item = {"sku": f"{rng.choice(WORDS)[:4].upper()}-{rng.randint(10, 99)}", "name": _phrase(rng, 2),
                "qty": rng.randint(1, 9), "unit_price": f"{rng.randint(1, 99)}.{rng.randint(10, 99)}",
                "tags": [rng.choice(WORDS), rng.choice(WORDS)], "comment": _phrase(rng, 6)}
        doc["items"].append(item)
        if len(json.dumps(doc, separators=(",", ":"))) > size - 120:
            doc["items"].pop()
            break
    base = len(json.dumps(doc, separators=(",", ":")))
    note = ""
    while len(note) < size - base:
        note += rng.choice(WORDS) + " "
    doc["note"] = note[: size - base]
    body = json.dumps(doc, separators=(",", ":")).encode()
    assert len(body) == size, (len(body), size)
    return body


def make_bodies(size: int, count: int = 8) -> list[bytes]:
    return [make_body(size, seed=size * 100 + i) for i in range(count)]
