"""OPC-UA events from `[[events]]` sources against the simulator (a real asyncua server in its own
process): the selected fields as JSON, filtered by event type, from the periodic alarm and the
RaiseAlarm method; sources the server refuses reported without stopping the rest; events resuming
after a server restart. Also the event JSON mapping, the `[[events]]` config checks and the outbox."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time

import pytest
from asyncua import Client, ua
from hypothesis import given
from hypothesis import strategies as st

from adapters.opcua.event_map import event_value
from adapters.opcua.event_outbox import EventOutbox
from adapters.opcua.session import State
from gateway.adapter_config import DEFAULT_EVENT_FIELDS, OpcuaAdapter, event_field_key
from gateway.config_loader import ConfigInvalid, load_config
from gateway.mqtt import NotConnected
from tests.adapters.opcua.conftest import Harness, adapter_config

TEMPERATURE = {"name": "temperature", "node_id": "ns=2;s=Line2.Temperature", "sampling_ms": 50}
ALARMS = {
    "name": "alarms",
    "node_id": "ns=2;s=Line2",
    "event_type": "ns=2;s=Line2AlarmType",
    "fields": [*DEFAULT_EVENT_FIELDS, "2:Temperature"],
}


async def raise_alarm(endpoint: str, message: str, severity: int) -> None:
    async with Client(endpoint) as client:
        line = client.get_node("ns=2;s=Line2")
        await line.call_method(
            ua.NodeId.from_string("ns=2;s=Line2.RaiseAlarm"),
            ua.Variant(message, ua.VariantType.String),
            ua.Variant(severity, ua.VariantType.UInt16),
        )


def test_events_arrive_with_the_selected_fields_and_bad_sources_are_reported(opcua_simulator) -> None:
    sim = opcua_simulator("--period", "0.1", "--event-period", "0.3")
    config = adapter_config(
        sim.endpoint,
        [TEMPERATURE],
        events=[
            ALARMS,
            {"name": "everything", "browse_path": "2:Line2"},
            {"name": "not_a_notifier", "node_id": "ns=2;s=Line2.Temperature"},
            {"name": "ghost", "node_id": "ns=2;s=Line2.NoSuchObject"},
            {"name": "lost", "browse_path": "2:Line2/2:Nowhere"},
            {"name": "wrong_type", "node_id": "ns=2;s=Line2", "event_type": "ns=2;s=Line2.Counter"},
            {"name": "garbled", "node_id": "ns=2;s=Line2", "event_type": "i=abc"},
            {"name": "garbled_source", "node_id": "i=abc"},
        ],
    )

    async def scenario() -> None:
        async with Harness(config) as h:
            await h.wait_for(lambda: len(h.events["alarms"]) >= 2, what="two periodic alarms")
            started_ms = time.time() * 1000
            await raise_alarm(sim.endpoint, "door open", 777)
            door = await h.wait_for(
                lambda: [e for e in h.events["alarms"] if e["Message"] == "door open"], what="the raised alarm"
            )
            event = door[0]
            assert list(event) == [*DEFAULT_EVENT_FIELDS, "Temperature"]
            assert event["Severity"] == 777 and event["SourceName"] == "Line2"
            assert event["EventType"] == "ns=2;s=Line2AlarmType"
            assert isinstance(event["Time"], int) and abs(event["Time"] - started_ms) < 5000
            assert len(base64.b64decode(event["EventId"], validate=True)) > 0
            assert 16.9 <= event["Temperature"] <= 25.1
            # the default fields from a browse-path source; each event once, with its own EventId
            await h.wait_for(
                lambda: any(e["Message"] == "door open" for e in h.events["everything"]), what="the same alarm"
            )
            assert set(h.events["everything"][0]) == set(DEFAULT_EVENT_FIELDS)
            ids = [e["EventId"] for e in h.events["alarms"]]
            assert len(ids) == len(set(ids))
            # refused sources are reported with the reason; values and the other sources go on
            status = h.session.status()
            unavailable = status["events"]["unavailable"]
            assert set(unavailable) == {"not_a_notifier", "ghost", "lost", "wrong_type", "garbled", "garbled_source"}
            assert (
                "not a valid NodeId" in unavailable["garbled"] and "not a valid NodeId" in unavailable["garbled_source"]
            )
            assert unavailable["not_a_notifier"].startswith("Bad")
            assert unavailable["ghost"].startswith("Bad")
            assert "not found" in unavailable["lost"]
            assert "not an event ObjectType" in unavailable["wrong_type"]
            assert h.session.state == State.RUNNING and status["nodes"]["unavailable"] == {}
            readings = len(h.readings["temperature"])
            alarms = len(h.events["alarms"])
            await h.wait_for(
                lambda: len(h.readings["temperature"]) > readings and len(h.events["alarms"]) > alarms,
                what="values and alarms still flowing",
            )

    asyncio.run(scenario())


def test_an_event_type_filter_keeps_other_events_out(opcua_simulator) -> None:
    sim = opcua_simulator("--period", "0.1", "--event-period", "0.2")
    config = adapter_config(
        sim.endpoint,
        [TEMPERATURE],
        events=[
            {"name": "alarms", "node_id": "ns=2;s=Line2", "event_type": "ns=2;s=Line2AlarmType"},
            {"name": "audits", "node_id": "ns=2;s=Line2", "event_type": "i=2052"},  # AuditEventType
        ],
    )

    async def scenario() -> None:
        async with Harness(config) as h:
            await h.wait_for(lambda: len(h.events["alarms"]) >= 3, what="alarms")
            assert h.events["audits"] == []
            assert h.session.status()["events"]["unavailable"] == {}

    asyncio.run(scenario())


def test_events_resume_after_a_server_restart(opcua_simulator) -> None:
    sim = opcua_simulator("--period", "0.1", "--event-period", "0.2")
    config = adapter_config(sim.endpoint, [TEMPERATURE], events=[ALARMS], watchdog_ms=200)

    async def scenario() -> None:
        async with Harness(config) as h:
            await h.wait_for(lambda: h.events["alarms"], what="alarms before the restart")
            sim.stop()
            await h.wait_for(lambda: h.session.state != State.RUNNING, what="the session noticed the loss")
            before = len(h.events["alarms"])
            restarted_ms = time.time() * 1000
            await asyncio.to_thread(sim.start)
            await h.wait_for(
                lambda: len(h.events["alarms"]) >= before + 2, timeout_s=15, what="alarms from the restarted server"
            )
            assert all(e["Time"] >= restarted_ms for e in h.events["alarms"][before:])
            assert h.session.sessions == 2 and h.session.state == State.RUNNING

    asyncio.run(scenario())


# ---- the event JSON, the config checks, the outbox ------------------------------------------------


def test_event_fields_become_json() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678000)  # asyncua's naive UTC
    assert event_value(ua.Variant(when, ua.VariantType.DateTime)) == 1767323045678
    assert event_value(ua.LocalizedText("door open", "en")) == "door open"
    assert event_value(ua.NodeId(2041, 0)) == "i=2041"
    assert event_value(b"\x01\x02") == "AQI="
    assert event_value([when, None]) == [1767323045678, None]


@given(st.lists(st.tuples(st.integers(0, 99) | st.none(), st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,8}", fullmatch=True))))
def test_an_event_field_key_is_its_browse_path_without_namespaces(parts: list[tuple[int | None, str]]) -> None:
    if not parts:
        return
    path = "/".join(name if ns is None else f"{ns}:{name}" for ns, name in parts)
    assert event_field_key(path) == "/".join(name for _, name in parts)


BASE = {"name": "line2", "protocol": "opcua", "endpoint": "opc.tcp://10.0.3.5:4840/", "nodes": [TEMPERATURE]}


def test_events_defaults() -> None:
    config = OpcuaAdapter.model_validate({**BASE, "events": [{"name": "alarms", "node_id": "i=2253"}]})
    [events] = config.events
    assert config.events_topic(events) == "line2/events/alarms"
    assert events.event_type == "i=2041" and events.fields == list(DEFAULT_EVENT_FIELDS)


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ({"name": "a"}, "exactly one of"),
        ({"name": "a", "node_id": "i=2253", "browse_path": "0:Server"}, "exactly one of"),
        ({"name": "a", "node_id": "i=2253", "fields": ["Severity", "3:Severity"]}, "selected twice"),
        ({"name": "a", "node_id": "i=2253", "fields": ["Sev/"]}, "should match pattern"),
        ({"name": "a", "node_id": "i=2253", "fields": []}, "at least 1"),
        ({"name": "a", "node_id": "i=2253", "event_type": "BaseEventType"}, "should match pattern"),
    ],
)
def test_invalid_events_are_refused_with_the_reason(events: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OpcuaAdapter.model_validate({**BASE, "events": [events]})


def test_an_events_topic_used_twice_is_reported(tmp_path) -> None:
    (tmp_path / "adapters").mkdir()
    (tmp_path / "gateway.toml").write_text('[gateway]\nthing_name = "gw"\n')
    (tmp_path / "adapters" / "line2.toml").write_text(
        """
