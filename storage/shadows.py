"""The shadow document store: one row per (thing, shadow name) holding its state, metadata, version and
deletion tombstone, plus the sync bookkeeping for shadows mirrored to the cloud, in SQLite (WAL, fsync
per commit, every write one transaction).

It knows nothing of MQTT or of AWS's rules; one thread owns a ShadowStore (sqlite3 connections are
not shared).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS shadows (
    thing TEXT NOT NULL,
    name TEXT NOT NULL,            -- '' for the classic (unnamed) shadow
    state TEXT NOT NULL,           -- JSON object: {"desired": ..., "reported": ...}, sections optional
    metadata TEXT NOT NULL,        -- JSON object mirroring state with {"timestamp": s} per leaf
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    deleted_at REAL,               -- set: a tombstone that keeps the version for re-creation
    PRIMARY KEY (thing, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sync_base (
    thing TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT,                    -- JSON: the state both sides last agreed on; NULL: none yet
    local_version INTEGER NOT NULL,
    cloud_version INTEGER NOT NULL,
    PRIMARY KEY (thing, name)
) WITHOUT ROWID;
"""


class ShadowStoreError(Exception):
    """The shadow file cannot be used; the message names the file and what to do."""


@dataclass
class StoredShadow:
    thing: str
    name: str  # '' for the classic shadow
    state: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    updated_at: float = 0.0
    deleted_at: float | None = None

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None


@dataclass(frozen=True)
class SyncBase:
    """What a synced shadow looked like when the local and the cloud copy last agreed."""

    thing: str
    name: str
    state: dict[str, Any] | None
    local_version: int
    cloud_version: int


class ShadowStore:
    def __init__(self, path: Path):
        self.path = path
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            # an SQLite file of some other program has tables of these names but not these columns
            db.execute("SELECT thing, name, state, metadata, version, updated_at, deleted_at FROM shadows LIMIT 0")
            db.execute("SELECT thing, name, state, local_version, cloud_version FROM sync_base LIMIT 0")
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            raise ShadowStoreError(
                f"{path}: cannot open the shadow store: {exc}; move the file aside to start with no shadows"
            ) from exc
        self._db = db
        self._depth = 0

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all; nested uses join the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._depth = 0

    # ---- documents ------------------------------------------------------------------------------

    def get(self, thing: str, name: str) -> StoredShadow | None:
        """The shadow's row, tombstone included (see `StoredShadow.deleted`); None if never written."""
        row = self._db.execute(
            "SELECT state, metadata, version, updated_at, deleted_at FROM shadows WHERE thing = ? AND name = ?",
            (thing, name),
        ).fetchone()
        if row is None:
            return None
        return StoredShadow(thing, name, json.loads(row[0]), json.loads(row[1]), row[2], row[3], row[4])

    def put(self, shadow: StoredShadow) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO shadows (thing, name, state, metadata, version, updated_at, deleted_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (thing, name) DO UPDATE SET state = excluded.state, "
                "metadata = excluded.metadata, version = excluded.version, updated_at = excluded.updated_at, "
                "deleted_at = excluded.deleted_at",
                (
                    shadow.thing,
                    shadow.name,
                    _dump(shadow.state),
                    _dump(shadow.metadata),
                    shadow.version,
                    shadow.updated_at,
                    shadow.deleted_at,
                ),
            )

    def names(self, thing: str) -> list[str]:
        """The live shadows of a thing ('' for the classic one), sorted."""
        rows = self._db.execute(
            "SELECT name FROM shadows WHERE thing = ? AND deleted_at IS NULL ORDER BY name", (thing,)
        )
        return [r[0] for r in rows]

    def purge_tombstones(self, deleted_before: float) -> int:
        """Forget deletions older than `deleted_before` (their versions restart); returns how many."""
        with self.transaction():
            cursor = self._db.execute(
                "DELETE FROM shadows WHERE deleted_at IS NOT NULL AND deleted_at < ?", (deleted_before,)
            )
        return cursor.rowcount

    # ---- sync bookkeeping -----------------------------------------------------------------------

    def sync_base(self, thing: str, name: str) -> SyncBase | None:
        row = self._db.execute(
            "SELECT state, local_version, cloud_version FROM sync_base WHERE thing = ? AND name = ?", (thing, name)
        ).fetchone()
        if row is None:
            return None
        return SyncBase(thing, name, json.loads(row[0]) if row[0] is not None else None, row[1], row[2])

    def put_sync_base(self, base: SyncBase) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO sync_base (thing, name, state, local_version, cloud_version) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (thing, name) DO UPDATE SET state = excluded.state, "
                "local_version = excluded.local_version, cloud_version = excluded.cloud_version",
                (
                    base.thing,
                    base.name,
                    _dump(base.state) if base.state is not None else None,
                    base.local_version,
                    base.cloud_version,
                ),
            )


def _dump(value: Any) -> str:
    # allow_nan=False: NaN and Infinity are not JSON, and a row holding them could never be answered
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
