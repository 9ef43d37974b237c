"""`millgate spool stats|export|purge` on a spool file (parsed exactly as cli.py will wire it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from gateway.spool_cli import add_spool_parser
from storage.spool import Message, Rule, Spool


def spool_cli(config: Path, state: Path, *argv: str) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS)
    common.add_argument("--state", type=Path, default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="millgate")
    add_spool_parser(parser.add_subparsers(dest="verb", required=True), common)
    args = parser.parse_args(["spool", *argv, "--config", str(config), "--state", str(state)])
    return int(args.handler(args))


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, Path]:
    config, state = tmp_path / "etc", tmp_path / "var"
    config.mkdir()
    (state / "uplink").mkdir(parents=True)
    (config / "gateway.toml").write_text('[gateway]\nthing_name = "gw"\n')
    spool = Spool(state / "uplink" / "spool.db", rules=[Rule("alarms/", 5)], max_payload_bytes=10)
    spool.append(
        [
            Message("plant/a", b"1"),
            Message("alarms/x", b"2"),
            Message("plant/b", b"\xff"),
            Message("plant/c", b"x" * 11),
        ]
    )
    spool.close()
    return config, state


def test_stats_shows_depth_dead_letters_and_priorities(filled, capsys) -> None:
    assert spool_cli(*filled, "stats", "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["messages"] == 3 and stats["dead_letters"] == 1
    assert stats["by_priority"] == {"5": 1, "0": 2}
    assert stats["counters"]["dead.payload-too-large"] == 1


def test_export_writes_json_lines_in_drain_order(filled, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    assert spool_cli(*filled, "export", str(out)) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["topic"] for r in records] == ["alarms/x", "plant/a", "plant/b"]
    assert records[2]["payload_b64"] == "/w=="
    dead = tmp_path / "dead.jsonl"
    assert spool_cli(*filled, "export", str(dead), "--dead-letters") == 0
    (letter,) = [json.loads(line) for line in dead.read_text().splitlines()]
    assert letter["topic"] == "plant/c" and "limit" in letter["reason"]


def test_purge_deletes_by_prefix_and_keeps_priorities(filled, capsys) -> None:
    assert spool_cli(*filled, "purge", "--topic", "plant/") == 0
    assert "purged 2" in capsys.readouterr().out
    spool_cli(*filled, "stats", "--json")
    stats = json.loads(capsys.readouterr().out)
    assert stats["messages"] == 1 and stats["by_priority"] == {"5": 1}


def test_purge_dead_letters_clears_them_and_leaves_the_waiting_messages(filled, capsys) -> None:
    assert spool_cli(*filled, "purge") == 2
    assert "--topic PREFIX, or --dead-letters" in capsys.readouterr().err
    assert spool_cli(*filled, "purge", "--dead-letters", "--topic", "alarms/") == 0
    assert "purged 0 dead letters whose topic starts with 'alarms/'" in capsys.readouterr().out
    assert spool_cli(*filled, "purge", "--dead-letters") == 0
    assert "purged 1 dead letters" in capsys.readouterr().out
    spool_cli(*filled, "stats", "--json")
    stats = json.loads(capsys.readouterr().out)
    assert stats["dead_letters"] == 0 and stats["messages"] == 3


def test_stats_without_a_spool_says_where_it_looked(tmp_path: Path, capsys) -> None:
    (tmp_path / "gateway.toml").write_text('[gateway]\nthing_name = "gw"\n')
    assert spool_cli(tmp_path, tmp_path / "var", "stats") == 1
    assert str(tmp_path / "var" / "uplink" / "spool.db") in capsys.readouterr().err


def test_stats_shows_the_configured_cap_and_policy(filled, capsys) -> None:
    config, state = filled
    (config / "gateway.toml").write_text(
        '[gateway]\nthing_name = "gw"\n[spool]\nmax_bytes = "5MB"\npolicy = "reject-new"\n'
    )
    assert spool_cli(config, state, "stats", "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["max_bytes"] == 5_000_000 and stats["policy"] == "reject-new"
    assert spool_cli(config, state, "stats") == 0
    assert "cap:          5000000 bytes, reject-new when full" in capsys.readouterr().out


def test_stats_with_an_invalid_config_does_not_invent_a_cap(filled, capsys) -> None:
    config, state = filled
    (config / "gateway.toml").write_text('[gateway]\nthing_name = "gw"\n[spool]\nmax_bytes = "lots"\n')
    assert spool_cli(config, state, "stats", "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["messages"] == 3 and stats["max_bytes"] is None
