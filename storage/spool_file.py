"""The spool's SQLite file: its tables, the in-place upgrade of an older file, the one transaction
helper, the full-disk test and the page cache size (the bulk store uses those three as well). No spool
logic here.
"""

from __future__ import annotations

import errno
import sqlite3

# PRAGMA cache_size, per connection. SQLite's default cache (2 MiB) fills with every page a connection
# touches and is kept while it is open; the spool and the bulk store append and read in order, which
# 512 KiB serves as fast (bench_spool unchanged), and the reference uplink holds ~1.7 MB less.
PAGE_CACHE_KIB = 512
# PRAGMA journal_size_limit: after a big transaction (a mass expiry) the WAL file is cut back to this at
# the next checkpoint instead of keeping its largest size on disk
WAL_SIZE_LIMIT = 4 * 1024 * 1024

# AUTOINCREMENT: ids must never be reused. The drain hands messages out by "id greater than the last one
# sent"; a plain INTEGER PRIMARY KEY restarts at max(id)+1 once the tail is deleted, and a new message
# would land behind the drain's cursor and wait there until the next reconnect.
MESSAGES_TABLE = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    ts REAL NOT NULL,
    properties TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    expires_at REAL,
    tries INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL
);
"""
SCHEMA = (
    MESSAGES_TABLE
    + """
CREATE INDEX IF NOT EXISTS messages_by_priority ON messages (priority, id);
CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    ts REAL NOT NULL,
    properties TEXT,
    tries INTEGER NOT NULL,
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
)


def is_disk_full(exc: BaseException) -> bool:
    """An SQLite write or a file write that failed for want of space (SQLITE_FULL, ENOSPC, EDQUOT)."""
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (the bulk store uses it too)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if kind is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error:
                # on SQLITE_FULL (and I/O errors) SQLite may have rolled the transaction back itself:
                # a second ROLLBACK would fail and hide the disk-full error the caller handles
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")


def upgrade_message_ids(db: sqlite3.Connection) -> None:
    """A spool made before ids were AUTOINCREMENT gets its table rebuilt in place, in one transaction."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='messages'").fetchone()
    if row is None or "AUTOINCREMENT" in row[0].upper():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("ALTER TABLE messages RENAME TO messages_before_autoincrement")
        db.execute(MESSAGES_TABLE)
        db.execute("INSERT INTO messages SELECT * FROM messages_before_autoincrement")
        db.execute("DROP TABLE messages_before_autoincrement")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
