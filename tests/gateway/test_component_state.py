"""State from millgate 0.1's places moved into the components' directories (move_legacy_state) after
an upgrade, a rollback and an upgrade again: a spool or bulk store in both places merged into the new
one, a move or merge cut short finished at the next start, and the older of two offsets files dropped.
Real SQLite spools and bulk stores throughout; crashes are real kills of a forked child.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.component_state import move_legacy_state
from gateway.paths import GatewayPaths
from storage.bulk import BulkRecord, BulkStore
from storage.spool import DEAD_TOO_LARGE, Message, Rule, Spool
from storage.spool_file import MERGE_CHUNK_ROWS
from tests.storage.crash_points import run_killed_at
from tests.storage.small_disks import small_disk

UPLINK_UID = 60123
OLD_MESSAGES = MERGE_CHUNK_ROWS * 2 + 100  # three chunks


def state_paths(root: Path) -> GatewayPaths:
    paths = GatewayPaths.resolve(root / "etc", root / "s", None)
    paths.state_dir.mkdir(parents=True)
    return paths


def spool_left_by_a_crash(path: Path, messages: list[Message], scratch: Path | None = None, **options: object) -> None:
    """A spool as a power cut leaves it while the uplink runs: its last commits only in its WAL."""
    running = (scratch or path.parent) / "running"
    running.mkdir()
    spool = Spool(running / path.name, **options)  # type: ignore[arg-type]
    spool.append(messages)
    assert (running / (path.name + "-wal")).stat().st_size > 0
    for suffix in ("", "-wal"):
        shutil.copyfile(running / (path.name + suffix), path.with_name(path.name + suffix))
    spool.close()
    shutil.rmtree(running)


def waiting(path: Path, rules: list[Rule] | None = None) -> list[bytes]:
    spool = Spool(path, rules=rules)
    try:
        return [m.payload for m in spool.messages()]
    finally:
        spool.close()


def leftovers(paths: GatewayPaths) -> list[str]:
    """What is left of the uplink's files in the state dir itself, and of a merge."""
    return sorted(p.name for p in paths.state_dir.iterdir() if p.name.startswith(("spool.db", "bulk")))


def hand_to_uplink(paths: GatewayPaths) -> None:
    for directory, names, files in os.walk(paths.uplink_dir):
        for name in [".", *names, *files]:
            os.chown(os.path.join(directory, name), UPLINK_UID, UPLINK_UID)


def bulk_state(store: BulkStore) -> tuple[list[list[bytes]], int]:
    """(each pending batch's payloads, from its file; records still waiting)."""
    batches = [
        [json.loads(line)["payload"].encode() for line in gzip.decompress(b.file.read_bytes()).splitlines()]
        for b in store.pending()
    ]
    return batches, store.waiting()[0]


def both_places(paths: GatewayPaths) -> None:
    """A new spool and bulk store in uplink/ (the upgrade ran), and old ones in the state dir (a rollback
    to 0.1 ran after it, spooled and crashed)."""
    paths.uplink_dir.mkdir()
    rules = [Rule("alarms/", 9)]
    spool = Spool(paths.spool_db, rules=rules)
    spool.append([Message("plant/a", b"new-1"), Message("plant/a", b"new-2")])
    spool.close()
    old = [Message("plant/a", f"old-{i}".encode()) for i in range(OLD_MESSAGES)]
    old += [Message("alarms/a", b"old-alarm"), Message("plant/a", b"x" * 100)]  # the last one: a dead letter
    spool_left_by_a_crash(paths.state_dir / "spool.db", old, max_payload_bytes=50)

    new_bulk = BulkStore(paths.bulk_db, paths.bulk_dir)
    new_bulk.add([BulkRecord("b", b"new-batch", 1.0)])
    new_bulk.cut(1, 0, force=True)
    new_bulk.add([BulkRecord("b", b"new-waiting", 2.0)])
    new_bulk.close()
    old_bulk = BulkStore(paths.state_dir / "bulk.db", paths.state_dir / "bulk")
    for i in range(2):
        old_bulk.add([BulkRecord("b", f"old-batch-{i}".encode(), 3.0 + i)])
        old_bulk.cut(1, 0, force=True)
    old_bulk.add([BulkRecord("b", b"old-waiting", 9.0)])
    old_bulk.close()
    if os.geteuid() == 0:
        hand_to_uplink(paths)


def check_merged(paths: GatewayPaths, progress_forgotten: bool = True) -> None:
    assert leftovers(paths) == []
    merged = waiting(paths.spool_db, [Rule("alarms/", 9)])
    # the old alarm takes the rules' priority like every other; the rest in arrival order, each once
    assert merged == [b"old-alarm", b"new-1", b"new-2", *(f"old-{i}".encode() for i in range(OLD_MESSAGES))]
    spool = Spool(paths.spool_db)
    assert [d.payload for d in spool.dead_letters()] == [b"x" * 100]
    assert spool.stats().counters.get(DEAD_TOO_LARGE) == 1
    spool.close()
    if progress_forgotten:  # a kill after the merge, before this: dropped before the next merge starts
        tables = sqlite3.connect(paths.spool_db).execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        assert ("merge_progress",) not in tables

    store = BulkStore(paths.bulk_db, paths.bulk_dir)
    batches, records = bulk_state(store)
    assert batches == [[b"new-batch"], [b"old-batch-0"], [b"old-batch-1"]]
    assert records == 2
    store.cut(1, 0, force=True)
    assert bulk_state(store)[0][3:] == [[b"new-waiting"], [b"old-waiting"]]
    assert sorted(p.name for p in paths.bulk_dir.iterdir()) == sorted(b.file.name for b in store.pending())
    store.close()


