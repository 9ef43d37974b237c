"""The spool's SQLite file: its tables, the in-place upgrade of an older file, the merge of another
file into it (FileMerge serves the bulk store's file too), the one transaction helper, the full-disk
test and the page cache size (the bulk store uses those three as well). No spool logic here.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

from storage.spool_records import SpoolUnwritable

# PRAGMA cache_size, per connection. SQLite's default cache (2 MiB) fills with every page a connection
# touches and is kept while it is open; the spool and the bulk store append and read in order, which
# 512 KiB serves as fast (bench_spool unchanged), and the reference uplink holds ~1.7 MB less.
PAGE_CACHE_KIB = 512
# PRAGMA journal_size_limit: after a big transaction (a mass expiry) the WAL file is cut back to this at
# the next checkpoint instead of keeping its largest size on disk
WAL_SIZE_LIMIT = 4 * 1024 * 1024
# the one-time upgrade of a spool's ids moves this many bytes of messages per transaction
UPGRADE_CHUNK_BYTES = 512 * 1024
INDEX_BYTES_PER_ROW = 8  # what the new table's indexes take per message, in the WAL and then the file
# where the rows wait while that upgrade moves them (a run cut short leaves it, and the next open goes on)
OLD_MESSAGES = "messages_before_autoincrement"

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


# how far a merge of another file got, per table: committed with each chunk of rows it copies
MERGE_PROGRESS = "merge_progress"
MERGE_CHUNK_ROWS = 500
# a row as read from the other file (column -> value, with its id) -> the row to store here (with the id
# it gets here), or None to leave it out
RowMapper = Callable[[sqlite3.Connection, dict[str, object]], dict[str, object] | None]


class FileMerge:
    """Appends another file's rows (a file of the same store, as an older millgate left it) to this
    file's tables: in id order, under new ids after the ones here, MERGE_CHUNK_ROWS per transaction.
    How far each table got is committed with its rows, so a merge cut short (a crash, a full disk) goes
    on where it stopped and copies no row twice. The caller keeps the other file where nothing else
    writes it until the merge is done, and calls `forget` before it starts one with another file."""

    def __init__(self, target: Path, source: Path, schema: str):
        self.db = sqlite3.connect(target, isolation_level=None, timeout=10)
        try:
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            self.db.executescript(
                schema + f"CREATE TABLE IF NOT EXISTS {MERGE_PROGRESS} "
                "(name TEXT PRIMARY KEY, last_id INTEGER NOT NULL, copied INTEGER NOT NULL);"
            )
            self.db.execute("ATTACH DATABASE ? AS source", (str(source),))
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    @staticmethod
    def forget(target: Path) -> None:
        """Drop what `target` remembers of an earlier merge (before a merge with a new file)."""
        if not target.exists():
            return
        db = sqlite3.connect(target, isolation_level=None, timeout=10)
        try:
            db.execute(f"DROP TABLE IF EXISTS {MERGE_PROGRESS}")
        finally:
            db.close()

    def copy_rows(self, table: str, mapper: RowMapper | None = None) -> int:
        """The other file's rows of `table` that were not copied yet, appended here, with the columns
        both files have; how many this merge copied in all. A table the other file lacks: none."""
        if not _has_table(self.db, table, "source"):
            return 0
        mine = _columns(self.db, "main", table)
        columns = [c for c in _columns(self.db, "source", table) if c in mine and c != "id"]
        listed = ", ".join(f'"{c}"' for c in columns)
        while True:
            last_id, copied = self._progress(table)
            ids = [
                row[0]
                for row in self.db.execute(
                    f'SELECT id FROM source."{table}" WHERE id > ? ORDER BY id LIMIT ?', (last_id, MERGE_CHUNK_ROWS)
                )
            ]
            if not ids:
                return copied
            chunk = (ids[0], ids[-1])
            with Transaction(self.db):
                if mapper is None:
                    self.db.execute(
                        f'INSERT INTO main."{table}" ({listed}) SELECT {listed} FROM source."{table}" '
                        "WHERE id BETWEEN ? AND ? ORDER BY id",
                        chunk,
                    )
                    copied += len(ids)
                else:
                    copied += self._copy_mapped(table, columns, mapper, chunk)
                self._record(table, ids[-1], copied)
            # the WAL emptied after each chunk: a merge needs the disk for the rows, not for a WAL of them
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def add_counters(self, also: str = "") -> None:
        """The other file's counters added to these, once; `also`: SQL run in the same transaction."""
        if self._progress("counters")[0]:
            return
        with Transaction(self.db):
            if _has_table(self.db, "counters", "source"):
                # WHERE true: without it SQLite reads ON CONFLICT as part of the SELECT's join
                self.db.execute(
                    "INSERT INTO main.counters (name, value) SELECT name, value FROM source.counters WHERE true "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
                )
            if also:
                self.db.execute(also)
            self._record("counters", 1, 0)

    def _copy_mapped(self, table: str, columns: list[str], mapper: RowMapper, chunk: tuple[int, int]) -> int:
        listed = ", ".join(f'"{c}"' for c in ["id", *columns])
        copied = 0
        for values in self.db.execute(
            f'SELECT {listed} FROM source."{table}" WHERE id BETWEEN ? AND ? ORDER BY id', chunk
        ).fetchall():
            row = mapper(self.db, dict(zip(["id", *columns], values, strict=True)))
            if row is not None:
                names = ", ".join(f'"{c}"' for c in row)
                marks = ", ".join("?" for _ in row)
                self.db.execute(f'INSERT INTO main."{table}" ({names}) VALUES ({marks})', tuple(row.values()))
                copied += 1
        return copied

    def _progress(self, name: str) -> tuple[int, int]:
        row = self.db.execute(f"SELECT last_id, copied FROM {MERGE_PROGRESS} WHERE name=?", (name,)).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    def _record(self, name: str, last_id: int, copied: int) -> None:
        self.db.execute(f"INSERT OR REPLACE INTO {MERGE_PROGRESS} VALUES (?, ?, ?)", (name, last_id, copied))


