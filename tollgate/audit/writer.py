"""The audit writer: one JSON line per decision, appended, flushed, hash-chained.

Each line carries ``tollgate.chain.prev``, the SHA-256 of the previous line's bytes (the
last line of the previous file after rotation, or of the existing file after a restart), so
an edited, deleted or reordered line breaks the chain. A write that fails raises
AuditError: callers block the traffic rather than run unaudited.

Several processes may share one log: each write holds an exclusive flock, and a writer that
finds the file changed under it (another process wrote or rotated) re-reads the tail first,
so all processes extend one chain.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

ECS_VERSION = "8.11.0"
GENESIS = "0" * 64


class AuditError(Exception):
    """The audit log cannot be written."""


class AuditWriter:
    def __init__(self, path: str | Path, rotate_bytes: int = 100 * 1024 * 1024):
        self.path = Path(path)
        self.rotate_bytes = rotate_bytes
        self._lock = threading.Lock()
        self._seq = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            self._open()
        except OSError as e:
            raise AuditError(f"cannot open audit log {self.path}: {e.strerror}") from e

    def _open(self) -> None:
        self._file = open(self.path, "ab", buffering=0)
        if self.path.is_file():
            os.chmod(self.path, 0o640)
        self._prev = GENESIS
        self._known_size = -1  # unknown: the tail is read under the lock, before the next write

    def write(self, event: dict[str, Any]) -> None:
        """Append one event. Adds @timestamp, ecs.version and the chain fields."""
        with self._lock:
            record = {"@timestamp": _now(), "ecs": {"version": ECS_VERSION}, **event}
            tollgate = dict(record.get("tollgate", {}))
            self._seq += 1
            tollgate["chain"] = {"prev": self._prev, "seq": self._seq}
            record["tollgate"] = tollgate
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX)
                try:
                    self._catch_up()
                    line = self._line(record)
                    if self._rotation_due(len(line)):
                        self._rotate()
                        # Between the rename and our lock on the new file, another process may
                        # have created it and written there first: continue from what is there.
                        self._catch_up()
                        line = self._line(record)
                    self._file.write(line)
                    self._known_size = self._file.tell()
                finally:
                    fcntl.flock(self._file, fcntl.LOCK_UN)
            except OSError as e:
                raise AuditError(f"cannot write audit log {self.path}: {e.strerror}") from e
            self._prev = hashlib.sha256(line).hexdigest()

    def _catch_up(self) -> None:
        """Another process rotated the file or appended to it: continue from its last line."""
        try:
            rotated = os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            rotated = True
        if rotated:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._open()
            fcntl.flock(self._file, fcntl.LOCK_EX)
            if os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino:
                return self._catch_up()  # rotated again while we waited for the lock
        size = self._file.seek(0, os.SEEK_END)
        if size != self._known_size:
            self._prev = _last_line_hash(self.path)
            self._known_size = size

    def _line(self, record: dict[str, Any]) -> bytes:
        record["tollgate"]["chain"]["prev"] = self._prev
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8") + b"\n"

    def _rotation_due(self, incoming: int) -> bool:
        size = self._file.tell()
        return size > 0 and size + incoming > self.rotate_bytes

    def _rotate(self) -> None:
        """Rename the live file and open a new one; ends holding the lock on the new file."""
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        os.replace(self.path, self.path.with_name(f"{self.path.name}.{stamp}"))  # still holding the lock
        old = self._file
        self._file = open(self.path, "ab", buffering=0)
        os.chmod(self.path, 0o640)
        fcntl.flock(self._file, fcntl.LOCK_EX)
        fcntl.flock(old, fcntl.LOCK_UN)
        old.close()
        self._known_size = -1  # the next _catch_up reads the chain's tail from disk

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _last_line_hash(path: Path) -> str:
    """Hash of the log's last line, so a restart (or another process) continues the chain.

    When the live file is empty, the chain continues from the newest rotated file.
    """
    own = _file_last_line_hash(path)
    if own is not None:
        return own
    for rotated in sorted(path.parent.glob(path.name + ".*"), reverse=True):
        previous = _file_last_line_hash(rotated)
        if previous is not None:
            return previous
    return GENESIS


def _file_last_line_hash(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            if end == 0:
                return None
            f.seek(max(0, end - 65536))
            tail = f.read()
    except FileNotFoundError:
        return None
    # A torn last line (crash mid-write) is hashed as it is: the chain covers it too.
    return hashlib.sha256(tail.splitlines(keepends=True)[-1]).hexdigest()
