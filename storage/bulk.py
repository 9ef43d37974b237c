"""Bulk batches: records for bulk topics kept in SQLite (durable on return, like the spool), cut by size
or age into gzip-compressed JSON Lines files, and remembered until the caller says a batch is stored.

It knows nothing of S3, MQTT or upload windows; one thread owns a BulkStore.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from storage.spool import SpoolCorrupt, SpoolUnwritable

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    ts REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    file TEXT NOT NULL,
    first_ts REAL NOT NULL,
    last_ts REAL NOT NULL,
    records INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class BulkRecord:
    topic: str
    payload: bytes
    ts: float


@dataclass(frozen=True)
class Batch:
    id: int
    file: Path
    first_ts: float
    last_ts: float
    records: int
    bytes: int


def record_line(topic: str, payload: bytes, ts: float) -> bytes:
    """One JSON Lines record: the payload as text when it is UTF-8, else base64 in payload_b64."""
    record: dict[str, object] = {"ts": ts, "topic": topic}
    try:
        record["payload"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        record["payload_b64"] = base64.b64encode(payload).decode()
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


class BulkStore:
    def __init__(self, path: Path, batch_dir: Path, *, durable: bool = True):
        self.path = path
        self.batch_dir = batch_dir
        try:
            batch_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SpoolCorrupt(f"bulk store {path} is damaged ({exc}); move it aside and restart") from None
        except OSError as exc:
            raise SpoolUnwritable(f"bulk store {path}: {exc}; check the state directory") from None
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        self._db.executescript(SCHEMA)
        self._remove_orphans()

    def close(self) -> None:
        self._db.close()

    def add(self, records: Sequence[BulkRecord]) -> None:
        """Store records in one transaction; when this returns they are durable."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO records (topic, payload, ts, size) VALUES (?, ?, ?, ?)",
                [(r.topic, r.payload, r.ts, len(r.topic) + len(r.payload)) for r in records],
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def waiting(self) -> tuple[int, int, float | None]:
        """(records, bytes, oldest ts) not yet in a batch."""
        count, size = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM records").fetchone()
        oldest = self._db.execute("SELECT ts FROM records ORDER BY id LIMIT 1").fetchone()
        return count, size, oldest[0] if oldest else None

    def cut(self, max_bytes: int, max_age_s: float, now: float | None = None, force: bool = False) -> list[Batch]:
        """Turn waiting records into batch files once they reach `max_bytes` (uncompressed) or the
        oldest is `max_age_s` old (or `force`); each batch is at most about `max_bytes`."""
        now = time.time() if now is None else now
        made: list[Batch] = []
        while True:
            count, size, oldest = self.waiting()
            if not count or not (force or size >= max_bytes or (oldest is not None and now - oldest >= max_age_s)):
                return made
            made.append(self._cut_one(max_bytes))

    def _cut_one(self, max_bytes: int) -> Batch:
        rows: list[tuple[int, str, bytes, float]] = []
        total = 0
        for rowid, topic, payload, ts, size in self._db.execute(
            "SELECT id, topic, payload, ts, size FROM records ORDER BY id"
        ):
            if rows and total + size > max_bytes:
                break
            rows.append((rowid, topic, payload, ts))
            total += size
        first, last = rows[0][0], rows[-1][0]
        file = self.batch_dir / f"batch-{first:012d}-{last:012d}.jsonl.gz"
        partial = file.with_suffix(".part")
        with open(partial, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
                for _rowid, topic, payload, ts in rows:
                    packed.write(record_line(topic, payload, ts))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, file)
        _fsync_dir(self.batch_dir)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cursor = self._db.execute(
                "INSERT INTO batches (file, first_ts, last_ts, records, bytes, created) VALUES (?, ?, ?, ?, ?, ?)",
                (file.name, rows[0][3], rows[-1][3], len(rows), file.stat().st_size, time.time()),
            )
            self._db.execute("DELETE FROM records WHERE id BETWEEN ? AND ?", (first, last))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        assert cursor.lastrowid is not None
        return Batch(cursor.lastrowid, file, rows[0][3], rows[-1][3], len(rows), file.stat().st_size)

    def pending(self) -> list[Batch]:
        return [
            Batch(r[0], self.batch_dir / r[1], r[2], r[3], r[4], r[5])
            for r in self._db.execute("SELECT id, file, first_ts, last_ts, records, bytes FROM batches ORDER BY id")
        ]

    def done(self, batch: Batch) -> None:
        """The batch is safely stored elsewhere: forget it and remove its file."""
        self._db.execute("DELETE FROM batches WHERE id=?", (batch.id,))
        batch.file.unlink(missing_ok=True)

    def _remove_orphans(self) -> None:
        """Files a crash left between writing and recording a batch; their records are still waiting."""
        known = {row[0] for row in self._db.execute("SELECT file FROM batches")}
        for file in self.batch_dir.iterdir():
            if file.name not in known and file.name.startswith("batch-"):
                file.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
