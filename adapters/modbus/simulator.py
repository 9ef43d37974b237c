"""A simulated Modbus device (a pymodbus server) for the demo and the tests: holding and input
registers, coils and discrete inputs, with a register map that changes over time, a request log
(and when each request and answer crossed the wire), and switches that make a unit fall silent,
answer garbage, answer slowly, or refuse some addresses with an exception code.

    python -m adapters.modbus.simulator --host 127.0.0.1 --port 15020 [--period 0.5]
    python -m adapters.modbus.simulator --serial /dev/pts/3 --baudrate 19200
    python -m adapters.modbus.simulator --port 15502 --clock-tags 1000 --clock-rate 1000   (load + latency)

Not part of a production gateway: it is a stand-in for plant equipment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import struct
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

log = logging.getLogger("adapters.modbus.simulator")

REGISTERS = 12000
BITS = 8192
FUNCTION_TABLE = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete",
    4: "input",
    3: "holding",
    6: "holding",
    16: "holding",
}
READ_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
WRITE_CODES = {"coil": 15, "holding": 16}

# The demo map (etc/demo/adapters/line1.toml reads it); every address below is changed by `step`.
DEMO_MAP = """\
holding 0       uint16   cycle counter, +1 per step
holding 1-2     float32  temperature, degC, 20..30 sine (big word order)
holding 3-4     int32    parts produced, +3 per step
holding 5-6     float32  vibration, mm/s, same value in little word order (CDAB)
holding 7       uint16   status word, bit 0 = running, bit 1 = alarm (alarm every 10th step)
holding 10-17   string   "SIM-PRESS-01" (16 chars)
holding 20      uint16   speed setpoint (writable; the simulator never changes it)
input 0         int16    pressure x10, 950..1050
coil 0          bool     run command (writable)
discrete 0      bool     door closed, toggles every 5 steps
holding 1000-   uint32   with --clock-tags N: N clock tags (2 registers each, big word order), each
                         rewritten in turn with the wall clock in ms mod 2**32 (--clock-rate changes/s)
