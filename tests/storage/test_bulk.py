"""The bulk store on its own: its byte cap under each policy, a really full filesystem (a real 2 MB
tmpfs) and an unusable place, each an answer the uplink can act on rather than a raw sqlite3 or OS
error (issue 5: "disk full: new messages follow the full-spool policy and it says so")."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
from pathlib import Path

import pytest

from storage.bulk import DROPPED_FULL, REJECTED_FULL, BulkRecord, BulkStore
from storage.spool import SpoolUnwritable


def records(start: int, count: int, size: int = 1000) -> list[BulkRecord]:
    """Incompressible payloads, so batch files take as much room as the records did."""
    return [
        BulkRecord("plant/vib", str(i).encode() + b":" + os.urandom(size), float(i))
        for i in range(start, start + count)
    ]


def kept_numbers(store: BulkStore) -> list[int]:
    store.cut(1, 0, force=True)
    numbers = []
    for batch in store.pending():
        for line in gzip.decompress(batch.file.read_bytes()).splitlines():
            record = json.loads(line)
            numbers.append(int(record["ts"]))
    return numbers


def test_drop_oldest_keeps_records_and_batches_under_the_cap_and_counts(tmp_path: Path) -> None:
    store = BulkStore(tmp_path / "bulk.db", tmp_path / "bulk", max_bytes=50_000, policy="drop-oldest")
    for chunk in range(10):
        result = store.add(records(chunk * 10, 10))
        assert result.stored == 10
        store.cut(15_000, 3600)
    assert store.bytes <= 50_000
    dropped = store.counters()[DROPPED_FULL]
    kept = kept_numbers(store)
    assert dropped + len(kept) == 100
    assert kept == list(range(100 - len(kept), 100)), "the newest are kept, in order"
    assert all(batch.file.exists() for batch in store.pending())
    assert len(list((tmp_path / "bulk").glob("batch-*"))) == len(store.pending()), "dropped batch files removed"


def test_reject_new_keeps_the_oldest_and_counts_the_refused(tmp_path: Path) -> None:
    store = BulkStore(tmp_path / "bulk.db", tmp_path / "bulk", max_bytes=50_000, policy="reject-new")
    rejected = 0
    for chunk in range(10):
        rejected += store.add(records(chunk * 10, 10)).rejected
        store.cut(15_000, 3600)
    assert rejected > 0 and store.counters()[REJECTED_FULL] == rejected
    assert kept_numbers(store) == list(range(100 - rejected))


@pytest.mark.parametrize("policy", ["drop-oldest", "reject-new"])
def test_a_really_full_filesystem_follows_the_policy_instead_of_raising(small_filesystem: Path, policy: str) -> None:
    store = BulkStore(small_filesystem / "bulk.db", small_filesystem / "bulk", policy=policy, reserve_bytes=256 * 1024)
    results = []
    blocked = []
    for chunk in range(120):  # 4.8 MB of records and batches into 2 MB
        results.append(store.add(records(chunk * 10, 10, size=4000)))
        store.cut(64_000, 3600)
        blocked.append(store.cut_blocked)
    assert any(r.disk_full for r in results)
    if policy == "drop-oldest":
        assert results[-1].stored == 10, "room made by dropping the oldest"
    else:
        assert results[-1].rejected == 10, "newcomers refused, the oldest kept"
    # S3 is reachable again: every batch is uploaded and forgotten, which frees the disk
    for batch in store.pending():
        store.done(batch)
    store.cut(1, 0, force=True)
    for batch in store.pending():
        store.done(batch)
    assert store.add(records(5000, 10, size=4000)).stored == 10, "room again after the uploads"
    store.close()
    with sqlite3.connect(small_filesystem / "bulk.db") as check:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_an_unusable_batch_directory_is_a_spool_error_naming_the_place(tmp_path: Path) -> None:
    store = BulkStore(tmp_path / "bulk.db", tmp_path / "bulk")
    store.add(records(0, 5))
    (tmp_path / "bulk").rmdir()
    (tmp_path / "bulk").write_text("not a directory")
    with pytest.raises(SpoolUnwritable, match=str(tmp_path / "bulk")):
        store.cut(1, 0, force=True)
    assert store.waiting()[0] == 5, "the records are still there"
    with pytest.raises(SpoolUnwritable, match=r"bulk\.db"):
        BulkStore(tmp_path / "bulk.db", tmp_path / "bulk")


def test_each_batch_keeps_its_own_records_while_earlier_ones_wait_for_their_window(tmp_path: Path) -> None:
    store = BulkStore(tmp_path / "bulk.db", tmp_path / "bulk")
    for day in range(3):  # each cut empties the records table, whose ids then start again at 1
        store.add(records(day * 10, 10))
        store.cut(1_000_000, 0, force=True)
    contents = [
        [json.loads(line)["ts"] for line in gzip.decompress(b.file.read_bytes()).splitlines()] for b in store.pending()
    ]
    assert contents == [[float(i) for i in range(d * 10, d * 10 + 10)] for d in range(3)]


def test_a_batch_dropped_while_it_uploads_is_not_given_back_twice(tmp_path: Path) -> None:
    # the uploader holds a batch while the store, at its cap, drops it to make room; its upload then
    # succeeds and done() gave its bytes back a second time: the count went negative and the cap no
    # longer held (48,622 bytes under a 20,000 cap once the cloud was away)
    store = BulkStore(tmp_path / "bulk.db", tmp_path / "bulk", max_bytes=20_000, policy="drop-oldest")

    def real_bytes() -> int:
        waiting = store._db.execute("SELECT coalesce(sum(size), 0) FROM records").fetchone()[0]
        return int(waiting + store._db.execute("SELECT coalesce(sum(bytes), 0) FROM batches").fetchone()[0])

    for start in range(0, 150, 30):
        store.add(records(start, 30, size=500))
        store.cut(4000, 3600, force=True)
        uploading = store.pending()  # taken by the uploader
        assert store.add(records(1000 + start, 30, size=500)).dropped_oldest > 0  # meanwhile, at the cap
        for batch in uploading:
            store.done(batch)
        assert store.bytes == real_bytes()
    for start in range(2000, 2300, 30):  # the cloud away: nothing is done() any more
        store.add(records(start, 30, size=500))
        store.cut(4000, 3600, force=True)
    assert store.bytes == real_bytes() <= 20_000
