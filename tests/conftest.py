"""Test output never shows a test secret: a failing assertion's report (pytest prints both
sides of an `in` or `==`, and the values they came from) and captured output are masked."""

from __future__ import annotations

import pytest

from tests.support.secrets import POSITIVE

MIN_SHOWN = 8  # a run of this many characters of a secret is enough to count as showing it


def _pieces() -> list[str]:
    """Each secret (and each line of a multi-line one), and its prefixes down to MIN_SHOWN
    characters, longest first: a partial leak in a failure message is masked too."""
    out = set()
    for _, value in POSITIVE.values():
        for line in value.splitlines():
            line = line.strip()
            for n in range(MIN_SHOWN, len(line) + 1):
                out.add(line[:n])
    return sorted(out, key=len, reverse=True)


PIECES = _pieces()


def mask_secrets(text: str) -> str:
    if not any(p[:MIN_SHOWN] in text for p in PIECES):
        return text
    for piece in PIECES:
        if piece in text:
            text = text.replace(piece, "[TEST-SECRET]")
    return text


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.longrepr is not None:
        report.longrepr = mask_secrets(str(report.longrepr))
    report.sections = [(title, mask_secrets(content)) for title, content in report.sections]
