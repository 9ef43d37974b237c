"""The Modbus adapter's bus schedulers against a real pymodbus server over TCP on 127.0.0.1: every
data type and order against known register contents, coalescing counted on the server, writes
checked in the server's datastore, failures reported per device without stopping the others.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import SimulatorThread, eventually, free_port

from adapters.modbus.link import ModbusLink, RequestError
from gateway.adapter_config import ModbusDevice
from tests.fixtures.gateway import HeldPort

KNOWN_REGISTERS = {
    0: [0xFFFE],  # int16 -2
    1: [0xFFFF],  # uint16 65535
    2: [0xFFFE, 0x1DC0],  # int32 -123456, high word first
    4: [0x1DC0, 0xFFFE],  # int32 -123456, low word first
    6: [0xB2D0, 0x5E00],  # uint32 3000000000
    8: [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE],  # int64 -2
    12: [0x0708, 0x0506, 0x0304, 0x0102],  # int64 0x0102030405060708, low word first
    16: [0x3FC0, 0x0000],  # float32 1.5 ABCD
    18: [0xC03F, 0x0000],  # float32 1.5 BADC (bytes swapped in each register)
    20: [0x0000, 0x3FC0],  # float32 1.5 CDAB (low word first)
    22: [0x0000, 0xC03F],  # float32 1.5 DCBA
    24: [0xC004, 0, 0, 0],  # float64 -2.5
    30: [0x4845, 0x4C4C, 0x4F00],  # "HELLO"
    33: [0x4241, 0x0043],  # "ABC", bytes swapped in each register
    40: [0b1010],  # bits 1 and 3 set
    41: [235],  # 23.5 raw, scaled 0.1 offset -3 -> 20.5
}


def every_type_adapter(port: int) -> str:
    tags = [
        ("i16", "holding", 0, 'type = "int16"'),
        ("u16", "holding", 1, 'type = "uint16"'),
        ("i32", "holding", 2, 'type = "int32"'),
        ("i32_cdab", "holding", 4, 'type = "int32"\nword_order = "little"'),
        ("u32", "holding", 6, 'type = "uint32"'),
        ("i64", "holding", 8, 'type = "int64"'),
        ("i64_le", "holding", 12, 'type = "int64"\nword_order = "little"'),
        ("f_abcd", "holding", 16, 'type = "float32"'),
        ("f_badc", "holding", 18, 'type = "float32"\nbyte_order = "little"'),
        ("f_cdab", "holding", 20, 'type = "float32"\nword_order = "little"'),
        ("f_dcba", "holding", 22, 'type = "float32"\nword_order = "little"\nbyte_order = "little"'),
        ("f64", "holding", 24, 'type = "float64"'),
        ("text", "holding", 30, 'type = "string"\nlength = 3'),
        ("text_swapped", "holding", 33, 'type = "string"\nlength = 2\nbyte_order = "little"'),
        ("bit1", "holding", 40, 'type = "bool"\nbit = 1'),
        ("bit2", "holding", 40, 'type = "bool"\nbit = 2'),
        ("scaled", "holding", 41, 'type = "uint16"\nscale = 0.1\noffset = -3.0\nunits = "degC"'),
        ("pressure", "input", 5, 'type = "int16"'),
        ("running", "coil", 3, ""),
        ("door", "discrete", 7, ""),
    ]
    body = "".join(
        f'\n[[devices.tags]]\nname = "{name}"\ntable = "{table}"\naddress = {address}\n{extra}\n'
        for name, table, address, extra in tags
    )
    return f"""
name = "line1"
protocol = "modbus"

[[devices]]
name = "press"
transport = "tcp"
host = "127.0.0.1"
port = {port}
unit = 1
poll_ms = 60000
{body}

[[devices]]
name = "press-cdab"
transport = "tcp"
host = "127.0.0.1"
port = {port}
unit = 2
poll_ms = 60000
word_order = "little"

