"""The detection view: invisible characters removed and wide forms folded, with an offset map.

Detectors match on the view; ``to_original`` maps a view span back to the original text so
a redaction hits the characters the client actually sent.
"""

from __future__ import annotations

import unicodedata
from typing import NamedTuple


class View(NamedTuple):  # a tuple: made for every text scanned, cheaper than a dataclass
    text: str
    offsets: tuple[int, ...] | None  # view index → original index; None when identical

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        if self.offsets is None:
            return start, end
        return self.offsets[start], self.offsets[end - 1] + 1


def _fold(ch: str) -> str | None:
    """'' to drop the character, a replacement, or None to keep it."""
    code = ord(ch)
    if 0xFF01 <= code <= 0xFF5E:  # fullwidth ASCII
        return chr(code - 0xFEE0)
    if code == 0x3000:  # ideographic space
        return " "
    category = unicodedata.category(ch)
    if category == "Cf" or ch == "\u00ad":  # zero-width, BOM, soft hyphen, bidi controls
        return ""
    if category == "Mn":  # combining marks used to break up a match
        return ""
    if category == "Nd":
        return str(unicodedata.digit(ch))
    return None


def detection_view(text: str) -> View:
    if text.isascii():
        return View(text, None)
    out: list[str] = []
    offsets: list[int] = []
    for i, ch in enumerate(text):
        folded = _fold(ch) if ord(ch) > 0x7F else None
        if folded is None:
            out.append(ch)
            offsets.append(i)
        elif folded:
            out.append(folded)
            offsets.append(i)
    offsets.append(len(text))
    return View("".join(out), tuple(offsets))