def merge_spool(target: Path, source: Path) -> tuple[int, int]:
    """Another spool file's waiting messages and dead letters appended to `target`'s, its counters
    added; (messages, dead letters) copied. The stored rules are forgotten, so the next open gives the
    merged messages the current rules' priorities and TTLs as well."""
    merge = FileMerge(target, source, SCHEMA)
    try:
        messages = merge.copy_rows("messages")
        dead = merge.copy_rows("dead_letters")
        merge.add_counters(also="DELETE FROM meta WHERE key='rules'")
    finally:
        merge.close()
    return messages, dead


def upgrade_message_ids(db: sqlite3.Connection) -> None:
    """A spool made before ids were AUTOINCREMENT gets its table rebuilt in place: the rows move to the
    new table with their ids, UPGRADE_CHUNK_BYTES per transaction, each chunk deleted from the old table
    as it lands and the WAL emptied after it, so the file never holds the table twice. A run cut short
    goes on at the next open. Without the free space that needs: SpoolUnwritable, nothing changed."""
    if not _has_table(db, OLD_MESSAGES):
        row = db.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='messages'").fetchone()
        if row is None or "AUTOINCREMENT" in row[0].upper():
            return
    _check_room_to_upgrade(db)
    db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    (secure_delete,) = db.execute("PRAGMA secure_delete").fetchone()
    # the moved rows' pages are not zeroed on the way (that writes every freed page to the WAL again)
    db.execute("PRAGMA secure_delete=FAST")
    try:
        if not _has_table(db, OLD_MESSAGES):
            with Transaction(db):
                _set_old_table_aside(db)
        while (last := _last_id_of_next_chunk(db)) is not None:
            with Transaction(db):
                db.execute(f"INSERT INTO messages SELECT * FROM {OLD_MESSAGES} WHERE id <= ? ORDER BY id", (last,))
                db.execute(f"DELETE FROM {OLD_MESSAGES} WHERE id <= ?", (last,))
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        with Transaction(db):
            db.execute(f"DROP TABLE {OLD_MESSAGES}")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        db.execute(f"PRAGMA secure_delete={secure_delete}")


def _room_to_upgrade(db: sqlite3.Connection) -> int:
    """Bytes of free disk the upgrade of a spool's ids needs, as measured on tmpfs with 0.3 to 27 MB
    spools: a chunk's pages three times over (in the WAL inserted and deleted, and in the file until the
    freed pages are reused), for at most a few chunks; the new table's indexes; the WAL index."""
    page_size, pages, free_pages = (
        db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_size", "page_count", "freelist_count")
    )
    tables = [OLD_MESSAGES, "messages"] if _has_table(db, OLD_MESSAGES) else ["messages"]
    rows = sum(db.execute(f"SELECT coalesce(max(id) - min(id) + 1, 0) FROM {t}").fetchone()[0] for t in tables)
    used = (pages - free_pages) * page_size
    return min(3 * used, 4 * UPGRADE_CHUNK_BYTES) + INDEX_BYTES_PER_ROW * rows + 64 * 1024


def _check_room_to_upgrade(db: sqlite3.Connection) -> None:
    path = _file_of(db)
    needed = _room_to_upgrade(db)
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise SpoolUnwritable(
            f"spool {path}: a one-time upgrade of its message ids (a spool made by an older millgate) needs "
            f"{_mib(needed)} free on the disk of {path.parent}, which has {_mib(free)}; free some space there "
            "and restart the uplink (the messages are kept)"
        )


def _set_old_table_aside(db: sqlite3.Connection) -> None:
    db.execute(f"ALTER TABLE messages RENAME TO {OLD_MESSAGES}")
    # its indexes would be kept up to date at every chunk's deletion for nothing; SCHEMA makes the new ones
    for (index,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=? AND sql IS NOT NULL", (OLD_MESSAGES,)
    ).fetchall():
        db.execute(f'DROP INDEX "{index}"')
    db.execute(MESSAGES_TABLE)
    # new ids start above every old one, moved yet or not
    db.execute(f"INSERT INTO sqlite_sequence (name, seq) SELECT 'messages', coalesce(max(id), 0) FROM {OLD_MESSAGES}")


def _last_id_of_next_chunk(db: sqlite3.Connection) -> int | None:
    """The last id of the next rows to move: UPGRADE_CHUNK_BYTES of them, at least one row."""
    last = None
    total = 0
    rows = db.execute(f"SELECT id, size FROM {OLD_MESSAGES} ORDER BY id")
    try:
        for rowid, size in rows:
            if last is not None and total + size > UPGRADE_CHUNK_BYTES:
                break
            last = rowid
            total += size
    finally:
        rows.close()
    return last


def _file_of(db: sqlite3.Connection) -> Path:
    for _seq, name, file in db.execute("PRAGMA database_list"):
        if name == "main":
            return Path(file)
    raise sqlite3.OperationalError("no main database")


def _has_table(db: sqlite3.Connection, name: str, schema: str = "main") -> bool:
    found = db.execute(f"SELECT 1 FROM {schema}.sqlite_master WHERE type='table' AND name=?", (name,)).fetchone()
    return found is not None


def _columns(db: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [row[1] for row in db.execute(f'PRAGMA {schema}.table_info("{table}")')]


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MiB"
