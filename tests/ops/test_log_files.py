"""Reading the gateway's logs (gateway/log_files.py): each format's time stamp in the zone it was written
in, and a followed file that loses nothing and applies no offset to the wrong file across rotations that
happened while nobody was reading.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.log_files import FollowedFile, line_time

STAMPED_UTC = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC).timestamp()


@pytest.fixture
def tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process in UTC+9 (no daylight saving), as a gateway east of UTC runs."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_mosquitto_and_supervisord_stamps_are_local_time_and_ours_utc(tokyo: None) -> None:
    # mosquitto's log_timestamp_format and supervisord's own log: strftime of localtime(3)
    assert line_time("2024-05-01T19:00:00: New client connected from /tmp/x as c1") == STAMPED_UTC
    assert line_time("2024-05-01 19:00:00,250 INFO spawned: 'core' with pid 42") == STAMPED_UTC + 0.25
    # gateway/logs.py writes UTC and says so
    assert line_time("2024-05-01T10:00:00.500Z INFO core gateway.core: event=starting") == STAMPED_UTC + 0.5
    assert line_time("2024-05-01T19:00:00+09:00 something") == STAMPED_UTC
    assert line_time("Traceback (most recent call last):") is None


def _rotate(live: Path, backups: int) -> None:
    """supervisord's rotation: .N-1 -> .N (the oldest falls off), ..., live -> .1, a new live file."""
    oldest = live.with_name(f"{live.name}.{backups}")
    oldest.unlink(missing_ok=True)
    for n in range(backups - 1, 0, -1):
        older = live.with_name(f"{live.name}.{n}")
        if older.exists():
            older.rename(live.with_name(f"{live.name}.{n + 1}"))
    live.rename(live.with_name(f"{live.name}.1"))
    live.write_text("")


def test_lines_of_every_generation_left_are_read_when_the_acknowledged_one_was_rotated_out(tmp_path: Path) -> None:
    live = tmp_path / "core.log"
    live.write_text("gen0-a\ngen0-b\n")
    tail = FollowedFile(live)
    assert tail.read_lines() == ["gen0-a", "gen0-b"]
    # logship stopped; meanwhile the log rotated past its 3 backups, so the file it was in is gone
    for generation in range(1, 5):
        with live.open("a") as handle:
            handle.write(f"gen{generation - 1}-late\n")
        _rotate(live, backups=3)
        live.write_text(f"gen{generation}-first\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["core.log", "core.log.1", "core.log.2", "core.log.3"]
    assert tail.read_lines() == [
        "gen1-first",
        "gen1-late",
        "gen2-first",
        "gen2-late",
        "gen3-first",
        "gen3-late",
        "gen4-first",
    ]


OLD = "2024-05-01T10:00:00.000Z INFO core gateway.core: event=starting\n" * 3
NEWER = "2024-05-01T11:00:00.000Z INFO core gateway.core: event=something-else\n" * 5


def test_an_offset_is_never_applied_to_a_new_live_file_that_was_given_the_old_ones_inode(tmp_path: Path) -> None:
    live = tmp_path / "core.log"
    live.write_text(OLD)
    tail = FollowedFile(live)
    tail.read_lines()
    live.unlink()
    live.write_text(NEWER)
    tail.inode = live.stat().st_ino  # as if the filesystem had handed the freed inode number to the new file
    assert tail.read_lines() == NEWER.splitlines()


def test_a_rotated_file_that_was_given_the_old_ones_inode_is_read_from_its_start(tmp_path: Path) -> None:
    live = tmp_path / "core.log"
    live.write_text(OLD)
    tail = FollowedFile(live)
    tail.read_lines()
    # the file we were in was rotated out; a later generation, now core.log.1, carries its inode number
    live.unlink()
    (tmp_path / "core.log.1").write_text(NEWER)
    live.write_text("live line\n")
    tail.inode = (tmp_path / "core.log.1").stat().st_ino
    assert tail.read_lines() == [*NEWER.splitlines(), "live line"]


def test_a_rotated_file_that_ends_without_a_newline_does_not_stop_the_reader(tmp_path: Path) -> None:
    live = tmp_path / "core.log"
    live.write_text("one\ntwo without its newline")
    tail = FollowedFile(live)
    assert tail.read_lines() == ["one"]
    _rotate(live, backups=3)
    live.write_text("three\n")
    marked = tail.read_marked()
    assert [line for line, _ in marked] == ["two without its newline", "three"]
    assert marked[0][1].position == len("one\ntwo without its newline")
    live.write_text("three\nfour\n")
    assert tail.read_lines() == ["four"]


def test_a_line_longer_than_a_whole_read_is_passed_on_in_pieces_not_waited_on(tmp_path: Path) -> None:
    # a process printing without newlines: waiting for the newline would stop this log's shipping
    live = tmp_path / "fn-chatty.log"
    live.write_bytes(b"first\n" + b"x" * 2500)
    tail = FollowedFile(live)
    assert tail.read_lines(limit_bytes=1000) == ["first"]
    assert tail.read_lines(limit_bytes=1000) == ["x" * 1000]
    assert tail.read_lines(limit_bytes=1000) == ["x" * 1000]
    assert tail.read_lines(limit_bytes=1000) == [], "the rest of the line may still be being written"
    with live.open("ab") as handle:
        handle.write(b"y\nnext\n")
    assert tail.read_lines(limit_bytes=1000) == ["x" * 500 + "y", "next"]
    assert tail.position == live.stat().st_size
