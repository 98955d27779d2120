from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from tollgate.audit.events import redact_url
from tollgate.audit.writer import GENESIS, AuditError, AuditWriter


def read(path):
    return path.read_bytes().splitlines(keepends=True)


def test_lines_are_json_and_hash_chained(tmp_path):
    path = tmp_path / "a" / "audit.jsonl"
    w = AuditWriter(path)
    for i in range(3):
        w.write({"event": {"action": f"e{i}"}})
    w.close()
    lines = read(path)
    records = [json.loads(line) for line in lines]
    assert [r["event"]["action"] for r in records] == ["e0", "e1", "e2"]
    assert records[0]["tollgate"]["chain"]["prev"] == GENESIS
    for prev_line, record in zip(lines, records[1:]):
        assert record["tollgate"]["chain"]["prev"] == hashlib.sha256(prev_line).hexdigest()
    assert records[0]["@timestamp"].endswith("Z") and records[0]["ecs"]["version"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_restart_continues_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    w = AuditWriter(path)
    w.write({"n": 1})
    w.close()
    w = AuditWriter(path)
    w.write({"n": 2})
    w.close()
    first, second = read(path)
    assert json.loads(second)["tollgate"]["chain"]["prev"] == hashlib.sha256(first).hexdigest()


def test_rotation_keeps_every_line_and_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    w = AuditWriter(path, rotate_bytes=4096)
    for i in range(100):
        w.write({"n": i, "pad": "x" * 100})
    w.close()
    files = sorted(tmp_path.glob("audit.jsonl.*")) + [path]
    assert len(files) > 1
    lines = [line for f in files for line in read(f)]
    assert [json.loads(line)["n"] for line in lines] == list(range(100))
    for prev_line, line in zip(lines, lines[1:]):
        assert json.loads(line)["tollgate"]["chain"]["prev"] == hashlib.sha256(prev_line).hexdigest()


def test_unwritable_directory_is_an_audit_error(tmp_path):
    if os.geteuid() == 0:
        target = tmp_path / "file-not-dir"
        target.write_text("")
        with pytest.raises(AuditError, match="cannot open audit log"):
            AuditWriter(target / "audit.jsonl")
    else:
        tmp_path.chmod(0o500)
        with pytest.raises(AuditError):
            AuditWriter(tmp_path / "sub" / "audit.jsonl")


@pytest.mark.parametrize("url, expected", [
    ("https://h:8443/p?token=abc&x=1", "https://h:8443/p?token=&x="),
    ("https://user:pass@h/p", "https://h/p"),
    ("http://[::1]:80/x?a", "http://[::1]:80/x?a="),
    ("https://h/p#frag", "https://h/p"),
])
def test_redact_url_drops_query_values_and_userinfo(url, expected):
    assert redact_url(url) == expected


def test_restart_after_rotation_continues_from_the_rotated_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    w = AuditWriter(path, rotate_bytes=4096)
    for i in range(40):
        w.write({"n": i, "pad": "x" * 100})
    w.close()
    path.write_bytes(b"")  # the live file is empty, as right after a rotation
    w = AuditWriter(path)
    w.write({"n": "after"})
    w.close()
    from tollgate.audit.review import verify

    assert verify(path)[1] is None


WRITER = """
import sys
from tollgate.audit.writer import AuditWriter
w = AuditWriter(sys.argv[1], rotate_bytes=8192)
for i in range(400):
    w.write({"writer": sys.argv[2], "n": i, "pad": "y" * 50})
w.close()
"""


@pytest.mark.parametrize("attempt", range(4))  # a race: one try caught it about half the time
def test_several_processes_share_one_chain_and_lose_nothing(tmp_path, attempt):
    import subprocess
    import sys
    from collections import Counter

    from tollgate.audit.review import read_lines, verify

    path = tmp_path / "audit.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name]) for name in ("a", "b")]
    assert [p.wait(60) for p in procs] == [0, 0]
    count, problem = verify(path)
    assert problem is None, str(problem)
    writers = Counter(line.event["writer"] for line in read_lines(path))
    assert writers == {"a": 400, "b": 400} and count == 800
    assert len(list(tmp_path.glob("audit.jsonl.*"))) >= 2  # rotated under concurrent writes
