"""The bus scheduler: one per physical bus (a serial port, or a TCP endpoint or gateway), the only
owner of that bus's connection. It polls its devices' coalesced reads on staggered schedules, sends
queued writes ahead of polls, serialises everything on the bus (with the RTU inter-frame silence),
retries, backs a silent device off and probes it, and hands every reading to the sink. A coalesced
read the device refuses (illegal data address or value) falls back to one read per tag, so one bad
address spoils one tag, not its neighbours.

Separate buses run concurrently; tags never do their own I/O. Framing is pymodbus's (via link).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from adapters.base.commands import WriteRefused
from adapters.base.tag import Point, TagValue, now_ms
from adapters.modbus.codec import CodecError, NotFinite
from adapters.modbus.device_runtime import DeviceRuntime, Split
from adapters.modbus.link import ModbusLink, RequestError
from adapters.modbus.read_plan import ReadBlock, split_block
from adapters.modbus.register_map import DeviceMap, TagBinding
from gateway.backoff import Backoff

log = logging.getLogger(__name__)

Sink = Callable[[Point, TagValue], None]
MAX_QUEUED_WRITES = 256
CONNECT_BACKOFF_INITIAL_S = 0.2
# after a timeout on a serial line, a late answer may still be on the wire: let it pass before the next frame
SERIAL_DRAIN_S = 0.05
# exception codes that may mean "this read spans an address the device does not have": split the read
SPLIT_ON_CODES = (2, 3)  # illegal data address, illegal data value
# a split read tries its coalesced form again after this long (and whenever the device comes back)
COALESCED_RETRY_S = 600.0


class WriteFailed(Exception):
    """A write the device did not confirm."""


@dataclass
class WriteJob:
    device: DeviceRuntime
    binding: TagBinding
    value: Any
    registers: list[int] | bool | None  # None: a bit inside a register, written by read-modify-write
    future: asyncio.Future[Any]


class BusScheduler:
    def __init__(self, adapter: str, bus: str, devices: list[DeviceRuntime], sink: Sink):
        self.adapter = adapter
        self.bus = bus
        self.devices = devices
        self.sink = sink
        self.link = ModbusLink(bus, devices[0].config, max(d.timeout_s for d in devices))
        self.frame_gap_s = max(d.config.frame_gap_s for d in devices)
        self.connect_timeout_s = max(max(d.timeout_s for d in devices), 1.0)
        self.connect_backoff = Backoff(
            initial_s=CONNECT_BACKOFF_INITIAL_S, cap_s=max(d.config.backoff_max_ms for d in devices) / 1000
        )
        self.connect_reason: str | None = None
        self.requests = 0
        self._ever_connected = False
        self._answered_since_connect = False
        self._reconnect_at = 0.0  # loop time: a bus lost before anything answered waits for this
        self._writes: deque[WriteJob] = deque()
        self._wake = asyncio.Event()

    # ---- writes -------------------------------------------------------------------------------

    def submit_write(self, device: DeviceRuntime, binding: TagBinding, value: Any) -> asyncio.Future[Any]:
        try:
            if binding.tag.bit is not None:
                binding.codec.encode_bit(value, 0)
                registers = None
            else:
                registers = binding.codec.encode(value)
        except CodecError as exc:
            raise WriteRefused(f"{binding.point.key}: {exc}") from None
        if not self.link.connected and self.connect_reason:
            raise WriteRefused(f"{binding.point.key}: {self.bus} is not connected: {self.connect_reason}")
        if len(self._writes) >= MAX_QUEUED_WRITES:
            raise WriteRefused(f"{binding.point.key}: {MAX_QUEUED_WRITES} writes already queued on {self.bus}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._writes.append(WriteJob(device, binding, value, registers, future))
        self._wake.set()
        return future

    # ---- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Own the bus until cancelled."""
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        for device in self.devices:
            device.start(loop.time())
        try:
            while True:
                if me is not None and me.cancelling():
                    # Python 3.11's wait_for (inside pymodbus) drops a cancel that lands as an answer
                    # arrives; the request is done, so honour the cancel here
                    raise asyncio.CancelledError
                if not self.link.connected:
                    await self._connect()
                    continue
                if self._writes:
                    await self._write(self._writes.popleft())
                else:
                    found = self._next_read()
                    if found is None:
                        await self._sleep(None)
                        continue
                    device, index, due = found
                    if due > loop.time():
                        await self._sleep(due - loop.time())
                        continue
                    await self._poll(device, index)
                if self.frame_gap_s:
                    await asyncio.sleep(self.frame_gap_s)
        finally:
            self.link.close()
            for job in self._writes:
                if not job.future.done():
                    job.future.set_exception(WriteFailed("the adapter is stopping"))

    async def _sleep(self, seconds: float | None) -> None:
        """Wait for `seconds` (forever if None) or until a write arrives."""
        if not self._writes:
            try:
                async with asyncio.timeout(seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
        self._wake.clear()

    def _next_read(self) -> tuple[DeviceRuntime, int, float] | None:
        best: tuple[DeviceRuntime, int, float] | None = None
        for device in self.devices:
            if device.probe_at is not None:
                if device.blocks and (best is None or device.probe_at < best[2]):
                    best = (device, 0, device.probe_at)
                continue
            for index, due in enumerate(device.due):
                if best is None or due < best[2]:
                    best = (device, index, due)
        return best

    async def _connect(self) -> None:
        wait = self._reconnect_at - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            await self.link.connect(self.connect_timeout_s)
        except RequestError as exc:
            if exc.reason != self.connect_reason:
                log.warning("adapter=%s bus=%s event=bus-unavailable reason=%s", self.adapter, self.bus, exc.reason)
            self.connect_reason = exc.reason
            self._ever_connected = False
            for device in self.devices:
                device.health.failed("connect")
                self._device_down(device, exc.reason, probe=False)
            self._fail_writes(exc.reason)
            await self._sleep(self.connect_backoff.next_delay())
            self._fail_writes(exc.reason)
            return
        if not self._ever_connected:
            log.info("adapter=%s bus=%s event=bus-connected devices=%d", self.adapter, self.bus, len(self.devices))
            self._ever_connected = True
            now = asyncio.get_running_loop().time()
            for device in self.devices:
                if device.probe_at is not None and self.connect_reason is not None:
                    device.probe_at = now  # it was unreachable only because the bus was: try it at once
        self.connect_reason = None
        self._answered_since_connect = False  # the backoff is reset by the first answer, not the connect

    def _answered(self) -> None:
        """A device answered on this connection: the bus works."""
        if not self._answered_since_connect:
            self._answered_since_connect = True
            self.connect_backoff.reset()

    def _fail_writes(self, reason: str) -> None:
        while self._writes:
            job = self._writes.popleft()
            job.device.health.writes_failed += 1
            if not job.future.done():
                job.future.set_exception(WriteFailed(f"{job.device.name}: {reason}"))

    # ---- one request --------------------------------------------------------------------------

    async def _poll(self, device: DeviceRuntime, index: int) -> None:
        block = device.blocks[index]
        loop = asyncio.get_running_loop()
        probing = device.probe_at is not None
        attempts = 1 if probing else device.config.retries + 1
        parts = device.split_parts(index, loop.time())
        coalesced = parts is None
        if coalesced:
            result = await self._read(device, block, attempts)
            if isinstance(result, RequestError) and result.kind == "exception" and result.code in SPLIT_ON_CODES:
                parts = self._split(device, index, result.reason, loop.time())
            if parts is None:
                if not self._settle(device, block, result):
                    return
                if index in device.splits and not isinstance(result, RequestError):
                    self._unsplit(device, index)
        for number, part in enumerate(parts or ()):
            if (number or coalesced) and not await self._between_requests():
                return  # a write in between lost the bus
            if not self._settle(device, part, await self._read(device, part, attempts)):
                return
        if probing or device.health.state != "up":
            self._device_up(device, index, loop.time())
        else:
            device.reschedule(index, loop.time())

    async def _read(self, device: DeviceRuntime, block: ReadBlock, attempts: int) -> list[Any] | RequestError:
        """The block's values, or the error of its last attempt (timeouts and garbage are retried)."""
        error = RequestError("timeout", "no attempt")
        for _ in range(attempts):
            started = time.monotonic()
            self.requests += 1
            try:
                data = await self.link.read(block.table, block.start, block.count, device.unit, device.timeout_s)
            except RequestError as exc:
                error = exc
                if await self._failed_attempt(device, exc):
                    break
                continue
            device.health.answered(time.monotonic() - started)
            self._answered()
            return data
        return error

    async def _failed_attempt(self, device: DeviceRuntime, exc: RequestError) -> bool:
        """Count a failed request; True when retrying is pointless (the device answered with an
        exception, or the link itself failed), else wait out a serial line's noise before the retry."""
        device.health.failed(exc.kind)
        if exc.kind == "exception":
            self._answered()
        if exc.kind in ("exception", "connect", "internal"):
            return True
        if self.link.serial:
            await asyncio.sleep(max(SERIAL_DRAIN_S, self.frame_gap_s))
        return False

    def _settle(self, device: DeviceRuntime, block: ReadBlock, result: list[Any] | RequestError) -> bool:
        """Hand out what one read brought; False if the device or the bus is gone (the poll stops)."""
        if not isinstance(result, RequestError):
            self._deliver(device, block, result)
        elif result.kind in ("exception", "internal"):
            self._read_refused(device, block, result)
        elif result.kind == "connect":
            self._bus_lost(result.reason)
            return False
        else:
            self._device_down(device, result.reason)
            return False
        return True

    async def _between_requests(self) -> bool:
        """Between the requests of one poll: the line's silence, and the writes queued meanwhile first.
        False if the bus is no longer connected."""
        while True:
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise asyncio.CancelledError
            if self.frame_gap_s:
                await asyncio.sleep(self.frame_gap_s)
            if not self._writes or not self.link.connected:
                return self.link.connected
            await self._write(self._writes.popleft())

    def _split(self, device: DeviceRuntime, index: int, reason: str, now: float) -> list[ReadBlock] | None:
        """Read block `index` tag by tag from now on (until COALESCED_RETRY_S or the device comes back)."""
        block = device.blocks[index]
        parts = split_block(block)
        if len(parts) < 2:
            return None
        again = index in device.splits
        device.splits[index] = Split(parts, now + COALESCED_RETRY_S)
        (log.debug if again else log.warning)(
            "adapter=%s device=%s event=read-split block=%s reason=%s reads=%d retry_s=%.0f",
            self.adapter,
            device.name,
            block.describe(),
            reason,
            len(parts),
            COALESCED_RETRY_S,
        )
        return parts

    def _unsplit(self, device: DeviceRuntime, index: int) -> None:
        split = device.splits.pop(index)
        for part in split.parts:
            device.read_reason.pop(part.describe(), None)
        log.info(
            "adapter=%s device=%s event=read-coalesced block=%s",
            self.adapter,
            device.name,
            device.blocks[index].describe(),
        )

    def _deliver(self, device: DeviceRuntime, block: ReadBlock, data: list[Any]) -> None:
        if device.read_reason.pop(block.describe(), None) is not None:
            log.info("adapter=%s device=%s event=read-recovered block=%s", self.adapter, device.name, block.describe())
        ts = now_ms()
        for binding in block.tags:
            try:
                reading = TagValue.good(binding.codec.decode(data, binding.first - block.start), ts)
            except NotFinite as exc:  # NaN or an infinity: the device's way of flagging a fault
                reading = TagValue.bad(str(exc), ts)
            except (ValueError, IndexError) as exc:
                reading = TagValue.bad(f"cannot decode {binding.tag.type}: {exc}", ts)
            self.sink(binding.point, reading)

    def _read_refused(self, device: DeviceRuntime, block: ReadBlock, error: RequestError) -> None:
        """The device refused the read (an exception code), or it failed unexpectedly: its tags are bad."""
        reason = f"{error.reason} reading {block.describe()}"
        key = block.describe()
        if device.read_reason.get(key) != reason:
            internal = error.kind == "internal"
            log.warning(
                "adapter=%s device=%s event=%s reason=%s",
                self.adapter,
                device.name,
                "request-failed" if internal else "read-refused",
                reason,
                exc_info=error.__cause__ if internal else None,
            )
            device.read_reason[key] = reason
        ts = now_ms()
        for binding in block.tags:
            self.sink(binding.point, TagValue.bad(reason, ts))

    def _device_up(self, device: DeviceRuntime, index: int, now: float) -> None:
        device.health.set_up()
        device.backoff.reset()
        device.probe_at = None
        device.due = [now] * len(device.blocks)
        device.due[index] = now + device.blocks[index].period_s

    def _device_down(self, device: DeviceRuntime, reason: str, probe: bool = True) -> None:
        if device.health.state != "down":
            device.forget_splits()
        if device.health.set_down(reason):
            ts = now_ms()
            for binding in device.bindings:
                self.sink(binding.point, TagValue.bad(reason, ts))
        if probe:
            device.probe_at = asyncio.get_running_loop().time() + device.backoff.next_delay()
        elif device.probe_at is None:
            device.probe_at = asyncio.get_running_loop().time()
        if not self.link.serial and all(d.health.state == "down" for d in self.devices):
            # nobody answers on this endpoint: start the next attempt from a fresh connection
            self.link.close()

    def _bus_lost(self, reason: str) -> None:
        log.warning("adapter=%s bus=%s event=bus-lost reason=%s", self.adapter, self.bus, reason)
        self.link.close()
        if not self._answered_since_connect:
            # lost again before anything answered (a port that opens but fails every request): back off,
            # or connect, fail and reconnect would spin
            self._reconnect_at = asyncio.get_running_loop().time() + self.connect_backoff.next_delay()
        for device in self.devices:
            device.forget_splits()

    async def _write(self, job: WriteJob) -> None:
        device, binding = job.device, job.binding
        tag = binding.tag
        attempts = 1 if device.probe_at is not None else device.config.retries + 1
        error: RequestError | None = None
        for _ in range(attempts):
            started = time.monotonic()
            self.requests += 1
            try:
                if tag.is_bit:
                    assert isinstance(job.registers, bool)
                    await self.link.write_coil(tag.address, job.registers, device.unit, device.timeout_s)
                    written: Any = job.registers
                elif job.registers is None:
                    [register] = await self.link.read("holding", tag.address, 1, device.unit, device.timeout_s)
                    updated = binding.codec.encode_bit(job.value, register)
                    if self.frame_gap_s:  # two frames: the line's silence between them too
                        await asyncio.sleep(self.frame_gap_s)
                    await self.link.write_registers(tag.address, [updated], device.unit, device.timeout_s)
                    written = [updated]
                else:
                    assert isinstance(job.registers, list)
                    await self.link.write_registers(tag.address, job.registers, device.unit, device.timeout_s)
                    written = job.registers
            except RequestError as exc:
                error = exc
                if await self._failed_attempt(device, exc):
                    break
                continue
            device.health.answered(time.monotonic() - started)
            self._answered()
            device.health.writes_ok += 1
            if not job.future.done():
                self._settle_write(job, written)
            self._read_soon(device, tag.table, binding)
            return
        assert error is not None
        device.health.writes_failed += 1
        reason = error.reason
        if error.kind == "internal":
            reason += f" writing {tag.table} {tag.address}"
            log.warning(
                "adapter=%s device=%s event=request-failed tag=%s reason=%s",
                self.adapter,
                device.name,
                binding.point.key,
                reason,
                exc_info=error.__cause__,
            )
        if not job.future.done():
            job.future.set_exception(WriteFailed(f"{device.name}: {reason}"))
        if error.kind == "connect":
            self._bus_lost(error.reason)

    @staticmethod
    def _settle_write(job: WriteJob, written: Any) -> None:
        """The write's result: the value its registers now hold (a coil's bool as it is)."""
        if isinstance(written, bool):
            job.future.set_result(written)
            return
        try:
            job.future.set_result(job.binding.codec.decode(written, 0))
        except (ValueError, IndexError, struct.error) as exc:  # NotFinite too: encode should never let one by
            tag = job.binding.tag
            job.future.set_exception(
                WriteFailed(f"{job.device.name}: {tag.table} {tag.address} written, but it holds no valid value: {exc}")
            )

    @staticmethod
    def _read_soon(device: DeviceRuntime, table: str, binding: TagBinding) -> None:
        """Read back the blocks holding a written tag at once, so its new value is published."""
        if device.probe_at is not None:
            return
        now = asyncio.get_running_loop().time()
        for index, block in enumerate(device.blocks):
            if block.table == table and block.start <= binding.last and binding.first <= block.end:
                device.due[index] = min(device.due[index], now)

    def status(self) -> dict[str, Any]:
        return {
            d.name: {
                "bus": self.bus,
                "unit": d.unit,
                **d.health.snapshot(),
                "split_reads": sorted(d.blocks[i].describe() for i in d.splits),
            }
            for d in self.devices
        }


class Buses:
    """Every bus scheduler of one adapter, and the way in for writes addressed by tag."""

    def __init__(self, adapter: str, device_maps: Iterable[DeviceMap], sink: Sink):
        maps = list(device_maps)
        runtimes = [DeviceRuntime(adapter, m, index / max(len(maps), 1)) for index, m in enumerate(maps)]
        by_bus: dict[str, list[DeviceRuntime]] = {}
        for runtime in runtimes:
            by_bus.setdefault(runtime.config.bus, []).append(runtime)
        self.schedulers = [BusScheduler(adapter, bus, members, sink) for bus, members in by_bus.items()]
        self._targets: dict[str, tuple[BusScheduler, DeviceRuntime, TagBinding]] = {}
        for scheduler in self.schedulers:
            for runtime in scheduler.devices:
                for binding in runtime.bindings:
                    self._targets[binding.point.key] = (scheduler, runtime, binding)

    @property
    def points(self) -> list[Point]:
        return [binding.point for _, _, binding in self._targets.values()]

    def submit_write(self, point: Point, value: Any) -> asyncio.Future[Any]:
        target = self._targets.get(point.key)
        if target is None:
            raise WriteRefused(f"no Modbus tag {point.key}")
        scheduler, runtime, binding = target
        return scheduler.submit_write(runtime, binding, value)

    def status(self) -> dict[str, Any]:
        devices: dict[str, Any] = {}
        for scheduler in self.schedulers:
            devices.update(scheduler.status())
        return devices

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for scheduler in self.schedulers:
                tasks.create_task(scheduler.run(), name=f"bus {scheduler.bus}")
