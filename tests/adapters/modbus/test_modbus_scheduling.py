"""Scheduling and publishing rules against a real pymodbus server over TCP: a write goes ahead of the
polls already queued on its bus, and a tag's absolute or percent deadband decides what is published.
"""

from __future__ import annotations

import asyncio
import struct

from conftest import Publications, eventually


def test_a_write_goes_ahead_of_the_polls_queued_on_its_bus(simulator, harness) -> None:
    """Unit 1 has 20 reads due at once on a slow device (50 ms an answer); a write to unit 2, on the same
    endpoint and so the same bus, is sent right after the read in flight, not after the 19 others."""
    sim = simulator()
    port = sim.start_tcp()
    sim.sim.answer_delay_s = 0.05
    tag = '\n[[devices.tags]]\nname = "r{i}"\ntable = "holding"\naddress = {address}\ntype = "uint16"\n'
    reads = "".join(tag.format(i=i, address=10 * i) for i in range(20))
    config = f"""
name = "line1"
protocol = "modbus"

[[devices]]
name = "slow"
transport = "tcp"
host = "127.0.0.1"
port = {port}
unit = 1
poll_ms = 60000
max_gap = 0
{reads}

[[devices]]
name = "valve"
transport = "tcp"
host = "127.0.0.1"
port = {port}
unit = 2
poll_ms = 60000

[[devices.tags]]
name = "open"
table = "coil"
address = 4
writable = true
"""

    async def scenario() -> None:
        async with harness(config) as h:
            await eventually(lambda: sim.sim.request_count(unit=1) >= 1, what="the first read in flight")
            assert await h.write("valve/open", True) is True
            order = [(r.unit, r.function) for r in sim.sim.requests]
            write_at = order.index((2, 5))
            assert write_at <= 2, order  # after the read in flight (and at most one more), not after 19
            assert sum(1 for unit, _ in order[:write_at] if unit == 1) <= 2
            await eventually(lambda: h.recorder.good(*(f"slow/r{i}" for i in range(20))), what="every read done")

    asyncio.run(scenario())
    assert sim.get("coil", 4, unit=2) == [True]


def float32_registers(value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", value)))


def test_absolute_and_percent_deadbands_set_on_tags_decide_what_is_published(simulator, harness) -> None:
    sim = simulator()
    port = sim.start_tcp()
    config = f"""
name = "line1"
protocol = "modbus"

[[devices]]
name = "press"
transport = "tcp"
host = "127.0.0.1"
port = {port}
poll_ms = 20

[[devices.tags]]
name = "temperature"
table = "holding"
address = 0
type = "float32"
deadband = 0.5

[[devices.tags]]
name = "pressure"
table = "holding"
address = 2
type = "uint16"
scale = 0.1
deadband_percent = 10

[[devices.tags]]
name = "both"
table = "holding"
address = 3
type = "int16"
deadband = 3
deadband_percent = 10
"""
    # temperature: moves of more than 0.5 degC; pressure: of more than 10 % of the last published value;
    # both: past 3 and past 10 % of the last published value
    steps = [
        (20.0, 1000, 100),
        (20.3, 1050, 104),
        (20.5, 1110, 109),
        (20.6, 1200, 111),
        (20.2, 0, 80),
        (20.0, 0, 78),
        (20.0, 10, 75),
    ]
    sink = Publications()

    async def scenario() -> None:
        async with harness(config, sink=sink):
            for temperature, raw_pressure, both in steps:
                sim.set("holding", 0, [*float32_registers(temperature), raw_pressure, both & 0xFFFF])
                polls = len(sink.readings["press/both"])
                await eventually(
                    lambda t=temperature, p=raw_pressure / 10, b=both, n=polls: (
                        sink.value("press/temperature") == t
                        and sink.value("press/pressure") == p
                        and sink.value("press/both") == b
                        and len(sink.readings["press/both"]) >= n + 2
                    ),
                    what=f"step {temperature}, {raw_pressure}, {both} read",
                )

    asyncio.run(scenario())
    assert sink.values("press/temperature") == [20.0, 20.6, 20.0]
    assert sink.values("press/pressure") == [100.0, 111.0, 0.0, 1.0]
    assert sink.values("press/both") == [100, 111, 80]  # 104, 109 and 75 pass 3 but not 10 %
    assert all(body["quality"] == "good" for key in sink.published for body in sink.published[key])