name = "line2"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840/"

[[nodes]]
name = "a"
node_id = "ns=2;s=A"

[[events]]
name = "alarms"
node_id = "i=2253"
topic = "line2/a"

[[events]]
name = "alarms"
node_id = "ns=2;s=Line2"
"""
    )
    with pytest.raises(ConfigInvalid) as caught:
        load_config(tmp_path)
    text = str(caught.value)
    assert "events[0].topic: topic 'line2/a' is also used by nodes[0]" in text
    assert "events[1].name: duplicate events name 'alarms' (also events[0])" in text


class FlakyBroker:
    """A BrokerLink that refuses the first `failures` publishes as if the broker were away."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.connected = True
        self.received: list[tuple[str, bytes, bool]] = []

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False, timeout_s: float = 10.0
    ) -> None:
        if self.failures:
            self.failures -= 1
            raise NotConnected("away")
        self.received.append((topic, payload if isinstance(payload, bytes) else payload.encode(), retain))


def test_the_outbox_publishes_every_event_in_order_and_drops_the_oldest_when_full() -> None:
    async def scenario() -> None:
        outbox = EventOutbox("line2", capacity=3)
        broker = FlakyBroker(failures=2)
        broker.connected = False
        for index in range(5):
            outbox.offer("line2/events/alarms", str(index).encode())
        task = asyncio.create_task(outbox.run(broker))
        await asyncio.sleep(0.1)
        broker.connected = True
        for _ in range(100):
            if len(broker.received) == 3:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        assert [payload for _, payload, _ in broker.received] == [b"2", b"3", b"4"]
        assert not any(retain for _, _, retain in broker.received)
        assert outbox.stats() == {"published": 3, "dropped": 2, "refused": 0, "too_large": 0, "backlog": 0}

    asyncio.run(scenario())