def test_a_spool_and_bulk_store_in_both_places_are_merged_into_the_new_ones(tmp_path: Path) -> None:
    paths = state_paths(tmp_path)
    both_places(paths)

    move_legacy_state(paths)

    if os.geteuid() == 0:
        for directory, names, files in os.walk(paths.uplink_dir):
            for name in [*names, *files]:
                assert os.lstat(os.path.join(directory, name)).st_uid == UPLINK_UID, name
    check_merged(paths)


def test_a_merge_killed_at_any_step_is_finished_by_the_next_start_without_loss_or_double(tmp_path: Path) -> None:
    template = state_paths(tmp_path / "template")
    both_places(template)
    killed_mid_merge = 0
    step = 0
    while True:
        step += 1
        root = tmp_path / f"run-{step}"
        shutil.copytree(tmp_path / "template", root, symlinks=True)
        paths = GatewayPaths.resolve(root / "etc", root / "s", None)
        finished = run_killed_at(lambda paths=paths: move_legacy_state(paths), step)
        killed_mid_merge += any(".merging" in name for name in leftovers(paths))
        if not finished:
            move_legacy_state(paths)  # the next start
        check_merged(paths, progress_forgotten=False)
        shutil.rmtree(root)
        if finished:
            break
    assert step > 3 * 3 and killed_mid_merge > 3, (step, killed_mid_merge)


def test_a_move_killed_at_any_step_is_finished_by_the_next_start(tmp_path: Path) -> None:
    template = state_paths(tmp_path / "template")
    spool_left_by_a_crash(template.state_dir / "spool.db", [Message("t", b"1"), Message("t", b"2")])
    step = 0
    while True:
        step += 1
        root = tmp_path / f"run-{step}"
        shutil.copytree(tmp_path / "template", root)
        paths = GatewayPaths.resolve(root / "etc", root / "s", None)
        finished = run_killed_at(lambda paths=paths: move_legacy_state(paths), step)
        move_legacy_state(paths)
        assert leftovers(paths) == []
        assert waiting(paths.spool_db) == [b"1", b"2"]
        shutil.rmtree(root)
        if finished:
            break
    assert step > 2


def test_a_move_cut_short_between_a_database_and_its_wal_is_finished(tmp_path: Path) -> None:
    paths = state_paths(tmp_path)
    spool_left_by_a_crash(paths.state_dir / "spool.db", [Message("t", b"only-in-the-wal")])
    paths.uplink_dir.mkdir()
    os.replace(paths.state_dir / "spool.db", paths.spool_db)  # power lost here

    move_legacy_state(paths)

    assert leftovers(paths) == []
    assert waiting(paths.spool_db) == [b"only-in-the-wal"]


@pytest.fixture
def small_state_disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "small", "8m") as mount:
        yield mount


def test_a_merge_stopped_by_a_full_disk_keeps_what_it_merged_and_finishes_at_a_later_start(
    small_state_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = state_paths(small_state_disk)
    paths.uplink_dir.mkdir()
    Spool(paths.spool_db, reserve_bytes=0).append([Message("t", b"new")])
    old = [Message("t", f"old-{i}:".encode() + os.urandom(1000)) for i in range(1500)]
    spool_left_by_a_crash(paths.state_dir / "spool.db", old, small_state_disk.parent)
    filler = small_state_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_state_disk).free - 1_200_000))

    move_legacy_state(paths)

    assert "event=state-merge-failed" in caplog.text and "disk is full" in caplog.text
    assert "spool.db.merging" in leftovers(paths)
    partly = waiting(paths.spool_db)
    assert len(partly) > 1 and partly == [b"new", *(m.payload for m in old[: len(partly) - 1])]
    filler.unlink()
    move_legacy_state(paths)
    assert leftovers(paths) == []
    assert waiting(paths.spool_db) == [b"new", *(m.payload for m in old)]


def test_a_bulk_batch_whose_file_is_gone_is_left_out_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = state_paths(tmp_path)
    both_places(paths)
    (paths.state_dir / "bulk" / "batch-000000000001.jsonl.gz").unlink()

    move_legacy_state(paths)

    assert "event=bulk-batches-missing files=batch-000000000001.jsonl.gz" in caplog.text
    store = BulkStore(paths.bulk_db, paths.bulk_dir)
    assert bulk_state(store)[0] == [[b"new-batch"], [b"old-batch-1"]]
    store.close()


@pytest.mark.parametrize("old_written_last", [True, False])
def test_of_two_logship_offsets_files_the_one_written_last_is_kept(tmp_path: Path, old_written_last: bool) -> None:
    paths = state_paths(tmp_path)
    paths.logship_dir.mkdir()
    old, new = paths.state_dir / "logship-offsets.json", paths.logship_dir / "logship-offsets.json"
    old.write_text('{"old": {}}')
    new.write_text('{"new": {}}')
    os.utime(old if old_written_last else new, (2_000_000_000, 2_000_000_000))

    move_legacy_state(paths)

    assert not old.exists()
    assert new.read_text() == ('{"old": {}}' if old_written_last else '{"new": {}}')
