"""The store-and-forward spool: cloud-bound messages kept on disk in SQLite (WAL, fsync per commit,
many messages per commit) until the cloud acknowledged them, under a byte cap with a full-spool
policy, per-prefix priorities and time-to-live, and a dead-letter table for what can never be sent.

It knows nothing of MQTT or of the cloud; one thread owns a Spool (sqlite3 connections are not shared).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

from storage.disk_reserve import DiskReserve
from storage.spool_file import (
    PAGE_CACHE_KIB,
    SCHEMA,
    WAL_SIZE_LIMIT,
    Transaction,
    is_disk_full,
    upgrade_message_ids,
)
from storage.spool_records import (
    DEAD_DROPPED,
    DEAD_LINK_DROPPED,
    DEAD_REFUSED,
    DEAD_TOO_LARGE,
    DROPPED_DISK_FULL,
    DROPPED_FULL,
    EXPIRED,
    MESSAGE_DEADLINE,
    PURGED,
    REJECTED_DISK_FULL,
    REJECTED_FULL,
    AppendResult,
    DeadLetter,
    Message,
    Policy,
    Rule,
    SpoolCorrupt,
    SpoolError,
    SpoolStats,
    SpoolUnwritable,
    Stored,
)

# what the rest of millgate imports from here (the records and the file layout live in their own modules)
__all__ = [
    "DEAD_DROPPED",
    "DEAD_LINK_DROPPED",
    "DEAD_REFUSED",
    "DEAD_TOO_LARGE",
    "DISK_CAP_FRACTION",
    "DROPPED_DISK_FULL",
    "DROPPED_FULL",
    "EXPIRED",
    "MESSAGE_DEADLINE",
    "PURGED",
    "REJECTED_DISK_FULL",
    "REJECTED_FULL",
    "AppendResult",
    "DeadLetter",
    "Message",
    "Policy",
    "Rule",
    "Spool",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolStats",
    "SpoolUnwritable",
    "Stored",
]

log = logging.getLogger(__name__)

# kept free next to the spool for the deletions a full disk needs room for (storage/disk_reserve.py)
DEFAULT_RESERVE_BYTES = 4 * 1024 * 1024
# on a full disk the spool keeps to this share of what it held when the disk filled: its file's pages
DISK_CAP_FRACTION = 0.98
# rows per transaction for the deletions and rule updates that can touch the whole spool
CHUNK_ROWS = 500
T = TypeVar("T")
_PER_ROW_OVERHEAD = 32  # what SQLite spends per row beyond topic, payload and properties, roughly
# a dead letter's bytes, counted as a message's are
_DEAD_SIZE = f"length(topic) + length(payload) + coalesce(length(properties), 0) + {_PER_ROW_OVERHEAD}"


class Spool:
    """One spool file. Every method is a transaction of its own; call them all from one thread."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 1_000_000_000,
        policy: Policy = "drop-oldest",
        rules: Sequence[Rule] | None = (),
        max_payload_bytes: int | None = None,
        dead_letter_max_bytes: int | None = None,
        durable: bool = True,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ):
        self.path = path
        self.max_bytes = max_bytes
        self.policy = policy
        # longest prefix first, so the most specific rule wins; None: keep the stored priorities (tools)
        self.rules = sorted(rules or (), key=lambda r: len(r.prefix), reverse=True)
        self.max_payload_bytes = max_payload_bytes
        self.dead_letter_max_bytes = dead_letter_max_bytes  # None: no cap (the operator's tools)
        self._db = self._open(durable)
        self._disk_cap: int | None = None  # bytes the file holds, while the disk is full
        self._reserve = DiskReserve(path.with_name(path.name + ".reserve"), reserve_bytes)
        self._reserve.take()
        # a checkpoint moves the WAL into the file, which grows by as much: with the WAL held well under
        # the reserve, the reserve is always enough to checkpoint on a full disk
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        self._db.execute(f"PRAGMA wal_autocheckpoint={max(reserve_bytes // 4 // page_size, 16)}")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        self._levels: set[int] = {0, *(r.priority for r in self.rules)}
        self._count = 0
        self._bytes = 0
        self._dead_bytes = 0
        self._data_version = -1
        if rules is not None:
            self._apply_rules_if_changed()
        self._levels |= {row[0] for row in self._db.execute("SELECT DISTINCT priority FROM messages")}
        self._refresh_totals(force=True)

    # ---- opening ----------------------------------------------------------------------------

    def _open(self, durable: bool) -> sqlite3.Connection:
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        except sqlite3.OperationalError as exc:
            raise SpoolUnwritable(
                f"spool {self.path}: cannot open: {exc}; check that the directory exists and is writable "
                "by the uplink's user"
            ) from None
        try:
            if existed:
                # reads only: a damaged file is reported before anything could write to it
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
                if verdict != "ok":
                    raise sqlite3.DatabaseError(verdict)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise SpoolCorrupt(
                f"spool {self.path} is damaged ({exc}); the uplink will not touch it. Move it aside "
                f"(mv {self.path} {self.path}.damaged), recover what you can with `sqlite3 {self.path}.damaged "
                "'.recover'`, then restart the uplink to begin a new spool"
            ) from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
            # FULL: the WAL is fsynced at every commit, so an acknowledged message survives power loss
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
            upgrade_message_ids(db)
            db.executescript(SCHEMA)
        except sqlite3.OperationalError as exc:
            db.close()
            raise SpoolUnwritable(
                f"spool {self.path}: cannot write: {exc}; check permissions and free space of {self.path.parent}"
            ) from None
        return db

    def close(self) -> None:
        self._db.close()

    # ---- rules ------------------------------------------------------------------------------

    def rule_for(self, topic: str) -> Rule | None:
        for rule in self.rules:
            if topic.startswith(rule.prefix):
                return rule
        return None

    def _apply_rules_if_changed(self) -> None:
        """Stored messages take the current rules, so one topic never has two priorities (its order).
        CHUNK_ROWS ids per transaction, so the WAL stays within the reserve on a big spool; the new
        rules are recorded last, so a run cut short is done again from the start at the next open."""
        fingerprint = json.dumps([[r.prefix, r.priority, r.ttl_s] for r in self.rules])
        row = self._db.execute("SELECT value FROM meta WHERE key='rules'").fetchone()
        if row is not None and row[0] == fingerprint:
            return
        for ids in self._id_chunks("1", ()):
            self._write(partial(self._apply_rules, ids[0], ids[-1]))
        self._write(lambda: self._db.execute("INSERT OR REPLACE INTO meta VALUES ('rules', ?)", (fingerprint,)))

    def _apply_rules(self, low: int, high: int) -> None:
        within = "id BETWEEN :low AND :high"
        bounds = {"low": low, "high": high}
        self._db.execute(
            f"UPDATE messages SET priority=0, expires_at=NULL WHERE {within} AND (priority != 0 OR expires_at)", bounds
        )
        for rule in reversed(self.rules):  # shortest first: longer prefixes overwrite
            self._db.execute(
                "UPDATE messages SET priority=:priority, "
                "expires_at=CASE WHEN :ttl IS NULL THEN NULL ELSE ts + :ttl END "
                f"WHERE {within} AND substr(topic, 1, :length) = :prefix",
                {
                    **bounds,
                    "priority": rule.priority,
                    "ttl": rule.ttl_s,
                    "length": len(rule.prefix),
                    "prefix": rule.prefix,
                },
            )
        self._db.execute(
            "UPDATE messages SET expires_at = json_extract(properties, :key) "
            f"WHERE {within} AND properties IS NOT NULL "
            "AND (expires_at IS NULL OR json_extract(properties, :key) < expires_at)",
            {**bounds, "key": f"$.{MESSAGE_DEADLINE}"},
        )

    # ---- writing ----------------------------------------------------------------------------

    def append(self, messages: Sequence[Message]) -> AppendResult:
        """Store `messages` in one transaction (one fsync); when this returns, they are durable.

        The result says how many were stored, how many older ones were dropped to make room
        (drop-oldest), how many new ones were refused (reject-new) and how many went to the dead
        letters for being over the payload limit. Nothing is silent: each is also counted.
        """
        self._refresh_totals()
        result = AppendResult()
        try:
            with self._transaction():
                self._append(messages, result)
        except sqlite3.OperationalError as exc:
            self._raise_unless_disk_full(exc)
            result = self._append_on_full_disk(messages)
        self._after_write()
        return result

    def _append(self, messages: Sequence[Message], result: AppendResult) -> None:
        now = time.time()
        rows = []
        incoming = 0
        cap, disk = self._cap()
        for message in messages:
            properties = json.dumps(message.properties) if message.properties else None
            if self.max_payload_bytes is not None and len(message.payload) > self.max_payload_bytes:
                self._bury(
                    message,
                    properties,
                    0,
                    f"payload of {len(message.payload)} bytes is over the cloud's limit of {self.max_payload_bytes}",
                    now,
                )
                self._bump(DEAD_TOO_LARGE)
                result.dead += 1
                continue
            size = len(message.topic) + len(message.payload) + len(properties or "") + _PER_ROW_OVERHEAD
            rule = self.rule_for(message.topic)
            priority = rule.priority if rule else 0
            expires = _earliest(
                message.ts + rule.ttl_s if rule and rule.ttl_s else None,
                (message.properties or {}).get(MESSAGE_DEADLINE),
            )
            if self._bytes + incoming + size > cap:
                if self.policy == "reject-new" or size > cap:
                    result.rejected += 1
                    continue
                freed = self._drop_oldest(
                    self._bytes + incoming + size - cap, counter=DROPPED_DISK_FULL if disk else DROPPED_FULL
                )
                result.dropped_oldest += freed
                if self._bytes + incoming + size > cap:
                    # what is left to drop is this very batch: refuse the newcomer instead
                    result.rejected += 1
                    continue
            rows.append((message.topic, message.payload, message.qos, message.ts, properties, priority, expires, size))
            incoming += size
            self._levels.add(priority)
        self._db.executemany(
            "INSERT INTO messages (topic, payload, qos, ts, properties, priority, expires_at, size) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        if result.rejected:
            self._bump(REJECTED_DISK_FULL if disk else REJECTED_FULL, result.rejected)
        if disk and (result.rejected or result.dropped_oldest):
            result.disk_full = True
        result.stored = len(rows)
        self._count += len(rows)
        self._bytes += incoming

    def _append_on_full_disk(self, messages: Sequence[Message]) -> AppendResult:
        """The disk is full: from now on the spool keeps to what its file already holds (_disk_cap).
        Room is made (_make_room), then the append again under that cap, by the policy."""
        self._make_room()
        result = AppendResult(disk_full=True)
        try:
            with self._transaction():
                self._append(messages, result)
            return result
        except sqlite3.OperationalError as exc:
            self._raise_unless_disk_full(exc)
        result = AppendResult(disk_full=True, rejected=len(messages))
        with contextlib.suppress(sqlite3.OperationalError), self._transaction():
            self._bump(REJECTED_DISK_FULL, len(messages))  # when not even a counter fits, the caller logs it
        return result

    def _raise_unless_disk_full(self, exc: sqlite3.OperationalError) -> None:
        if not is_disk_full(exc):
            raise SpoolUnwritable(f"spool {self.path}: write failed: {exc}") from None
        self._refresh_totals(force=True)  # what the failed transaction counted did not happen
        if self._disk_cap is None:
            self._disk_cap = int(self._bytes * DISK_CAP_FRACTION)
            log.warning("event=spool-disk-full path=%s keeping_to_bytes=%d", self.path, self._disk_cap)

    def _cap(self) -> tuple[int, bool]:
        """The byte cap in force, and whether it is the full disk's rather than max_bytes."""
        if self._disk_cap is not None and self._disk_cap < self.max_bytes:
            return self._disk_cap, True
        return self.max_bytes, False

    def _write(self, work: Callable[[], T]) -> T:
        """`work` in one transaction; on a full disk, once more after making room (_make_room). A
        second full-disk error goes to the caller as SpoolUnwritable."""
        try:
            with self._transaction():
                done = work()
        except sqlite3.OperationalError as exc:
            self._raise_unless_disk_full(exc)
            self._make_room()
            try:
                with self._transaction():
                    done = work()
            except sqlite3.OperationalError as again:
                raise SpoolUnwritable(f"spool {self.path}: write failed even after freeing room: {again}") from None
        self._after_write()
        return done

    def _make_room(self) -> None:
        """Give back the reserve and move the WAL into the file: the space a full disk still has."""
        self._reserve.give_back()
        self._checkpoint()

    def _after_write(self) -> None:
        """Without its reserve the spool keeps its WAL empty; once the filesystem has room for the
        reserve again (someone freed space), it takes it and may grow its file again."""
        if not self._reserve.held:
            self._checkpoint()
            if self._reserve.take() and self._disk_cap is not None:
                self._disk_cap = None
                log.info("event=spool-disk-room-again path=%s", self.path)

    def _checkpoint(self) -> None:
        with contextlib.suppress(sqlite3.OperationalError):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _drop_oldest(self, needed: int, counter: str = DROPPED_FULL) -> int:
        """Delete the oldest messages of the lowest priority first until `needed` bytes are free."""
        dropped = 0
        freed = 0
        for level in sorted(self._levels):
            while freed < needed:
                victims = self._db.execute(
                    "SELECT id, size FROM messages WHERE priority=? ORDER BY id LIMIT 256", (level,)
                ).fetchall()
                if not victims:
                    break
                for rowid, size in victims:
                    self._db.execute("DELETE FROM messages WHERE id=?", (rowid,))
                    freed += size
                    dropped += 1
                    if freed >= needed:
                        break
            if freed >= needed:
                break
        if dropped:
            self._bump(counter, dropped)
            self._count -= dropped
            self._bytes -= freed
        return dropped

    def delete(self, ids: Iterable[int]) -> int:
        """Forget messages the cloud acknowledged."""
        payload = json.dumps(list(ids))
        if payload == "[]":
            return 0
        sizes = self._write(
            lambda: self._db.execute(
                "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?)) RETURNING size", (payload,)
            ).fetchall()
        )
        self._count -= len(sizes)
        self._bytes -= sum(s for (s,) in sizes)
        return len(sizes)

    def refused(self, refusals: dict[int, str], dead_after: int, counter: str = DEAD_REFUSED) -> int:
        """Count a cloud refusal against each message; one refused `dead_after` times goes to the dead
        letters with the last reason, counted under `counter`. Returns how many were buried."""
        if not refusals:
            return 0
        self._refresh_totals()
        now = time.time()

        def count_and_bury() -> int:
            buried = 0
            for rowid, reason in refusals.items():
                row = self._db.execute(
                    "UPDATE messages SET tries = tries + 1 WHERE id=? "
                    "RETURNING topic, payload, qos, ts, properties, tries, size",
                    (rowid,),
                ).fetchone()
                if row is None or row[5] < dead_after:
                    continue
                topic, payload, qos, ts, properties, tries, size = row
                self._db.execute("DELETE FROM messages WHERE id=?", (rowid,))
                self._bury(Message(topic, payload, qos, ts), properties, tries, f"refused {tries} times: {reason}", now)
                self._count -= 1
                self._bytes -= size
                buried += 1
            if buried:
                self._bump(counter, buried)
            return buried

        return self._write(count_and_bury)

    def expire(self, now: float | None = None) -> int:
        """Delete messages past their time-to-live, counted, never sent."""
        now = time.time() if now is None else now
        return self._delete_counted("expires_at IS NOT NULL AND expires_at <= ?", (now,), EXPIRED)

    def purge(self, prefix: str) -> int:
        """Delete every waiting message whose topic starts with `prefix` (an operator's decision)."""
        return self._delete_counted("substr(topic, 1, ?) = ?", (len(prefix), prefix), PURGED)

    def purge_dead_letters(self, prefix: str = "") -> int:
        """Delete the dead letters whose topic starts with `prefix` (all by default): an operator's
        decision once they were exported or looked at."""
        deleted = self._write(
            lambda: self._db.execute(
                f"DELETE FROM dead_letters WHERE substr(topic, 1, ?) = ? RETURNING {_DEAD_SIZE}", (len(prefix), prefix)
            ).fetchall()
        )
        self._dead_bytes -= sum(size for (size,) in deleted)
        return len(deleted)

    def _delete_counted(self, condition: str, parameters: tuple[object, ...], counter: str) -> int:
        """Delete the messages matching `condition`, counted, CHUNK_ROWS per transaction: one
        transaction for all could outgrow the reserve on a full disk, and would hold the write lock
        (the other side waits at most 10 s) for as long as it takes on a slow card."""
        deleted = 0
        for ids in self._id_chunks(condition, parameters):
            chosen = json.dumps(ids)

            def delete(chosen: str = chosen) -> list[tuple[int]]:
                sizes = self._db.execute(
                    "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?)) RETURNING size", (chosen,)
                ).fetchall()
                if sizes:
                    self._bump(counter, len(sizes))
                return sizes

            sizes = self._write(delete)
            self._count -= len(sizes)
            self._bytes -= sum(size for (size,) in sizes)
            deleted += len(sizes)
        return deleted

    def _id_chunks(self, condition: str, parameters: tuple[object, ...]) -> Iterator[list[int]]:
        """The ids of the messages matching `condition`, in order, CHUNK_ROWS at a time: what the
        deletions and rule updates that can touch the whole spool do one transaction each."""
        after = 0
        while ids := [
            row[0]
            for row in self._db.execute(
                f"SELECT id FROM messages WHERE id > ? AND {condition} ORDER BY id LIMIT ?",
                (after, *parameters, CHUNK_ROWS),
            )
        ]:
            yield ids
            after = ids[-1]

    # ---- reading ----------------------------------------------------------------------------

    def next_batch(self, cursors: dict[int, int], limit: int, now: float | None = None) -> list[Stored]:
        """Up to `limit` messages after `cursors` (priority -> last id handed out), from the highest
        priority that has any; ids grow with arrival, so each topic comes out in order. Expired
        messages met on the way are deleted and counted instead. Advances `cursors`."""
        now = time.time() if now is None else now
        for level in sorted(self._levels, reverse=True):
            while True:
                rows = self._db.execute(
                    "SELECT id, topic, payload, qos, ts, properties, priority, tries, expires_at FROM messages "
                    "WHERE priority=? AND id>? ORDER BY id LIMIT ?",
                    (level, cursors.get(level, 0), limit),
                ).fetchall()
                if not rows:
                    break
                cursors[level] = rows[-1][0]
                if any(r[8] is not None and r[8] <= now for r in rows):
                    self.expire(now)
                live = [
                    Stored(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else None, r[6], r[7])
                    for r in rows
                    if r[8] is None or r[8] > now
                ]
                if live:
                    return live
        return []

    def stats(self, by_priority: bool = False) -> SpoolStats:
        """Depth, oldest message, dead letters and counters; `by_priority` adds a count per level
        (a scan of the index: for the operator's CLI, not for a heartbeat)."""
        self._refresh_totals()
        oldest = self._db.execute("SELECT ts FROM messages ORDER BY id LIMIT 1").fetchone()
        dead = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        counters = dict(self._db.execute("SELECT name, value FROM counters ORDER BY name").fetchall())
        levels = {
            level: self._db.execute("SELECT count(*) FROM messages WHERE priority=?", (level,)).fetchone()[0]
            for level in (sorted(self._levels, reverse=True) if by_priority else ())
        }
        return SpoolStats(
            messages=self._count,
            bytes=self._bytes,
            max_bytes=self.max_bytes,
            oldest_ts=oldest[0] if oldest else None,
            dead_letters=dead,
            counters=counters,
            by_priority={k: v for k, v in levels.items() if v},
        )

    def messages(self) -> Iterator[Stored]:
        """Every waiting message in drain order (for export)."""
        for level in sorted(self._levels, reverse=True):
            for r in self._db.execute(
                "SELECT id, topic, payload, qos, ts, properties, priority, tries FROM messages "
                "WHERE priority=? ORDER BY id",
                (level,),
            ):
                yield Stored(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else None, r[6], r[7])

    def dead_letters(self) -> Iterator[DeadLetter]:
        for r in self._db.execute(
            "SELECT id, topic, payload, qos, ts, tries, reason, dead_at FROM dead_letters ORDER BY id"
        ):
            yield DeadLetter(*r)

    @property
    def depth(self) -> tuple[int, int]:
        """(messages, bytes) waiting, from the running totals (no query)."""
        return self._count, self._bytes

    # ---- internals --------------------------------------------------------------------------

    def _transaction(self) -> Transaction:
        return Transaction(self._db)

    def _bump(self, name: str, by: int = 1) -> None:
        self._db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def _bury(self, message: Message, properties: str | None, tries: int, reason: str, now: float) -> None:
        """Keep `message` as a dead letter; past dead_letter_max_bytes the oldest ones go, counted (a
        device that keeps sending what the cloud refuses must not fill the disk with it)."""
        size = self._db.execute(
            "INSERT INTO dead_letters (topic, payload, qos, ts, properties, tries, reason, dead_at) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_DEAD_SIZE}",
            (message.topic, message.payload, message.qos, message.ts, properties, tries, reason, now),
        ).fetchone()[0]
        self._dead_bytes += size
        cap = self.dead_letter_max_bytes
        if cap is None or self._dead_bytes <= cap:
            return
        dropped = 0
        while self._dead_bytes > cap:
            oldest = self._db.execute(
                f"DELETE FROM dead_letters WHERE id = (SELECT min(id) FROM dead_letters) RETURNING {_DEAD_SIZE}"
            ).fetchone()
            if oldest is None:
                break
            self._dead_bytes -= oldest[0]
            dropped += 1
        self._bump(DEAD_DROPPED, dropped)
        log.warning("event=dead-letters-full dropped=%d max_bytes=%d", dropped, cap)

    def _refresh_totals(self, force: bool = False) -> None:
        """Recount after another connection (the operator's CLI) changed the file."""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if force or version != self._data_version:
            count, size = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM messages").fetchone()
            self._count, self._bytes = count, size
            self._dead_bytes = self._db.execute(f"SELECT coalesce(sum({_DEAD_SIZE}), 0) FROM dead_letters").fetchone()[
                0
            ]
            self._data_version = version


def _earliest(*deadlines: float | None) -> float | None:
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None