"""
CLOCK_ADDRESS = 1000
CLOCK_TICK_S = 0.01


@dataclass(frozen=True)
class Request:
    unit: int
    table: str
    function: int
    address: int
    count: int


class Simulator:
    """The server plus what tests need to see and steer it."""

    def __init__(self, units: Iterable[int] = (0,)):
        """`units`: the unit ids served, each with its own registers; 0 answers every unit id."""
        self.units = list(units)
        self.requests: list[Request] = []
        self.muted: set[int] = set()  # units that receive but never answer
        self.garbled: set[int] = set()  # units whose answers are corrupted on the wire
        # (table, address) -> the exception code any request touching that register is answered with
        # (holding and input registers): an address a real device does not have, or will not read
        self.refused: dict[tuple[str, int], int] = {}
        self.answer_delay_s = 0.0  # every request waits this long before it is answered (a slow device)
        self.wire: list[tuple[float, str]] = []  # (time.monotonic(), "request" | "answer") as the server saw them
        self.server: ModbusTcpServer | ModbusSerialServer | None = None
        self.steps = 0
        self._last_unit = 0
        self._direct = False  # the datastore is being set from this side, not over the wire

    def _devices(self) -> list[SimDevice]:
        return [
            SimDevice(
                id=unit,
                simdata=(
                    [SimData(0, count=BITS, values=False, datatype=DataType.BITS)],
                    [SimData(0, count=BITS, values=False, datatype=DataType.BITS)],
                    [SimData(0, count=REGISTERS, values=0, datatype=DataType.REGISTERS)],
                    [SimData(0, count=REGISTERS, values=0, datatype=DataType.REGISTERS)],
                ),
                action=self._action,
            )
            for unit in self.units
        ]

    async def _action(
        self,
        function: int,
        _start: int,
        address: int,
        count: int,
        _registers: list[int],
        _values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus calls this for every request it has validated, before answering it."""
        if self._direct:
            return None
        if self.answer_delay_s:
            await asyncio.sleep(self.answer_delay_s)
        table = FUNCTION_TABLE.get(function)
        if table in ("holding", "input"):
            for at in range(address, address + count):
                if (table, at) in self.refused:
                    return ExcCodes(self.refused[table, at])
        return None

    # ---- serving ------------------------------------------------------------------------------

    async def start_tcp(self, host: str, port: int) -> None:
        self.server = ModbusTcpServer(
            self._devices(), address=(host, port), trace_pdu=self._trace_pdu, trace_packet=self._trace_packet
        )
        await self.server.serve_forever(background=True)

    async def start_serial(self, port: str, baudrate: int = 19200, parity: str = "N", stopbits: int = 1) -> None:
        self.server = ModbusSerialServer(
            self._devices(),
            port=port,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            trace_pdu=self._trace_pdu,
            trace_packet=self._trace_packet,
        )
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self._last_unit = pdu.dev_id
            table = FUNCTION_TABLE.get(pdu.function_code, "?")
            count = getattr(pdu, "count", 0) or len(getattr(pdu, "registers", []) or getattr(pdu, "bits", []) or [])
            self.requests.append(Request(pdu.dev_id, table, pdu.function_code, pdu.address, count))
            self.wire.append((time.monotonic(), "request"))
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending and self._last_unit in self.muted:
            return b""
        if sending:
            self.wire.append((time.monotonic(), "answer"))
        if sending and self._last_unit in self.garbled and len(data) > 8:
            # same length, nonsense function code: a TCP frame still parses, an RTU frame fails its CRC
            at = 7 if isinstance(self.server, ModbusTcpServer) else 1
            return data[:at] + b"\x7f" + data[at + 1 :]
        return data

    def request_count(self, unit: int | None = None, table: str | None = None, reads_only: bool = True) -> int:
        return sum(
            1
            for r in self.requests
            if (unit is None or r.unit == unit)
            and (table is None or r.table == table)
            and (not reads_only or r.function in READ_CODES.values())
        )

    def reset_counts(self) -> Counter[str]:
        counts = Counter(r.table for r in self.requests)
        self.requests.clear()
        return counts

    # ---- the datastore ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _from_this_side(self) -> Iterator[None]:
        """The datastore read or set by the simulator itself: no delay, no refused address."""
        self._direct = True
        try:
            yield
        finally:
            self._direct = False

    async def get(self, table: str, address: int, count: int = 1, unit: int = 1) -> list[Any]:
        assert self.server is not None
        with self._from_this_side():
            return list(await self.server.async_getValues(unit, READ_CODES[table], address, count))

    async def set(self, table: str, address: int, values: list[int] | list[bool], unit: int = 1) -> None:
        assert self.server is not None
        with self._from_this_side():
            await self.server.async_setValues(unit, WRITE_CODES.get(table, READ_CODES[table]), address, values)

    async def set_direct(self, table: str, address: int, values: list[int] | list[bool], unit: int = 1) -> None:
        """Set values in any table, discrete inputs and input registers included (the device's own side)."""
        assert self.server is not None
        code = {"coil": 15, "discrete": 2, "holding": 16, "input": 4}[table]
        with self._from_this_side():
            await self.server.context.async_setValues(unit, code, address, values)

    # ---- the changing demo map ----------------------------------------------------------------

    async def load_demo(self, unit: int = 1) -> None:
        await self.set_direct("holding", 10, _string_registers("SIM-PRESS-01", 8), unit)
        await self.set_direct("holding", 20, [1200], unit)
        await self.step(unit)

    async def step(self, unit: int = 1) -> None:
        self.steps += 1
        n = self.steps
        temperature = 25 + 5 * math.sin(n / 10)
        vibration = 2.5 + math.sin(n / 3)
        hi, lo = struct.unpack(">HH", struct.pack(">f", temperature))
        vhi, vlo = struct.unpack(">HH", struct.pack(">f", vibration))
        parts = (n * 3) & 0xFFFFFFFF
        status = 1 | (2 if n % 10 == 0 else 0)
        await self.set_direct("holding", 0, [n & 0xFFFF, hi, lo, parts >> 16, parts & 0xFFFF, vlo, vhi, status], unit)
        await self.set_direct("input", 0, [round(1000 + 50 * math.sin(n / 7)) & 0xFFFF], unit)
        await self.set_direct("discrete", 0, [(n // 5) % 2 == 0], unit)

    async def run_changes(self, period_s: float, unit: int = 1) -> None:
        while True:
            await asyncio.sleep(period_s)
            await self.step(unit)

    # ---- clock tags: the load and latency benchmarks ------------------------------------------

    async def write_clock(self, first: int, count: int, tags: int, unit: int = 1) -> None:
        """Clock tags first..first+count-1 (wrapping at `tags`) := now in ms mod 2**32. A reader turns
        a value into the latency since this write without any side channel."""
        now = int(time.time() * 1000) & 0xFFFFFFFF
        words = [now >> 16, now & 0xFFFF]
        for start, stop in ((first, min(first + count, tags)), (0, max(first + count - tags, 0))):
            if stop > start:
                await self.set_direct("holding", CLOCK_ADDRESS + 2 * start, words * (stop - start), unit)

    async def run_clock(self, tags: int, rate: float, unit: int = 1) -> None:
        """Change `rate` clock tags per second, in turn, in small even steps (no once-a-second burst)."""
        loop = asyncio.get_running_loop()
        started, done, cursor = loop.time(), 0, 0
        while True:
            await asyncio.sleep(CLOCK_TICK_S)
            due = int((loop.time() - started) * rate) - done
            for _ in range(due // tags):  # more than one full round per tick: every tag each time
                await self.write_clock(0, tags, tags, unit)
            if due % tags:
                await self.write_clock(cursor, due % tags, tags, unit)
                cursor = (cursor + due % tags) % tags
            done += due


def _string_registers(text: str, registers: int) -> list[int]:
    data = text.encode().ljust(registers * 2, b"\x00")[: registers * 2]
    return list(struct.unpack(f">{registers}H", data))


async def _main(args: argparse.Namespace) -> None:
    simulator = Simulator()
    if args.serial:
        await simulator.start_serial(args.serial, args.baudrate)
        where = args.serial
    else:
        await simulator.start_tcp(args.host, args.port)
        where = f"{args.host}:{args.port}"
    await simulator.load_demo(unit=1)
    log.info("event=simulator-listening at=%s period_s=%s", where, args.period)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    changes = asyncio.create_task(simulator.run_changes(args.period))
    clock = None
    if args.clock_tags:
        clock = asyncio.create_task(simulator.run_clock(args.clock_tags, args.clock_rate or args.clock_tags))
    await stop.wait()
    changes.cancel()
    if clock is not None:
        clock.cancel()
    await simulator.stop()
    log.info("event=simulator-stopped requests=%d", len(simulator.requests))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.modbus.simulator",
        description="A simulated Modbus device with a changing register map:\n" + DEMO_MAP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=15020)
    parser.add_argument("--serial", help="serve Modbus RTU on this serial device instead of TCP")
    parser.add_argument("--baudrate", type=int, default=19200)
    parser.add_argument("--period", type=float, default=0.5, help="seconds between register map changes")
    max_clock = (REGISTERS - CLOCK_ADDRESS) // 2
    parser.add_argument("--clock-tags", type=int, default=0, help=f"clock tags from holding 1000 (0-{max_clock})")
    parser.add_argument("--clock-rate", type=float, default=0, help="clock tag changes per second (default: N)")
    args = parser.parse_args(argv)
    if not 0 <= args.clock_tags <= max_clock:
        parser.error(f"--clock-tags {args.clock_tags}: the simulator holds 0 to {max_clock} clock tags")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    started = time.monotonic()
    asyncio.run(_main(args))
    log.info("event=exit uptime_s=%.1f", time.monotonic() - started)


if __name__ == "__main__":
    main()
