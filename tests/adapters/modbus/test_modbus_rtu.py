"""The Modbus adapter over a serial line: a real pymodbus RTU server on one end of a socat pty pair,
several unit ids on the one line, reads and writes serialised, a silent unit, and a missing port.
"""

from __future__ import annotations

import asyncio

from conftest import eventually


def rtu_adapter(port: str, extra_device: str = "") -> str:
    return f"""
name = "line2"
protocol = "modbus"

[[devices]]
name = "drive-1"
transport = "rtu"
port = "{port}"
baudrate = 115200
unit = 1
poll_ms = 50
timeout_ms = 200
retries = 1
backoff_max_ms = 1000

[[devices.tags]]
name = "speed"
table = "holding"
address = 0
type = "float32"
word_order = "little"

[[devices.tags]]
name = "setpoint"
table = "holding"
address = 2
type = "int16"
scale = 0.5
writable = true

[[devices.tags]]
name = "enable"
table = "coil"
address = 1
writable = true

[[devices]]
name = "drive-2"
transport = "rtu"
port = "{port}"
baudrate = 115200
unit = 2
poll_ms = 50
timeout_ms = 200
retries = 1
backoff_max_ms = 1000

[[devices.tags]]
name = "speed"
table = "holding"
address = 0
type = "float32"
word_order = "little"

[[devices.tags]]
name = "name"
table = "input"
address = 10
type = "string"
length = 2
{extra_device}
"""


def test_two_units_on_one_rs485_line_read_write_and_a_silent_unit(simulator, harness, pty_pair) -> None:
    server_end, adapter_end = pty_pair
    sim = simulator((1, 2))
    sim.start_serial(server_end, baudrate=115200)
    sim.set("holding", 0, [0x0000, 0x3FC0], unit=1)  # 1.5, low word first
    sim.set("holding", 0, [0x0000, 0xC020], unit=2)  # -2.5
    sim.set("input", 10, [0x4D32, 0x0000], unit=2)  # "M2"

    async def scenario() -> None:
        async with harness(rtu_adapter(adapter_end)) as h:
            await eventually(lambda: h.recorder.good("drive-1/speed", "drive-2/speed", "drive-2/name"), what="reads")
            assert h.recorder.value("drive-1/speed") == 1.5
            assert h.recorder.value("drive-2/speed") == -2.5
            assert h.recorder.value("drive-2/name") == "M2"
            assert await h.write("drive-1/setpoint", -10.5) == -10.5
            assert await h.write("drive-1/enable", True) is True
            sim.sim.muted.add(2)
            await eventually(lambda: h.recorder.bad("drive-2/speed", "no answer from unit 2"), what="unit 2 silent")
            sim.set("holding", 0, [0x0000, 0x4000], unit=1)  # 2.0
            await eventually(lambda: h.recorder.value("drive-1/speed") == 2.0, what="unit 1 still polled")
            sim.sim.muted.discard(2)
            await eventually(lambda: h.recorder.good("drive-2/speed"), timeout_s=5, what="unit 2 back")
            assert h.buses.status()["drive-2"]["errors"]["timeout"] >= 2
            assert h.buses.status()["drive-1"]["writes_ok"] == 2

    asyncio.run(scenario())
    assert sim.get("holding", 2, unit=1) == [(-21) & 0xFFFF]
    assert sim.get("coil", 1, unit=1) == [True]
    assert sim.get("coil", 1, unit=2) == [False]


MISSING_PORT_DEVICE = """
[[devices]]
name = "ghost"
transport = "rtu"
port = "/dev/ttyMILLGATE-NOPE"
unit = 3
poll_ms = 50

[[devices.tags]]
name = "speed"
table = "holding"
address = 0
type = "uint16"
writable = true
"""


def test_missing_serial_port_is_reported_and_the_other_line_keeps_running(simulator, harness, pty_pair) -> None:
    server_end, adapter_end = pty_pair
    sim = simulator((1, 2))
    sim.start_serial(server_end, baudrate=115200)
    sim.set("holding", 0, [0x0000, 0x3FC0], unit=1)

    async def scenario() -> None:
        async with harness(rtu_adapter(adapter_end, MISSING_PORT_DEVICE)) as h:
            await eventually(lambda: h.recorder.bad("ghost/speed", "/dev/ttyMILLGATE-NOPE does not exist"), what="bad")
            await eventually(lambda: h.recorder.good("drive-1/speed"), what="the real line")
            try:
                await h.write("ghost/speed", 1)
            except Exception as exc:
                assert "does not exist" in str(exc)
            else:
                raise AssertionError("a write to a missing port succeeded")
            assert h.buses.status()["ghost"]["state"] == "down"

    asyncio.run(scenario())


def busy_line(port: str) -> str:
    """Two units polled every 20 ms, three reads each, with a 10 ms silence between frames."""
    devices = ""
    for unit in (1, 2):
        devices += f"""
[[devices]]
name = "drive-{unit}"
transport = "rtu"
port = "{port}"
baudrate = 115200
unit = {unit}
poll_ms = 20
timeout_ms = 500
inter_frame_ms = 10
max_gap = 0
"""
        for name, address, extra in (("a", 0, ""), ("b", 10, ""), ("c", 20, "")):
            devices += f'\n[[devices.tags]]\nname = "{name}"\ntable = "holding"\naddress = {address}\ntype = "uint16"\n'
            devices += f"writable = true\n{extra}"
        devices += '\n[[devices.tags]]\nname = "flag"\ntable = "holding"\naddress = 30\ntype = "bool"\nbit = 3\n'
        devices += "writable = true\n"
    return f'name = "line2"\nprotocol = "modbus"\n{devices}'


def test_requests_never_overlap_on_one_serial_line_and_keep_the_inter_frame_silence(
    simulator, harness, pty_pair
) -> None:
    """Polls of two units and writes from concurrent commands (a bit-in-register write is a read and
    a write) share one RS-485 line: the server must see request, answer, request, answer... and at
    least inter_frame_ms of silence between an answer and the next request."""
    server_end, adapter_end = pty_pair
    sim = simulator((1, 2))
    sim.start_serial(server_end, baudrate=115200)

    async def scenario() -> None:
        async with harness(busy_line(adapter_end)) as h:
            await eventually(lambda: h.recorder.good("drive-1/a", "drive-2/c"), what="both units read")

            async def commands(unit: int) -> None:
                for n in range(8):
                    await h.write(f"drive-{unit}/{'abc'[n % 3]}", n)
                    await h.write(f"drive-{unit}/flag", n % 2 == 0)

            await asyncio.gather(commands(1), commands(2))
            await asyncio.sleep(0.3)

    asyncio.run(scenario())
    wire = list(sim.sim.wire)
    kinds = [kind for _, kind in wire]
    assert len(kinds) > 100, len(kinds)
    overlaps = [i for i in range(1, len(kinds)) if kinds[i] == kinds[i - 1]]
    assert kinds[0] == "request" and not overlaps, f"two {kinds[overlaps[0]]}s in a row at {overlaps[0]}"
    silences = [wire[i + 1][0] - wire[i][0] for i in range(1, len(wire) - 1, 2)]  # answer -> next request
    assert min(silences) >= 0.0095, f"{min(silences) * 1000:.2f} ms between an answer and the next request"
    writes = [r for r in sim.sim.requests if r.function in (5, 6, 15, 16)]
    assert len(writes) == 32  # 16 per unit, each flag write preceded by its read
    assert sim.get("holding", 30, unit=1)[0] & 0b1000 == 0  # the last flag written was False (n = 7)
