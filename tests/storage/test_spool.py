"""The spool on its own: order, durability across reopen, caps under each policy, priorities,
time-to-live, dead letters, a full disk and a damaged file."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.spool import (
    DEAD_DROPPED,
    DEAD_REFUSED,
    DEAD_TOO_LARGE,
    DROPPED_FULL,
    EXPIRED,
    REJECTED_FULL,
    Message,
    Rule,
    Spool,
    SpoolCorrupt,
    SpoolUnwritable,
)
from storage.spool_file import WAL_SIZE_LIMIT


def drain_all(spool: Spool, limit: int = 7) -> list[tuple[str, bytes]]:
    """Read everything in drain order, deleting as a cloud would acknowledge."""
    out = []
    cursors: dict[int, int] = {}
    while batch := spool.next_batch(cursors, limit):
        out += [(m.topic, m.payload) for m in batch]
        spool.delete(m.id for m in batch)
    return out


def test_spool_keeps_every_message_in_order_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    sent = [Message(f"t/{i % 3}", str(i).encode()) for i in range(100)]
    assert spool.append(sent[:60]).stored == 60
    assert spool.append(sent[60:]).stored == 40
    spool.close()
    reopened = Spool(path)
    assert reopened.depth[0] == 100
    assert drain_all(reopened) == [(m.topic, m.payload) for m in sent]
    assert reopened.depth == (0, 0)


def test_committed_messages_survive_kill_9_of_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    script = (
        "import os, sys\n"
        "from storage.spool import Spool, Message\n"
        f"s = Spool(__import__('pathlib').Path({str(path)!r}))\n"
        "for n in range(50):\n"
        "    s.append([Message('a', f'{n}-{i}'.encode()) for i in range(20)])\n"
        "    print(n, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == -9
    committed = len(result.stdout.split())
    spool = Spool(path)
    assert spool.depth[0] == committed * 20 == 1000


def test_a_writer_killed_mid_commit_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    """kill -9 at arbitrary moments while appends are running (mostly inside one): each batch printed
    as acknowledged is there after reopening, batches are all or nothing, and the file is sound."""
    path = tmp_path / "spool.db"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from storage.spool import Spool, Message\n"
        f"s = Spool(Path({str(path)!r}))\n"
        "start = int(sys.argv[1])\n"
        "for n in range(start, start + 100_000):\n"
        "    s.append([Message(f't/{i % 3}', f'{n}-{i}'.encode() * 50) for i in range(50)])\n"
        "    print(n, flush=True)\n"
    )
    acknowledged: list[int] = []
    rng = random.Random(9)
    for kill in range(8):
        writer = subprocess.Popen(
            [sys.executable, "-c", script, str(kill * 100_000)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None
        for _ in range(rng.randint(3, 40)):  # batches it acknowledged, then a kill wherever it is
            acknowledged.append(int(writer.stdout.readline()))
        writer.kill()
        writer.wait()
        acknowledged += [int(line) for line in writer.stdout.read().split()]
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    spool = Spool(path)
    batches: dict[int, int] = {}
    for message in spool.messages():
        batch = int(message.payload.split(b"-", 1)[0])
        batches[batch] = batches.get(batch, 0) + 1
    assert set(acknowledged) <= set(batches), "every acknowledged batch is there"
    assert set(batches.values()) == {50}, "a batch is all there or not at all"


def test_drop_oldest_keeps_the_newest_within_the_cap_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=10_000, policy="drop-oldest")
    for i in range(100):
        result = spool.append([Message("t", b"x" * 100 + str(i).encode())])
        assert result.stored == 1
    count, size = spool.depth
    assert size <= 10_000
    stats = spool.stats()
    assert stats.counters[DROPPED_FULL] == 100 - count
    remaining = [p for _t, p in drain_all(spool)]
    assert remaining[-1].endswith(b"99")
    assert remaining == sorted(remaining, key=lambda p: int(p[100:]))


def test_reject_new_keeps_the_oldest_and_counts_the_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=10_000, policy="reject-new")
    results = [spool.append([Message("t", b"x" * 100 + str(i).encode())]) for i in range(100)]
    stored = sum(r.stored for r in results)
    rejected = sum(r.rejected for r in results)
    assert stored + rejected == 100 and rejected > 0
    assert spool.stats().counters[REJECTED_FULL] == rejected
    remaining = [p for _t, p in drain_all(spool)]
    assert remaining[0].endswith(b"x0")


def test_drop_oldest_sacrifices_low_priority_before_alarms(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=5_000, rules=[Rule("alarms/", priority=10)])
    spool.append([Message("alarms/1", b"A" * 100)])
    for i in range(60):
        spool.append([Message("telemetry/x", b"t" * 100 + str(i).encode())])
    topics = [t for t, _p in drain_all(spool)]
    assert topics[0] == "alarms/1"


def test_higher_priority_drains_first_and_each_topic_stays_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", rules=[Rule("plant/alarms/", 10), Rule("plant/", 1)])
    spool.append([Message("bulk/x", b"b1"), Message("plant/t", b"p1"), Message("plant/alarms/a", b"a1")])
    spool.append([Message("bulk/x", b"b2"), Message("plant/alarms/a", b"a2"), Message("plant/t", b"p2")])
    assert drain_all(spool) == [
        ("plant/alarms/a", b"a1"),
        ("plant/alarms/a", b"a2"),
        ("plant/t", b"p1"),
        ("plant/t", b"p2"),
        ("bulk/x", b"b1"),
        ("bulk/x", b"b2"),
    ]


def test_an_alarm_arriving_mid_drain_jumps_the_queue(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", rules=[Rule("alarms/", 5)])
    spool.append([Message("t", str(i).encode()) for i in range(10)])
    cursors: dict[int, int] = {}
    first = spool.next_batch(cursors, 3)
    spool.append([Message("alarms/fire", b"!")])
    second = spool.next_batch(cursors, 3)
    assert [m.payload for m in first] == [b"0", b"1", b"2"]
    assert [m.topic for m in second] == ["alarms/fire"]
    assert [m.payload for m in spool.next_batch(cursors, 3)] == [b"3", b"4", b"5"]


def test_a_message_appended_after_the_tail_was_sent_and_deleted_is_not_stranded(tmp_path: Path) -> None:
    """Regression: ids were reused once the newest rows were deleted, so a message appended after
    the drain had sent and deleted the tail got an id behind the drain's cursor and waited there."""
    spool = Spool(tmp_path / "spool.db", rules=[Rule("alerts/", 10)])
    cursors: dict[int, int] = {}
    spool.append([Message("scores/t", str(i).encode()) for i in range(5)])
    spool.append([Message("alerts/t", b"a0")])
    for _ in range(2):  # alerts, then scores: everything sent and acknowledged
        spool.delete(m.id for m in spool.next_batch(cursors, 10))
    assert spool.next_batch(cursors, 10) == []
    spool.append([Message("scores/t", b"late"), Message("alerts/t", b"a1")])
    assert [m.payload for m in spool.next_batch(cursors, 10)] == [b"a1"]
    assert [m.payload for m in spool.next_batch(cursors, 10)] == [b"late"]


