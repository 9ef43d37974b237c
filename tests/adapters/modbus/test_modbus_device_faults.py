"""What a device's own fault signals become, against a real pymodbus server over TCP: NaN and infinity
registers (PLCs write 0x7FC00000 to flag a failed sensor) publish as bad with a reason and valid JSON,
once, not every poll; an exception on a coalesced read spoils only the tag whose address is refused;
an unexpected error inside one request fails that request, not the adapter.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import Publications, eventually

from adapters.base.tag import Quality
from adapters.modbus import scheduler as scheduler_module


def tcp_device(port: int, tags: str, poll_ms: int = 30, extra: str = "") -> str:
    return f"""
name = "line1"
protocol = "modbus"

[[devices]]
name = "plc"
transport = "tcp"
host = "127.0.0.1"
port = {port}
poll_ms = {poll_ms}
timeout_ms = 300
retries = 0
backoff_max_ms = 200
{extra}
{tags}
"""


def tag(name: str, address: int, type_: str, extra: str = "", table: str = "holding") -> str:
    return f'\n[[devices.tags]]\nname = "{name}"\ntable = "{table}"\naddress = {address}\ntype = "{type_}"\n{extra}\n'


NAN32 = [0x7FC0, 0x0000]
MINUS_INF32 = [0xFF80, 0x0000]
NAN64 = [0x7FF8, 0, 0, 0]
ONE_AND_A_HALF = [0x3FC0, 0x0000]


def test_nan_and_infinity_publish_once_as_bad_with_a_reason_and_valid_json(simulator, harness) -> None:
    sim = simulator()
    port = sim.start_tcp()
    sim.set("holding", 0, NAN32 + MINUS_INF32 + NAN64 + [5])
    tags = (
        tag("temp", 0, "float32", 'units = "degC"')
        + tag("temp_each_poll", 0, "float32", 'publish = "every_poll"')
        + tag("flow", 2, "float32", "scale = 0.5\ndeadband = 1.0")
        + tag("level", 4, "float64", "deadband_percent = 5")
        + tag("count", 8, "uint16")
    )
    sink = Publications()

    async def scenario() -> None:
        async with harness(tcp_device(port, tags), sink=sink) as h:
            await eventually(lambda: len(sink.readings["plc/temp"]) >= 10, what="ten polls")
            for key, reason in (
                ("plc/temp", "float32 is NaN (registers 7FC0 0000)"),
                ("plc/flow", "float32 is -Inf (registers FF80 0000)"),
                ("plc/level", "float64 is NaN (registers 7FF8 0000 0000 0000)"),
            ):
                assert all(r.quality == Quality.BAD and r.value is None for r in sink.readings[key]), key
                [published] = sink.published[key]  # once, however many polls read the same NaN
                assert published["value"] is None and published["quality"] == "bad", published
                assert reason in published["reason"], published
            assert sink.published["plc/temp"][0]["units"] == "degC"
            assert sink.values("plc/count") == [5]
            # a tag that publishes every poll does so with valid JSON each time (Publications parses strictly)
            assert len(sink.published["plc/temp_each_poll"]) >= 10

            # the sensor recovers, then fails again: each change is published once
            sim.set("holding", 0, ONE_AND_A_HALF)
            await eventually(lambda: sink.values("plc/temp") == [None, 1.5], what="the value back")
            sim.set("holding", 0, NAN32)
            await eventually(lambda: len(sink.published["plc/temp"]) == 3, what="NaN again")
            polls = len(sink.readings["plc/temp"])
            await eventually(lambda: len(sink.readings["plc/temp"]) >= polls + 5, what="five more polls")
            assert [p["quality"] for p in sink.published["plc/temp"]] == ["bad", "good", "bad"]
            assert h.buses.status()["plc"]["state"] == "up"  # a NaN is the sensor's fault, not the device's

    asyncio.run(scenario())


SPLIT_TAGS = (
    tag("a", 0, "uint16")
    + tag("b", 1, "uint16")
    + tag("b_bit", 1, "bool", "bit = 0")
    + tag("c", 2, "float32")
    + tag("d", 6, "uint16")  # 4-5 are a gap the coalesced read spans
)


def reads(sim, address: int, count: int) -> int:
    return sum(1 for r in sim.sim.requests if r.function == 3 and r.address == address and r.count == count)


def test_a_refused_address_spoils_only_its_tag_and_the_split_is_kept_until_the_device_returns(
    simulator, harness
) -> None:
    sim = simulator()
    port = sim.start_tcp()
    sim.set("holding", 0, [11, 22, *ONE_AND_A_HALF, 0, 0, 44])
    sim.sim.refused[("holding", 1)] = 2

    async def scenario() -> None:
        async with harness(tcp_device(port, SPLIT_TAGS)) as h:
            rec = h.recorder
            await eventually(lambda: rec.good("plc/a", "plc/c", "plc/d"), what="the good tags")
            await eventually(lambda: rec.bad("plc/b", "exception 2 (illegal data address) reading holding 1"), what="b")
            assert rec.bad("plc/b_bit", "exception 2 (illegal data address) reading holding 1")
            assert (rec.value("plc/a"), rec.value("plc/c"), rec.value("plc/d")) == (11, 1.5, 44)
            polls = len(rec.readings["plc/a"])
            await eventually(lambda: len(rec.readings["plc/a"]) >= polls + 10, what="ten more polls")
            # the neighbours were never bad, not even on the poll that found the bad address
            for key in ("plc/a", "plc/c", "plc/d"):
                assert all(r.quality == Quality.GOOD for r in rec.readings[key]), key
            # the coalesced read was sent once; every later poll reads tag by tag (b and its bit: one read)
            assert reads(sim, 0, 7) == 1
            assert reads(sim, 1, 1) >= 10 and reads(sim, 2, 2) >= 10 and reads(sim, 6, 1) >= 10
            status = h.buses.status()["plc"]
            assert status["split_reads"] == ["holding 0-6"] and status["state"] == "up"

            # the device gets the address back: b recovers through its own read
            del sim.sim.refused[("holding", 1)]
            await eventually(lambda: rec.value("plc/b") == 22, what="b back")
            # the device goes away and returns: the coalesced read is tried again, and now answered
            await asyncio.to_thread(sim.stop_server)
            await eventually(lambda: h.buses.status()["plc"]["state"] == "down", what="device down")
            await asyncio.to_thread(sim.start_tcp, port)
            sim.sim.requests.clear()
            await eventually(lambda: reads(sim, 0, 7) >= 3, what="coalesced reads again")
            assert reads(sim, 1, 1) == 0 and h.buses.status()["plc"]["split_reads"] == []
            assert rec.good("plc/a", "plc/b", "plc/b_bit", "plc/c", "plc/d")

    asyncio.run(scenario())


def test_a_refused_gap_register_leaves_every_tag_good(simulator, harness) -> None:
    """Exception 3 (illegal data value) because the read spans registers 4-5, which map to no tag."""
    sim = simulator()
    port = sim.start_tcp()
    sim.set("holding", 0, [11, 22, *ONE_AND_A_HALF, 0, 0, 44])
    sim.sim.refused[("holding", 4)] = 3

    async def scenario() -> None:
        async with harness(tcp_device(port, SPLIT_TAGS)) as h:
            await eventually(lambda: h.recorder.good("plc/a", "plc/b", "plc/b_bit", "plc/c", "plc/d"), what="all good")
            assert h.recorder.value("plc/d") == 44
            assert h.buses.status()["plc"]["split_reads"] == ["holding 0-6"]

    asyncio.run(scenario())


def test_a_split_read_tries_its_coalesced_form_again_now_and_then(simulator, harness, monkeypatch) -> None:
    monkeypatch.setattr(scheduler_module, "COALESCED_RETRY_S", 0.3)
    sim = simulator()
    port = sim.start_tcp()
    sim.sim.refused[("holding", 1)] = 2

    async def scenario() -> None:
        async with harness(tcp_device(port, SPLIT_TAGS)) as h:
            await eventually(lambda: h.recorder.good("plc/a"), what="a read")
            sim.sim.requests.clear()
            await asyncio.sleep(1.5)
            # about one coalesced try per 0.3 s among some 30 polls, each refused again and split again
            assert 2 <= reads(sim, 0, 7) <= 7, reads(sim, 0, 7)
            assert reads(sim, 6, 1) >= 20
            assert h.recorder.bad("plc/b", "exception 2") and h.recorder.good("plc/a", "plc/c", "plc/d")

    asyncio.run(scenario())


def test_an_unexpected_error_in_one_request_fails_that_request_not_the_adapter(simulator, harness, caplog) -> None:
    sim = simulator()
    port = sim.start_tcp()
    sim.set("holding", 0, [1])
    sim.set("input", 5, [500])
    tags = tag("count", 0, "uint16", "writable = true") + tag("pressure", 5, "int16", table="input")
    failing: dict[str, BaseException] = {}

    def faulty(client, method: str) -> None:
        """Make one pymodbus client call raise whatever `failing[method]` holds, while it holds one."""
        real = getattr(client, method)

        def call(*args, **kwargs):
            if method in failing:
                raise failing[method]
            return real(*args, **kwargs)

        setattr(client, method, call)

    async def scenario() -> None:
        async with harness(tcp_device(port, tags)) as h:
            rec = h.recorder
            client = h.buses.schedulers[0].link.client
            for method in ("read_input_registers", "read_holding_registers", "write_register"):
                faulty(client, method)
            await eventually(lambda: rec.good("plc/count", "plc/pressure"), what="first readings")

            failing["read_input_registers"] = RuntimeError("boom")
            boom = "unexpected RuntimeError: boom reading input 5"
            await eventually(lambda: rec.bad("plc/pressure", boom), what="the failed read's tag bad")
            sim.set("holding", 0, [2])
            await eventually(lambda: rec.value("plc/count") == 2, what="the other read still polled")
            failing["write_register"] = ValueError("odd")
            with pytest.raises(Exception, match=r"plc: unit 1: unexpected ValueError: odd writing holding 0"):
                await h.write("plc/count", 3)
            status = h.buses.status()["plc"]
            assert status["state"] == "up" and status["errors"]["internal"] >= 2
            failing.clear()
            await eventually(lambda: rec.value("plc/pressure") == 500 and rec.good("plc/pressure"), what="recovered")
            assert await h.write("plc/count", 3) == 3

            # an OSError mid-request (a USB serial adapter pulled out) loses the bus: reconnect, go on
            failing["read_holding_registers"] = OSError(5, "Input/output error")
            await eventually(lambda: "event=bus-lost" in caplog.text, what="the bus lost")
            failing.clear()
            sim.set("holding", 0, [4])
            await eventually(lambda: rec.value("plc/count") == 4, what="polled after reconnecting")

    with caplog.at_level("WARNING", logger="adapters.modbus.scheduler"):
        asyncio.run(scenario())
    # logged once (not once per poll), with the device, the address and the traceback
    [logged] = [r for r in caplog.records if "event=request-failed" in r.getMessage() and "input 5" in r.message]
    assert "device=plc" in logged.message and logged.exc_info is not None
    # one reconnect at once, then backoff: not a connect-fail-reconnect spin while the error lasts
    lost = [r.message for r in caplog.records if "event=bus-lost" in r.message]
    assert 1 <= len(lost) <= 3, lost
    assert "failed reading 1 from holding 0 for unit 1: Input/output error" in lost[0]


def test_a_write_is_not_held_behind_the_per_tag_reads_of_a_split(simulator, harness) -> None:
    """20 tags in one coalesced read, refused for a gap register: the poll becomes 20 reads of a slow
    device (30 ms each); a write arriving meanwhile goes between two of them, not after all 20."""
    sim = simulator()
    port = sim.start_tcp()
    sim.sim.refused[("holding", 1)] = 2
    sim.sim.answer_delay_s = 0.03
    tags = "".join(tag(f"r{i}", 2 * i, "uint16") for i in range(20)) + tag("setpoint", 100, "uint16", "writable = true")

    async def scenario() -> None:
        async with harness(tcp_device(port, tags, poll_ms=60000)) as h:
            await eventually(lambda: h.buses.status()["plc"]["split_reads"], what="the read split")
            await eventually(lambda: reads(sim, 2, 1) == 1, what="the per-tag reads under way")
            before = len(sim.sim.requests)
            assert await h.write("plc/setpoint", 9) == 9
            await eventually(lambda: h.recorder.good(*(f"plc/r{i}" for i in range(20))), what="all 20 read")
            functions = [r.function for r in sim.sim.requests[before:]]
            assert functions.index(6) <= 2 and functions[functions.index(6) :].count(3) >= 10, functions

    asyncio.run(scenario())
    assert sim.get("holding", 100) == [9]
