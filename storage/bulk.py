"""Bulk batches: records for bulk topics kept in SQLite (durable on return, like the spool), cut by size
or age into gzip-compressed JSON Lines files, and remembered until the caller says a batch is stored.
Records and batch files together stay under a byte cap with the spool's full policy (drop-oldest or
reject-new, counted), and a full disk follows the same policy instead of raising.

It knows nothing of S3, MQTT or upload windows; one thread owns a BulkStore.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from storage.disk_reserve import DiskReserve
from storage.spool import DISK_CAP_FRACTION
from storage.spool_file import PAGE_CACHE_KIB, WAL_SIZE_LIMIT, Transaction, is_disk_full
from storage.spool_records import (
    DROPPED_DISK_FULL,
    REJECTED_DISK_FULL,
    AppendResult,
    Policy,
    SpoolCorrupt,
    SpoolUnwritable,
)

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
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

# counted in records (a dropped batch counts its records); the disk-full ones share the spool's names
DROPPED_FULL = "dropped.bulk-full"
REJECTED_FULL = "rejected.bulk-full"
DEFAULT_RESERVE_BYTES = 1024 * 1024
T = TypeVar("T")


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
    def __init__(
        self,
        path: Path,
        batch_dir: Path,
        *,
        max_bytes: int = 1_000_000_000,
        policy: Policy = "drop-oldest",
        durable: bool = True,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ):
        self.path = path
        self.batch_dir = batch_dir
        self.max_bytes = max_bytes
        self.policy = policy
        self.cut_blocked: str | None = None  # why the last cut could not write its file, if it could not
        self._disk_cap: int | None = None  # bytes held when the disk filled: the cap until it has room
        try:
            batch_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SpoolCorrupt(f"bulk store {path} is damaged ({exc}); move it aside and restart") from None
        except OSError as exc:
            raise SpoolUnwritable(f"bulk store {path}: {exc}; check the state directory") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")  # the WAL shrinks back after a big write
            self._db.executescript(SCHEMA)
            self._remove_orphans()
        except (sqlite3.OperationalError, OSError) as exc:
            self._db.close()
            raise SpoolUnwritable(
                f"bulk store {path}: cannot write: {exc}; check permissions and free space of {path.parent}"
            ) from None
        self._reserve = DiskReserve(path.with_name(path.name + ".reserve"), reserve_bytes)
        self._reserve.take()
        self._bytes = 0
        self._recount()

    def close(self) -> None:
        self._db.close()

    # ---- writing ----------------------------------------------------------------------------

    def add(self, records: Sequence[BulkRecord]) -> AppendResult:
        """Store records in one transaction; when this returns they are durable. Over the cap (or on a
        full disk) the policy applies: the oldest batches, then records, are dropped, or the new ones
        refused; the result and the counters say how many."""
        result = AppendResult()
        doomed: list[Path] = []
        try:
            with self._transaction():
                self._add(records, result, doomed)
        except sqlite3.OperationalError as exc:
            self._disk_full(exc)
            result, doomed = AppendResult(disk_full=True), []
            try:
                with self._transaction():
                    self._add(records, result, doomed)
            except sqlite3.OperationalError as again:
                self._disk_full(again)
                result, doomed = AppendResult(disk_full=True, rejected=len(records)), []
                with contextlib.suppress(sqlite3.OperationalError), self._transaction():
                    self._bump(REJECTED_DISK_FULL, len(records))
        for file in doomed:
            with contextlib.suppress(OSError):  # left over, it is an orphan the next start removes
                file.unlink(missing_ok=True)
        self._after_write()
        return result

    def _add(self, records: Sequence[BulkRecord], result: AppendResult, doomed: list[Path]) -> None:
        cap, disk = self._cap()
        rows = []
        incoming = 0
        for record in records:
            size = len(record.topic) + len(record.payload)
            if self._bytes + incoming + size > cap:
                if self.policy == "drop-oldest" and size <= cap:
                    result.dropped_oldest += self._drop_oldest(self._bytes + incoming + size - cap, doomed, disk)
                if self._bytes + incoming + size > cap:
                    result.rejected += 1
                    continue
            rows.append((record.topic, record.payload, record.ts, size))
            incoming += size
        self._db.executemany("INSERT INTO records (topic, payload, ts, size) VALUES (?, ?, ?, ?)", rows)
        if result.rejected:
            self._bump(REJECTED_DISK_FULL if disk else REJECTED_FULL, result.rejected)
        result.disk_full = disk and bool(result.rejected or result.dropped_oldest)
        result.stored = len(rows)
        self._bytes += incoming

    def _drop_oldest(self, needed: int, doomed: list[Path], disk: bool) -> int:
        """Drop whole batches, oldest first, then the oldest waiting records, until `needed` bytes are
        free; batch files are removed by the caller once the transaction committed. Returns records."""
        dropped = freed = 0
        for rowid, file, count, size in self._db.execute(
            "SELECT id, file, records, bytes FROM batches ORDER BY id"
        ).fetchall():
            if freed >= needed:
                break
            self._db.execute("DELETE FROM batches WHERE id=?", (rowid,))
            doomed.append(self.batch_dir / file)
            dropped += count
            freed += size
        while freed < needed:
            victims = self._db.execute("SELECT id, size FROM records ORDER BY id LIMIT 256").fetchall()
            if not victims:
                break
            for rowid, size in victims:
                self._db.execute("DELETE FROM records WHERE id=?", (rowid,))
                dropped += 1
                freed += size
                if freed >= needed:
                    break
        if dropped:
            self._bump(DROPPED_DISK_FULL if disk else DROPPED_FULL, dropped)
        self._bytes -= freed
        return dropped

    def cut(self, max_bytes: int, max_age_s: float, now: float | None = None, force: bool = False) -> list[Batch]:
        """Turn waiting records into batch files once they reach `max_bytes` (uncompressed) or the
        oldest is `max_age_s` old (or `force`); each batch is at most about `max_bytes`. On a full disk
        the records stay waiting (`cut_blocked` says why) and the next cut tries again."""
        now = time.time() if now is None else now
        made: list[Batch] = []
        while True:
            count, size, oldest = self.waiting()
            if not count or not (force or size >= max_bytes or (oldest is not None and now - oldest >= max_age_s)):
                self.cut_blocked = None
                return made
            try:
                made.append(self._cut_one(max_bytes))
            except (OSError, sqlite3.OperationalError) as exc:
                if not is_disk_full(exc):
                    raise SpoolUnwritable(
                        f"bulk store {self.path}: cannot write a batch in {self.batch_dir}: {exc}; check "
                        "permissions of the state directory"
                    ) from None
                self.cut_blocked = f"disk full in {self.batch_dir}"
                return made

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
        # named by the batch's id, unique among the batches there are (record ids are not: an emptied
        # table starts again at 1, and a name from them overwrote a batch still waiting for its window)
        (batch_id,) = self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM batches").fetchone()
        file = self.batch_dir / f"batch-{batch_id:012d}.jsonl.gz"
        partial = file.with_suffix(".part")
        try:
            with open(partial, "wb") as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
                    for _rowid, topic, payload, ts in rows:
                        packed.write(record_line(topic, payload, ts))
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(partial, file)
            _fsync_dir(self.batch_dir)
            size = file.stat().st_size
            with self._transaction():
                self._db.execute(
                    "INSERT INTO batches (id, file, first_ts, last_ts, records, bytes, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (batch_id, file.name, rows[0][3], rows[-1][3], len(rows), size, time.time()),
                )
                self._db.execute("DELETE FROM records WHERE id BETWEEN ? AND ?", (first, last))
        except BaseException:
            partial.unlink(missing_ok=True)  # the records are still waiting: a later cut makes it again
            file.unlink(missing_ok=True)
            raise
        self._bytes += size - total
        return Batch(batch_id, file, rows[0][3], rows[-1][3], len(rows), size)

    def done(self, batch: Batch) -> None:
        """The batch is safely stored elsewhere: forget it and remove its file. A full store may have
        dropped it meanwhile (drop-oldest, while it was uploading): its bytes were given back then."""
        gone = self._write(
            lambda: self._db.execute("DELETE FROM batches WHERE id=? RETURNING bytes", (batch.id,)).fetchall()
        )
        with contextlib.suppress(OSError):  # left over, it is an orphan the next start removes
            batch.file.unlink(missing_ok=True)
        self._bytes -= sum(size for (size,) in gone)

    # ---- reading ----------------------------------------------------------------------------

    def waiting(self) -> tuple[int, int, float | None]:
        """(records, bytes, oldest ts) not yet in a batch."""
        count, size = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM records").fetchone()
        oldest = self._db.execute("SELECT ts FROM records ORDER BY id LIMIT 1").fetchone()
        return count, size, oldest[0] if oldest else None

    def pending(self) -> list[Batch]:
        return [
            Batch(r[0], self.batch_dir / r[1], r[2], r[3], r[4], r[5])
            for r in self._db.execute("SELECT id, file, first_ts, last_ts, records, bytes FROM batches ORDER BY id")
        ]

    def counters(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT name, value FROM counters ORDER BY name").fetchall())

    @property
    def bytes(self) -> int:
        """Waiting records plus batch files, as counted against `max_bytes`."""
        return self._bytes

    # ---- internals --------------------------------------------------------------------------

    def _cap(self) -> tuple[int, bool]:
        if self._disk_cap is not None and self._disk_cap < self.max_bytes:
            return self._disk_cap, True
        return self.max_bytes, False

    def _disk_full(self, exc: sqlite3.OperationalError) -> None:
        """A write failed: unless the disk is full that is the end (SpoolUnwritable); if it is, give
        back the reserve, move the WAL into the file and keep to what is held now."""
        if not is_disk_full(exc):
            raise SpoolUnwritable(f"bulk store {self.path}: write failed: {exc}") from None
        self._recount()  # what the failed transaction counted did not happen
        if self._disk_cap is None:
            self._disk_cap = int(self._bytes * DISK_CAP_FRACTION)
        self._reserve.give_back()
        self._checkpoint()

    def _write(self, work: Callable[[], T]) -> T:
        try:
            with self._transaction():
                done = work()
        except sqlite3.OperationalError as exc:
            self._disk_full(exc)
            try:
                with self._transaction():
                    done = work()
            except sqlite3.OperationalError as again:
                raise SpoolUnwritable(
                    f"bulk store {self.path}: write failed even after freeing room: {again}"
                ) from None
        self._after_write()
        return done

    def _after_write(self) -> None:
        """Without its reserve the store keeps its WAL empty, and takes the reserve back (and lifts
        the full disk's cap) once the filesystem has room for it again."""
        if not self._reserve.held:
            self._checkpoint()
            if self._reserve.take():
                self._disk_cap = None

    def _checkpoint(self) -> None:
        with contextlib.suppress(sqlite3.OperationalError):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _recount(self) -> None:
        (records,) = self._db.execute("SELECT coalesce(sum(size), 0) FROM records").fetchone()
        (batches,) = self._db.execute("SELECT coalesce(sum(bytes), 0) FROM batches").fetchone()
        self._bytes = records + batches

    def _bump(self, name: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def _transaction(self) -> Transaction:
        return Transaction(self._db)

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