[[devices.tags]]
name = "f"
table = "holding"
address = 20
type = "float32"
"""


EXPECTED = {
    "press/i16": -2,
    "press/u16": 65535,
    "press/i32": -123456,
    "press/i32_cdab": -123456,
    "press/u32": 3_000_000_000,
    "press/i64": -2,
    "press/i64_le": 0x0102030405060708,
    "press/f_abcd": 1.5,
    "press/f_badc": 1.5,
    "press/f_cdab": 1.5,
    "press/f_dcba": 1.5,
    "press/f64": -2.5,
    "press/text": "HELLO",
    "press/text_swapped": "ABC",
    "press/bit1": True,
    "press/bit2": False,
    "press/scaled": 20.5,
    "press/pressure": -32768,
    "press/running": True,
    "press/door": True,
    "press-cdab/f": 1.5,
}


def load_known_contents(sim: SimulatorThread) -> None:
    for address, words in KNOWN_REGISTERS.items():
        sim.set("holding", address, words)
    sim.set("input", 5, [0x8000])
    sim.set("coil", 3, [True])
    sim.set("discrete", 7, [True])


def test_every_type_and_order_decodes_known_registers_in_one_read_per_table(simulator, harness) -> None:
    sim = simulator()
    port = sim.start_tcp()
    load_known_contents(sim)
    sim.sim.requests.clear()

    async def scenario() -> None:
        async with harness(every_type_adapter(port)) as h:
            await eventually(lambda: h.recorder.good(*EXPECTED), what="every tag read")
            assert {key: h.recorder.value(key) for key in EXPECTED} == EXPECTED
            assert h.recorder.points["press/scaled"].units == "degC"

    asyncio.run(scenario())
    # unit 1: holding 0-41, input 5, coil 3, discrete 7; unit 2: holding 20-21; poll_ms is a minute
    assert sim.sim.request_count(unit=1) == 4
    assert sim.sim.request_count(unit=1, table="holding") == 1
    assert sim.sim.request_count(unit=2) == 1


COALESCING = """
name = "line1"
protocol = "modbus"

[[devices]]
name = "plc"
transport = "tcp"
host = "127.0.0.1"
port = {port}
poll_ms = 60000
max_registers_per_read = {max_regs}
tags_csv = "map.csv"
"""


def test_coalescing_issues_one_request_per_125_registers_and_2000_bits(simulator, harness, short_tmp) -> None:
    sim = simulator()
    port = sim.start_tcp()
    rows = ["name,table,address,type"]
    rows += [f"r{i},holding,{i},uint16" for i in range(300)]  # 300 registers: 125 + 125 + 50
    rows += [f"c{i},coil,{i}," for i in range(0, 2500, 5)]  # bits 0..2495: 2000 + 496
    rows += [f"far{i},holding,{1000 + 20 * i},float32" for i in range(3)]  # 18-register gaps: one read each
    (short_tmp / "map.csv").write_text("\n".join(rows) + "\n")

    async def poll_once(max_regs: int) -> dict[str, int]:
        sim.sim.requests.clear()
        async with harness(COALESCING.format(port=port, max_regs=max_regs), short_tmp) as h:
            keys = [f"plc/r{i}" for i in range(300)] + ["plc/c2495", "plc/far2"]
            await eventually(lambda: h.recorder.good(*keys), what="every tag read")
            await asyncio.sleep(0.1)
        return {table: sim.sim.request_count(table=table) for table in ("holding", "coil")}

    assert asyncio.run(poll_once(125)) == {"holding": 3 + 3, "coil": 2}
    # a device that accepts at most 50 registers per request gets 6 reads for the first 300
    assert asyncio.run(poll_once(50)) == {"holding": 6 + 3, "coil": 2}


def test_writes_reach_the_device_encoded_with_type_order_and_scale(simulator, harness) -> None:
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
poll_ms = 200

[[devices.tags]]
name = "setpoint"
table = "holding"
address = 100
type = "int32"
scale = 0.1
writable = true

[[devices.tags]]
name = "speed"
table = "holding"
address = 102
type = "float32"
word_order = "little"
writable = true

[[devices.tags]]
name = "mode"
table = "holding"
address = 104
type = "uint16"
writable = true

[[devices.tags]]
name = "recipe"
table = "holding"
address = 110
type = "string"
length = 4
writable = true

[[devices.tags]]
name = "alarm_ack"
table = "holding"
address = 120
type = "bool"
bit = 4
writable = true

[[devices.tags]]
name = "run"
table = "coil"
address = 9
writable = true

[[devices.tags]]
name = "limit"
table = "holding"
address = 121
type = "int16"
"""
    sim.set("holding", 120, [0b1000_0001])

    async def scenario() -> None:
        async with harness(config) as h:
            assert await h.write("press/setpoint", -12.3) == -12.3
            assert await h.write("press/speed", 2.5) == 2.5
            assert await h.write("press/mode", 7) == 7
            assert await h.write("press/recipe", "AB-12") == "AB-12"
            assert await h.write("press/alarm_ack", True) is True
            assert await h.write("press/run", True) is True
            await eventually(lambda: h.recorder.value("press/setpoint") == -12.3, what="the written value read back")
            for key, value in (("press/mode", 1.5), ("press/mode", 70000), ("press/recipe", "TOO-LONG-TEXT")):
                try:
                    h.buses.submit_write(h.point(key), value)
                except Exception as exc:  # WriteRefused, before anything is sent
                    assert key in str(exc)
                else:
                    raise AssertionError(f"{key} accepted {value!r}")

    asyncio.run(scenario())
    assert sim.get("holding", 100, 2) == [0xFFFF, 0xFF85]  # -123
    assert sim.get("holding", 102, 2) == [0x0000, 0x4020]  # 2.5, low word first
    assert sim.get("holding", 104) == [7]
    assert sim.get("holding", 110, 4) == [0x4142, 0x2D31, 0x3200, 0x0000]
    assert sim.get("holding", 120) == [0b1001_0001]  # bit 4 set, bits 0 and 7 kept
    assert sim.get("coil", 9) == [True]