def test_a_spool_made_with_reusable_ids_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool(path).append([Message("t", b"kept")])
    db = sqlite3.connect(path, isolation_level=None)
    old = db.execute("SELECT sql FROM sqlite_master WHERE name='messages'").fetchone()[0]
    db.executescript(
        "ALTER TABLE messages RENAME TO m; "
        f"{old.replace('AUTOINCREMENT', '')}; INSERT INTO messages SELECT * FROM m; DROP TABLE m;"
    )
    db.close()
    spool = Spool(path)
    sql = sqlite3.connect(path).execute("SELECT sql FROM sqlite_master WHERE name='messages'").fetchone()[0]
    assert "AUTOINCREMENT" in sql
    assert drain_all(spool) == [("t", b"kept")]


def test_changed_rules_apply_to_waiting_messages(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    spool.append([Message("t", b"old"), Message("alarms/a", b"1")])
    spool.close()
    spool = Spool(path, rules=[Rule("alarms/", 9)])
    spool.append([Message("alarms/a", b"2")])
    assert drain_all(spool) == [("alarms/a", b"1"), ("alarms/a", b"2"), ("t", b"old")]


def test_expired_messages_are_counted_and_never_handed_out(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", rules=[Rule("fast/", ttl_s=10)])
    spool.append([Message("fast/a", b"1", ts=1000.0), Message("slow/a", b"2", ts=1000.0)])
    batch = spool.next_batch({}, 10, now=1011.0)
    assert [m.topic for m in batch] == ["slow/a"]
    assert spool.stats().counters[EXPIRED] == 1
    spool.append([Message("fast/b", b"3", ts=1000.0)])
    assert spool.expire(now=1020.0) == 1
    assert spool.stats().counters[EXPIRED] == 2


def test_payload_over_the_limit_goes_to_dead_letters_with_the_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_payload_bytes=1000)
    result = spool.append([Message("t", b"ok"), Message("t", b"x" * 1001)])
    assert (result.stored, result.dead) == (1, 1)
    dead = list(spool.dead_letters())
    assert len(dead) == 1 and "1001 bytes" in dead[0].reason and "1000" in dead[0].reason
    assert spool.stats().counters[DEAD_TOO_LARGE] == 1


def test_a_message_refused_n_times_is_buried_and_the_rest_flows(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.append([Message("t", b"poison"), Message("t", b"fine")])
    poison = spool.next_batch({}, 1)[0]
    assert spool.refused({poison.id: "Not authorized"}, dead_after=3) == 0
    assert spool.refused({poison.id: "Not authorized"}, dead_after=3) == 0
    assert spool.refused({poison.id: "Not authorized"}, dead_after=3) == 1
    assert drain_all(spool) == [("t", b"fine")]
    (dead,) = spool.dead_letters()
    assert dead.payload == b"poison" and dead.tries == 3 and "Not authorized" in dead.reason
    assert spool.stats().counters[DEAD_REFUSED] == 1


def test_purge_by_prefix_is_seen_by_a_running_spool(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    running = Spool(path)
    running.append([Message("a/1", b"1"), Message("b/1", b"2"), Message("a/2", b"3")])
    operator = Spool(path)
    assert operator.purge("a/") == 2
    assert running.stats().messages == 1
    assert drain_all(running) == [("b/1", b"2")]


def test_full_disk_follows_the_drop_oldest_policy(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", policy="drop-oldest")
    spool._db.execute("PRAGMA max_page_count=60")  # a disk that is full at 60 pages
    results = [spool.append([Message("t", b"x" * 2000 + str(i).encode())]) for i in range(200)]
    assert any(r.disk_full for r in results)
    assert all(r.stored == 1 for r in results)
    assert drain_all(spool)[-1][1].endswith(b"199")


def test_full_disk_follows_the_reject_new_policy(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", policy="reject-new")
    spool._db.execute("PRAGMA max_page_count=60")
    results = [spool.append([Message("t", b"x" * 2000 + str(i).encode())]) for i in range(200)]
    assert any(r.disk_full and r.rejected == 1 for r in results)
    assert drain_all(spool)[0][1].endswith(b"x0")


@pytest.mark.parametrize("policy", ["drop-oldest", "reject-new"])
def test_a_really_full_filesystem_never_makes_the_spool_unusable(small_filesystem: Path, policy: str) -> None:
    spool = Spool(small_filesystem / "spool.db", policy=policy, reserve_bytes=512 * 1024)
    results = [spool.append([Message("t", bytes([65 + i % 26]) * 4000 + str(i).encode())]) for i in range(1000)]
    assert any(r.disk_full for r in results)
    if policy == "drop-oldest":  # the newest kept, room made by dropping the oldest
        assert results[-1].stored == 1
    else:  # the oldest kept, newcomers refused and counted
        assert results[-1].rejected == 1
    kept = drain_all(spool)  # the cloud is back: deleting what it acknowledged works on the full disk
    assert kept and all(len(payload) > 4000 for _, payload in kept)
    # and the file's freed pages take new messages again
    assert all(spool.append([Message("t", b"n" * 4000)]).stored == 1 for _ in range(50))
    spool.close()
    with sqlite3.connect(small_filesystem / "spool.db") as check:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _fill_with_expired(spool: Spool) -> int:
    """Messages due to expire (an hour's TTL, two hours old: a gateway back after a long stop) until the
    filesystem is full; how many are waiting."""
    two_hours_ago = time.time() - 7200
    for _ in range(1000):
        if spool.append([Message("tele/x", os.urandom(300), ts=two_hours_ago) for _ in range(50)]).disk_full:
            return spool.depth[0]
    pytest.fail("the small filesystem never filled")


def test_a_mass_expiry_on_a_full_disk_deletes_everything_due(small_filesystem: Path) -> None:
    # one transaction for all of them outgrew the reserve: the uplink stopped with "disk is full" for good
    spool = Spool(small_filesystem / "spool.db", rules=[Rule("tele/", ttl_s=3600)], reserve_bytes=256 * 1024)
    due = _fill_with_expired(spool)
    assert due > 1000
    assert spool.expire() == due
    assert spool.depth == (0, 0) and spool.stats().counters[EXPIRED] == due
    assert spool.append([Message("tele/x", b"fresh")]).stored == 1
    spool.close()
    with sqlite3.connect(small_filesystem / "spool.db") as check:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_wal_shrinks_back_after_a_mass_expiry(tmp_path: Path) -> None:
    # without a size limit the WAL kept the size of its biggest transaction (78 MB beside an empty spool)
    path = tmp_path / "spool.db"
    spool = Spool(path, rules=[Rule("tele/", ttl_s=3600)])
    two_hours_ago = time.time() - 7200
    for _ in range(100):
        spool.append([Message("tele/x", os.urandom(1000), ts=two_hours_ago) for _ in range(100)])
    assert spool.expire() == 10_000
    spool._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # what autocheckpoint does
    assert path.with_name("spool.db-wal").stat().st_size <= WAL_SIZE_LIMIT


def test_changed_rules_apply_to_a_backlog_bigger_than_the_free_space(small_filesystem: Path) -> None:
    # a deployment changing a rule over a backlog bigger than the free space: one UPDATE of every row
    # needed that much WAL, and the uplink crash-looped on reopening
    path = small_filesystem / "spool.db"
    spool = Spool(path, rules=[Rule("tele/", ttl_s=86400)], reserve_bytes=256 * 1024)
    two_hours_ago = time.time() - 7200
    while spool.depth[1] < 1_100_000:  # more than half the filesystem, without filling it
        assert not spool.append([Message("tele/x", os.urandom(300), ts=two_hours_ago) for _ in range(50)]).disk_full
    waiting = spool.depth[0]
    spool.close()
    spool = Spool(path, rules=[Rule("tele/", priority=5, ttl_s=3600)], reserve_bytes=256 * 1024)
    assert spool.stats(by_priority=True).by_priority == {5: waiting}
    assert spool.expire() == waiting  # the new TTL applies to the stored messages too


def test_dead_letters_keep_to_their_cap_dropping_the_oldest_counted(tmp_path: Path) -> None:
    # a device that keeps sending what the cloud cannot take filled the disk with dead letters
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=100_000, max_payload_bytes=1000, dead_letter_max_bytes=200_000)
    for i in range(200):
        assert spool.append([Message("big/t", str(i).encode() + b"x" * 50_000)]).dead == 1
    dead = list(spool.dead_letters())
    assert 2 <= len(dead) <= 4 and dead[-1].payload.startswith(b"199x")
    assert sum(len(d.payload) for d in dead) <= 200_000
    assert spool.stats().counters[DEAD_DROPPED] == 200 - len(dead)
    spool.close()
    # the operator clears them once exported
    operator = Spool(path, rules=None)
    assert operator.purge_dead_letters() == len(dead)
    assert operator.stats().dead_letters == 0


def test_a_damaged_file_is_refused_with_its_path_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    spool.append([Message("t", b"x" * 100) for _ in range(500)])
    spool.close()
    data = bytearray(path.read_bytes())
    data[0:16] = b"this is garbage!"
    path.write_bytes(bytes(data))
    with pytest.raises(SpoolCorrupt) as caught:
        Spool(path)
    assert str(path) in str(caught.value) and "damaged" in str(caught.value)
    assert path.read_bytes() == bytes(data)


def test_an_unwritable_place_is_reported_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "spool.db"
    with pytest.raises(SpoolUnwritable) as caught:
        Spool(path)
    assert str(path) in str(caught.value)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a/1", "a/2", "alarm/x", "b"]), st.integers(1, 5)),
        min_size=1,
        max_size=60,
    )
)
def test_each_topic_comes_out_in_arrival_order_whatever_the_mix(tmp_path_factory, ops) -> None:
    spool = Spool(tmp_path_factory.mktemp("p") / "spool.db", rules=[Rule("alarm/", 3)], durable=False)
    sent: dict[str, list[bytes]] = {}
    for index, (topic, _limit) in enumerate(ops):
        payload = str(index).encode()
        spool.append([Message(topic, payload)])
        sent.setdefault(topic, []).append(payload)
    got: dict[str, list[bytes]] = {}
    cursors: dict[int, int] = {}
    while batch := spool.next_batch(cursors, ops[len(got) % len(ops)][1]):
        for message in batch:
            got.setdefault(message.topic, []).append(message.payload)
        spool.delete(m.id for m in batch)
    assert got == sent


def test_sqlite_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool(path).close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
