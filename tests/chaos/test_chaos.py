"""The fault suite: the reference deployment (etc/reference) under load, one fault at a time, each
scenario reporting what was sent, delivered, lost and duplicated on a sequenced probe stream (device ->
anomaly function -> uplink -> cloud, QoS 1 throughout). Nothing the local broker acknowledged may be
lost. `make chaos` runs the full scenarios (bounded: under 20 minutes on 2 cores); the default suite
runs the unmarked smoke, one short fault.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bench.bench_reference import (
    CloudWatcher,
    Heartbeats,
    PlantShape,
    Probe,
    ReferencePlant,
    reference_plant,
    unhealthy,
    wait_healthy,
)
from tests.fixtures.gateway import wait_until

REPORT: list[dict[str, Any]] = []


class Running:
    def __init__(self, plant: ReferencePlant):
        self.plant = plant
        self.watcher = CloudWatcher(plant.cloud)
        self.watcher.start()
        self.beats: list[Heartbeats] = []
        self.start()

    def start(self) -> float:
        self.plant.run()
        for beat in self.beats:
            beat.close()
        self.beats.clear()
        return wait_healthy(self.plant, self.beats, self.watcher, 90)

    def healthy(self, timeout_s: float = 60) -> None:
        wait_until(lambda: not unhealthy(self.plant, self.beats[0]), timeout_s, "the deployment to recover", 0.2)


def tally(name: str, probe: Probe, watcher: CloudWatcher, drain_s: float = 60) -> dict[str, Any]:
    """sent = acknowledged by the local broker; delivered = seen at the cloud; lost; duplicated."""
    probe.close()
    sent = set(probe.acked)
    with contextlib.suppress(AssertionError):  # what never arrives is the figure
        wait_until(lambda: sent <= watcher.probe.keys(), drain_s, f"{name}: the probe to drain", interval_s=0.2)
    delivered = sent & watcher.probe.keys()
    outcome = {
        "scenario": name,
        "sent": len(sent),
        "delivered": len(delivered),
        "lost": len(sent - delivered),
        "duplicated": watcher.duplicates,
    }
    watcher.probe.clear()
    watcher.duplicates = 0
    return outcome


def account(name: str, probe: Probe, watcher: CloudWatcher, drain_s: float = 60) -> dict[str, Any]:
    """tally, reported."""
    outcome = tally(name, probe, watcher, drain_s)
    REPORT.append(outcome)
    print(json.dumps(outcome))
    return outcome


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    with reference_plant(PlantShape(modbus_rate=500, opcua_items=200)) as plant:
        plant.start_standins()
        run = Running(plant)
        yield run
        for beat in run.beats:
            beat.close()
        run.watcher.stop()
    print("\nchaos report")
    for outcome in REPORT:
        print("  " + "  ".join(f"{k}={v}" for k, v in outcome.items()))


def kill_each_process(run: Running, rounds: int, pause_s: float) -> list[dict[str, Any]]:
    """kill -9 of each supervised process in turn, `rounds` times, each kill accounted on its own."""
    outcomes = []
    for round_number in range(rounds):
        for name, info in run.plant.processes().items():
            if not info["pid"]:
                continue
            probe = Probe(run.plant, rate=100)
            probe.thread.start()
            time.sleep(pause_s)
            os.kill(info["pid"], signal.SIGKILL)
            time.sleep(pause_s)
            run.healthy()
            outcomes.append(account(f"kill -9 {name} (round {round_number + 1})", probe, run.watcher, drain_s=30))
    return outcomes


def cloud_outage(run: Running, seconds: float) -> dict[str, Any]:
    probe = Probe(run.plant, rate=100)
    probe.thread.start()
    run.plant.line.down()
    time.sleep(seconds)
    run.plant.line.up()
    time.sleep(2)
    return account(f"cloud down {seconds:.0f} s", probe, run.watcher, drain_s=120)


def power_cuts(run: Running, cycles: int) -> dict[str, Any]:
    """kill -9 of the whole tree in the middle of spool writes, restart, SQLite integrity check; the
    probe accounted over every cycle (what the broker acknowledged before the cut must arrive after)."""
    bad = []
    totals = {"sent": 0, "delivered": 0, "lost": 0, "duplicated": 0}
    for cycle in range(cycles):
        probe = Probe(run.plant, rate=200)
        probe.thread.start()
        time.sleep(1)
        run.plant.power_cut()
        probe.patience_s = 0  # what was not acknowledged before the cut never will be
        paths = run.plant.paths  # every SQLite file (broker/mosquitto.db is mosquitto's own format)
        databases = [db for db in (paths.state_dir / "shadows.db", paths.spool_db, paths.bulk_db) if db.exists()]
        assert paths.spool_db in databases, databases
        for db in databases:
            with sqlite3.connect(db) as check:
                verdict = check.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                bad.append(f"cycle {cycle}: {db.relative_to(run.plant.state)}: {verdict}")
        run.start()
        counted = tally(f"power cut {cycle}", probe, run.watcher, drain_s=15)
        for key in totals:
            totals[key] += counted[key]
    outcome = {"scenario": f"power cut x{cycles}", **totals, "integrity_failures": len(bad), "detail": bad[:5]}
    REPORT.append(outcome)
    print(json.dumps(outcome))
    return outcome


def equipment_gone(run: Running, seconds: float) -> dict[str, Any]:
    plant = run.plant
    probe = Probe(plant, rate=100)
    probe.thread.start()
    plant.stop_standin("modbus", kill=True)
    plant.stop_standin("opcua", kill=True)
    time.sleep(seconds)
    plant.start_modbus()
    plant.start_opcua()
    run.healthy(90)
    run.watcher.first_clock.clear()
    wait_until(run.watcher.first_clock.is_set, 30, "tag values at the cloud again")
    return account(f"equipment gone {seconds:.0f} s, back with tag values at the cloud", probe, run.watcher)


def malformed_payloads(run: Running) -> dict[str, Any]:
    from gateway.credentials import load_credentials
    from gateway.mqtt_blocking import connect_blocking, paho_client

    creds = load_credentials(run.plant.paths.credentials_dir, "operator")
    client = paho_client(creds, "chaos-garbage")
    connect_blocking(client, run.plant.paths.broker_socket)
    garbage = [b"", b"\x00\xff" * 50, b"{", b"[1,2", b'{"value": "NaN"}', b'{"value": null}', b"x" * 100_000]
    probe = Probe(run.plant, rate=100)
    probe.thread.start()
    topics = ["probe/temperature", "line1/press/temperature", "line2/b0000", "line1/press/clock_0000/set"]
    for topic in topics:
        for payload in garbage:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
    time.sleep(2)
    client.disconnect()
    client.loop_stop()
    run.healthy()
    return account("malformed payloads on every input topic", probe, run.watcher)


def spool_stats(plant: ReferencePlant) -> dict[str, Any]:
    millgate = str(Path(sys.executable).parent / "millgate")
    argv = [millgate, "spool", "stats", "--json", "--config", str(plant.config), "--state", str(plant.state)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(result.stdout)


@contextlib.contextmanager
def small_state_disk(size: str) -> Iterator[ReferencePlant]:
    """A reference plant whose state directory (spool, shadows, sockets) is a tmpfs of `size`; logs
    stay elsewhere, as on a gateway whose data partition fills while its log partition does not."""
    with reference_plant(PlantShape(modbus_rate=1000, opcua_items=200)) as plant:
        gateway = plant.config / "gateway.toml"
        log_dir = plant.root / "log"
        gateway.write_text(gateway.read_text().replace("[gateway]\n", f'[gateway]\nlog_dir = "{log_dir}"\n', 1))
        plant.state.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(plant.state)], check=True)
        try:
            yield plant
        finally:
            plant.stop()
            subprocess.run(["umount", "-l", str(plant.state)], check=False)


def disk_full(full_s: float) -> dict[str, Any]:
    """The spool's disk fills while the cloud is down: the uplink keeps running and says so, drops by
    its policy (counted, never silently), the database stays sound, and it drains when the cloud is back."""
    with small_state_disk("16m") as plant:
        plant.start_standins()
        run = Running(plant)
        uplink_pid = plant.processes()["uplink"]["pid"]
        plant.line.down()
        probe = Probe(plant, rate=100)
        probe.thread.start()
        wait_until(
            lambda: any(k.endswith("disk-full") and v for k, v in spool_stats(plant)["counters"].items()),
            240,
            "the spool to report a full disk",
            interval_s=2,
        )
        time.sleep(full_s)
        full = spool_stats(plant)
        uplink = plant.processes()["uplink"]
        plant.line.up()
        outcome = account(f"disk full {full_s:.0f} s (state on a 16 MB tmpfs)", probe, run.watcher, drain_s=180)
        dropped = sum(v for k, v in full["counters"].items() if k.endswith("disk-full"))
        REPORT[-1] |= {"dropped_by_policy": dropped, "uplink_restarted": uplink["pid"] != uplink_pid}
        outcome = REPORT[-1]
        with sqlite3.connect(plant.paths.spool_db) as check:
            outcome["integrity"] = check.execute("PRAGMA integrity_check").fetchone()[0]
        run.watcher.stop()
        for beat in run.beats:
            beat.close()
    print(json.dumps(outcome))
    assert uplink["statename"] == "RUNNING"
    return outcome


def test_chaos_smoke(running: Running) -> None:
    """Seconds: one process killed, a short cloud outage; the probe loses nothing acknowledged."""
    uplink = running.plant.processes()["uplink"]["pid"]
    probe = Probe(running.plant, rate=100)
    probe.thread.start()
    os.kill(uplink, signal.SIGKILL)
    running.plant.line.down()
    time.sleep(1)
    running.plant.line.up()
    running.healthy()
    outcome = account("smoke: kill -9 uplink + cloud blip", probe, running.watcher)
    assert outcome["sent"] > 0
    assert outcome["lost"] == 0, outcome


@pytest.mark.chaos
@pytest.mark.timeout(300)
def test_kill_each_process(running: Running) -> None:
    outcomes = kill_each_process(running, rounds=2, pause_s=2)
    # millgate's own processes lose nothing. mosquitto keeps messages in memory between its saves: a
    # kill -9 of the broker loses those it acknowledged to a publisher and had not yet passed on
    # (reported, not asserted: docs/benchmarks.md)
    ours = [o for o in outcomes if "kill -9 broker " not in o["scenario"]]
    assert all(o["lost"] == 0 for o in ours), ours
    assert all(o["delivered"] > 0 for o in outcomes), outcomes


@pytest.mark.chaos
@pytest.mark.timeout(300)
def test_cloud_down_long(running: Running) -> None:
    assert cloud_outage(running, seconds=120)["lost"] == 0


@pytest.mark.chaos
@pytest.mark.timeout(300)
def test_equipment_disappears_and_returns(running: Running) -> None:
    assert equipment_gone(running, seconds=20)["lost"] == 0


@pytest.mark.chaos
@pytest.mark.timeout(120)
def test_malformed_payloads(running: Running) -> None:
    assert malformed_payloads(running)["lost"] == 0


@pytest.mark.chaos
@pytest.mark.timeout(600)
def test_disk_full_for_the_spool() -> None:
    outcome = disk_full(full_s=10)
    assert outcome["integrity"] == "ok"
    assert not outcome["uplink_restarted"], outcome
    # what did not arrive was dropped by the spool's policy and counted, never lost silently
    assert outcome["lost"] <= outcome["dropped_by_policy"], outcome
    assert outcome["delivered"] > 0


@pytest.mark.chaos
@pytest.mark.timeout(600)
def test_power_cut_during_spool_writes(running: Running) -> None:
    outcome = power_cuts(running, cycles=50)
    assert outcome["integrity_failures"] == 0, outcome
    # a power cut takes mosquitto too: what it held in memory is reported, as for its kill -9
    assert outcome["delivered"] > 0, outcome
