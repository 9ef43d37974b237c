"""storage/shadows.py: documents, tombstones and sync bases survive reopening; a failed transaction
leaves nothing half-written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from storage.shadows import ShadowStore, ShadowStoreError, StoredShadow, SyncBase


def test_document_round_trips_across_reopen(tmp_path: Path) -> None:
    store = ShadowStore(tmp_path / "shadows.db")
    shadow = StoredShadow(
        "press-01", "", {"reported": {"t": 1.5, "s": "é"}}, {"reported": {"t": {"timestamp": 1}}}, 3, 10.0
    )
    store.put(shadow)
    store.put(StoredShadow("press-01", "config", {"desired": {"m": [1, 2]}}, {}, 1, 11.0))
    store.close()
    reopened = ShadowStore(tmp_path / "shadows.db")
    assert reopened.get("press-01", "") == shadow
    assert reopened.names("press-01") == ["", "config"]
    assert reopened.get("press-01", "nope") is None


def test_failed_transaction_writes_nothing(tmp_path: Path) -> None:
    store = ShadowStore(tmp_path / "shadows.db")
    store.put(StoredShadow("t", "", {"desired": {"a": 1}}, {}, 1, 1.0))
    with pytest.raises(RuntimeError), store.transaction():
        store.put(StoredShadow("t", "", {"desired": {"a": 2}}, {}, 2, 2.0))
        store.put_sync_base(SyncBase("t", "", {"desired": {"a": 2}}, 2, 2))
        raise RuntimeError("crash between two writes")
    assert store.get("t", "") == StoredShadow("t", "", {"desired": {"a": 1}}, {}, 1, 1.0)
    assert store.sync_base("t", "") is None


def test_tombstone_keeps_the_version_until_purged(tmp_path: Path) -> None:
    store = ShadowStore(tmp_path / "shadows.db")
    store.put(StoredShadow("t", "", {}, {}, 7, 100.0, deleted_at=100.0))
    row = store.get("t", "")
    assert row is not None and row.deleted and row.version == 7
    assert store.names("t") == []
    assert store.purge_tombstones(deleted_before=50.0) == 0
    assert store.purge_tombstones(deleted_before=101.0) == 1
    assert store.get("t", "") is None


def test_sync_base_round_trips(tmp_path: Path) -> None:
    store = ShadowStore(tmp_path / "shadows.db")
    store.put_sync_base(SyncBase("t", "n", None, 0, 4))
    store.put_sync_base(SyncBase("t", "", {"reported": {"a": 1}}, 2, 5))
    assert store.sync_base("t", "n") == SyncBase("t", "n", None, 0, 4)
    assert store.sync_base("t", "") == SyncBase("t", "", {"reported": {"a": 1}}, 2, 5)


def test_unusable_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "shadows.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ShadowStoreError, match="move the file aside"):
        ShadowStore(path)


def test_another_programs_sqlite_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "shadows.db"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE shadows (id INTEGER PRIMARY KEY, body BLOB)")
    other.commit()
    other.close()
    with pytest.raises(ShadowStoreError, match=f"{path}: cannot open the shadow store: .*move the file aside"):
        ShadowStore(path)
