"""The audit HMAC key: made once, whole, and the same for workers that start together."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from tollgate.audit.fingerprint import KEY_BYTES, KEY_FILE, load_or_create_key


def _load(directory: str, start, out) -> None:
    start.wait()
    try:
        out.put(load_or_create_key(directory))
    except Exception as e:  # noqa: BLE001 - reported to the test
        out.put(f"{type(e).__name__}: {e}")


def test_workers_starting_together_all_get_the_same_whole_key(tmp_path):
    # `tollgate run --workers N` on a first start: every worker creates the key at once.
    # One of them used to fail with "File exists" (or could read a key not yet written).
    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        directory = tmp_path / f"ca{round_}"
        start, out = ctx.Event(), ctx.Queue()
        workers = [ctx.Process(target=_load, args=(str(directory), start, out)) for _ in range(6)]
        for w in workers:
            w.start()
        start.set()
        keys = [out.get(timeout=30) for _ in workers]
        for w in workers:
            w.join(30)
        assert all(isinstance(k, bytes) for k in keys), [k for k in keys if not isinstance(k, bytes)]
        assert len(set(keys)) == 1 and len(keys[0]) == KEY_BYTES
        assert (directory / KEY_FILE).read_bytes() == keys[0]
        assert sorted(p.name for p in directory.iterdir()) == [KEY_FILE]  # no temporary left behind
        assert (directory / KEY_FILE).stat().st_mode & 0o777 == 0o600


def test_a_short_key_file_is_refused(tmp_path):
    (tmp_path / KEY_FILE).write_bytes(b"")
    os.chmod(tmp_path / KEY_FILE, 0o600)
    with pytest.raises(ValueError, match="not a 32-byte key"):
        load_or_create_key(tmp_path)


def test_a_key_readable_by_others_is_refused(tmp_path):
    key = load_or_create_key(tmp_path)
    assert load_or_create_key(tmp_path) == key  # kept across starts
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with pytest.raises(PermissionError):
        load_or_create_key(tmp_path)


def test_the_key_is_never_written_through_a_planted_link(tmp_path):
    # Someone who can write into the CA directory plants a link where the key is first
    # written: the start fails, and the link's target is not overwritten with the key.
    directory = tmp_path / "ca"
    directory.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"untouched")
    (directory / f".{KEY_FILE}.{os.getpid()}.tmp").symlink_to(target)
    with pytest.raises(OSError):
        load_or_create_key(directory)
    assert target.read_bytes() == b"untouched"
    assert not (directory / KEY_FILE).exists()
