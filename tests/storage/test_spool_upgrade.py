"""The one-time upgrade of a spool made before its ids were AUTOINCREMENT (storage/spool_file.py
upgrade_message_ids), on a real old-schema file: done in chunks on a disk without room for a second
copy of the table, refused with a clear error (nothing changed) on one without room even for that,
and finished at the next open when it was killed at any step.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.spool import Message, Spool, SpoolUnwritable
from storage.spool_file import OLD_MESSAGES, SCHEMA
from tests.storage.crash_points import run_killed_at
from tests.storage.small_disks import small_disk


def old_spool(path: Path, count: int, payload_bytes: int = 1000) -> list[bytes]:
    """A spool file with the tables millgate made before ids were AUTOINCREMENT, in WAL mode and
    compact (vacuumed); the payloads of its messages in order."""
    payloads = [f"{i}:".encode() + os.urandom(payload_bytes) for i in range(count)]
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA.replace("AUTOINCREMENT", ""))
    db.executemany(
        "INSERT INTO messages (topic, payload, qos, ts, size) VALUES ('plant/t', ?, 1, 0, ?)",
        [(p, len(p) + 39) for p in payloads],
    )
    db.execute("VACUUM")
    db.close()
    assert "AUTOINCREMENT" not in schema_of(path) and "sqlite_sequence" not in schema_of(path)
    return payloads


def schema_of(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return " ".join(row[0] for row in db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))
    finally:
        db.close()


def waiting(spool: Spool) -> list[bytes]:
    return [m.payload for m in spool.messages()]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "small", "10m") as mount:
        yield mount


def test_an_old_spool_is_upgraded_on_a_disk_without_room_for_a_second_copy(tmp_path: Path, disk: Path) -> None:
    payloads = old_spool(tmp_path / "spool.db", 5000)
    shutil.copyfile(tmp_path / "spool.db", disk / "spool.db")
    size = (disk / "spool.db").stat().st_size
    assert shutil.disk_usage(disk).free < size, "a copy of the table in one transaction cannot fit"

    spool = Spool(disk / "spool.db", reserve_bytes=0)

    assert waiting(spool) == payloads
    assert "AUTOINCREMENT" in schema_of(disk / "spool.db") and OLD_MESSAGES not in schema_of(disk / "spool.db")
    ids = [m.id for m in spool.messages()]
    spool.append([Message("plant/t", b"after")])
    assert max(m.id for m in spool.messages()) > max(ids)
    spool.close()
    assert (disk / "spool.db").stat().st_size < size * 1.2, "the file does not keep the table twice"


def test_an_old_spool_without_room_to_upgrade_says_so_and_is_left_as_it_was(tmp_path: Path, disk: Path) -> None:
    payloads = old_spool(tmp_path / "spool.db", 5000)
    shutil.copyfile(tmp_path / "spool.db", disk / "spool.db")
    before = schema_of(disk / "spool.db")
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 500_000))

    with pytest.raises(SpoolUnwritable) as refused:
        Spool(disk / "spool.db", reserve_bytes=0)

    message = str(refused.value)
    assert "one-time upgrade" in message and f"free on the disk of {disk}" in message and "MiB" in message
    assert schema_of(disk / "spool.db") == before
    filler.unlink()
    spool = Spool(disk / "spool.db", reserve_bytes=0)
    assert waiting(spool) == payloads
    spool.close()


def test_an_upgrade_killed_at_any_step_goes_on_at_the_next_open(tmp_path: Path) -> None:
    payloads = old_spool(tmp_path / "template.db", 1500)  # three chunks
    step = 0
    while True:
        step += 1
        run = tmp_path / f"run-{step}"
        run.mkdir()
        shutil.copyfile(tmp_path / "template.db", run / "spool.db")
        finished = run_killed_at(lambda run=run: Spool(run / "spool.db").close(), step)
        spool = Spool(run / "spool.db")
        assert waiting(spool) == payloads, step
        ids = [m.id for m in spool.messages()]
        assert ids == sorted(set(ids))
        spool.append([Message("plant/t", b"after")])
        assert list(spool.messages())[-1].id > max(ids)
        spool.close()
        assert OLD_MESSAGES not in schema_of(run / "spool.db")
        shutil.rmtree(run)
        if finished:
            break
    assert step > 3