def test_device_that_disappears_turns_bad_with_reason_and_good_when_it_returns(simulator, harness) -> None:
    sim = simulator()
    port = sim.start_tcp()
    sim.set("holding", 0, [42])
    config = f"""
name = "line1"
protocol = "modbus"

[[devices]]
name = "press"
transport = "tcp"
host = "127.0.0.1"
port = {port}
poll_ms = 50
timeout_ms = 200
retries = 1
backoff_max_ms = 300

[[devices.tags]]
name = "count"
table = "holding"
address = 0
type = "uint16"
"""

    async def scenario() -> None:
        async with harness(config) as h:
            await eventually(lambda: h.recorder.value("press/count") == 42, what="the first reading")
            await asyncio.to_thread(sim.stop_server)
            await eventually(lambda: h.recorder.bad("press/count"), what="quality bad")
            reason = h.recorder.latest("press/count").reason
            assert "127.0.0.1" in reason or "no answer" in reason, reason
            assert h.buses.status()["press"]["state"] == "down"
            await asyncio.to_thread(sim.start_tcp, port)
            sim.set("holding", 0, [43])
            await eventually(lambda: h.recorder.value("press/count") == 43, timeout_s=5, what="recovery")
            status = h.buses.status()["press"]
            assert status["state"] == "up"
            assert status["errors"] and status["latency_p50_ms"] is not None

    asyncio.run(scenario())


def test_silent_unit_times_out_and_recovers_without_slowing_its_neighbour(simulator, harness) -> None:
    sim = simulator()
    port = sim.start_tcp()
    config = f"""
name = "line1"
protocol = "modbus"

[[devices]]
name = "good"
transport = "tcp"
host = "127.0.0.1"
port = {port}
unit = 1
poll_ms = 50

[[devices.tags]]
name = "count"
table = "holding"
address = 0
type = "uint16"

[[devices]]
name = "silent"
transport = "tcp"
host = "127.0.0.1"
port = {port}
unit = 2
poll_ms = 50
timeout_ms = 100
retries = 2
backoff_max_ms = 2000

[[devices.tags]]
name = "count"
table = "holding"
address = 0
type = "uint16"
"""

    async def scenario() -> None:
        async with harness(config) as h:
            await eventually(lambda: h.recorder.good("good/count", "silent/count"), what="both units read")
            sim.sim.muted.add(2)
            await eventually(lambda: h.recorder.bad("silent/count", "no answer from unit 2"), what="unit 2 bad")
            # with unit 2 backed off, unit 1 keeps its 50 ms schedule: count its reads over one second
            before = sim.sim.request_count(unit=1)
            await asyncio.sleep(1.0)
            assert sim.sim.request_count(unit=1) - before >= 12
            assert sim.sim.request_count(unit=2) < 20  # probes, not a poll every 50 ms with retries
            sim.sim.muted.discard(2)
            await eventually(lambda: h.recorder.good("silent/count"), timeout_s=5, what="unit 2 back")
            assert h.buses.status()["silent"]["errors"]["timeout"] >= 3

    asyncio.run(scenario())


def test_refused_connection_exception_codes_and_garbage_are_reported_per_device(simulator, harness) -> None:
    sim = simulator((1, 2))
    port = sim.start_tcp()
    closed = HeldPort(free_port())  # refuses, and the adapter's reconnects cannot take it for themselves
    closed_port = closed.port
    config = f"""
name = "line1"
protocol = "modbus"

[[devices]]
name = "ok"
transport = "tcp"
host = "127.0.0.1"
port = {port}
unit = 1
poll_ms = 50

[[devices.tags]]
name = "count"
table = "holding"
address = 0
type = "uint16"

[[devices.tags]]
name = "beyond"
table = "holding"
address = 20000
type = "uint16"

[[devices]]
name = "garbled"
transport = "tcp"
host = "127.0.0.1"
port = {port}
unit = 2
poll_ms = 50
timeout_ms = 150
retries = 0

[[devices.tags]]
name = "count"
table = "holding"
address = 0
type = "uint16"

[[devices]]
name = "nobody"
transport = "tcp"
host = "127.0.0.1"
port = {closed_port}
poll_ms = 50

[[devices.tags]]
name = "count"
table = "holding"
address = 0
type = "uint16"
"""
    sim.sim.garbled.add(2)

    async def scenario() -> None:
        async with harness(config) as h:
            await eventually(lambda: h.recorder.good("ok/count"), what="the healthy tag")
            await eventually(
                lambda: h.recorder.bad("ok/beyond", "exception 2 (illegal data address) reading holding 20000"),
                what="exception code reported",
            )
            await eventually(lambda: h.recorder.bad("nobody/count", f"127.0.0.1:{closed_port}"), what="refused")
            await eventually(lambda: h.recorder.bad("garbled/count"), what="garbage reported")
            status = h.buses.status()
            assert status["ok"]["state"] == "up" and status["ok"]["errors"]["exception"] >= 1
            assert status["nobody"]["state"] == "down" and status["nobody"]["errors"]["connect"] >= 1
            assert status["garbled"]["state"] == "down"
            sim.set("holding", 0, [7], unit=1)
            await eventually(lambda: h.recorder.value("ok/count") == 7, what="the healthy device still polled")

    try:
        asyncio.run(scenario())
    finally:
        closed.release()


def test_a_request_on_a_connection_pymodbus_knows_is_gone_is_a_connect_error_not_a_crash(simulator) -> None:
    """pymodbus raises ConnectionException as soon as a request is made on a closed connection, before
    anything is awaited; that once escaped the link and crashed the adapter (seen in `make bench`)."""
    sim = simulator()
    port = sim.start_tcp()
    device = ModbusDevice(name="press", transport="tcp", host="127.0.0.1", port=port, tags_csv="press.csv")

    async def scenario() -> RequestError:
        link = ModbusLink(f"tcp://127.0.0.1:{port}", device, 1.0)
        await link.connect(2.0)
        assert await link.read("holding", 0, 1, 1, 1.0) is not None
        link.client.close()  # what pymodbus does when the peer goes away
        with pytest.raises(RequestError) as refused:
            await link.read("holding", 0, 1, 1, 1.0)
        with pytest.raises(RequestError):
            await link.write_registers(0, [1], 1, 1.0)
        return refused.value

    error = asyncio.run(scenario())
    assert error.kind == "connect"


def test_unit_ids_255_and_0_that_modbus_tcp_devices_commonly_use_are_polled(simulator, harness) -> None:
    sim = simulator((0, 255))  # 0: the server's default device, answering unit 0 (and any other)
    port = sim.start_tcp()
    sim.set("holding", 0, [255], unit=255)
    sim.set("holding", 0, [7], unit=0)
    devices = "".join(
        f"""
[[devices]]
name = "u{unit}"
transport = "tcp"
host = "127.0.0.1"
port = {port}
unit = {unit}
poll_ms = 100

[[devices.tags]]
name = "value"
table = "holding"
address = 0
type = "uint16"
"""
        for unit in (255, 0)
    )

    async def scenario() -> None:
        async with harness(f'name = "line1"\nprotocol = "modbus"\n{devices}') as h:
            await eventually(lambda: h.recorder.good("u255/value", "u0/value"), what="both units read")
            assert (h.recorder.value("u255/value"), h.recorder.value("u0/value")) == (255, 7)

    asyncio.run(scenario())
    assert sim.sim.request_count(unit=255) >= 1 and sim.sim.request_count(unit=0) >= 1
