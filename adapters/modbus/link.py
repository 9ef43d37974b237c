"""One pymodbus client per physical bus (a TCP endpoint or a serial port): connect, read a block,
write registers or a coil, each under a deadline, with every failure turned into a RequestError
whose kind (connect, timeout, exception, garbage) and reason say what went wrong where.

It never retries or schedules; the bus scheduler decides what to send and when.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from gateway.adapter_config import ModbusDevice

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
# a TCP gateway answering for a dead RTU slave: the slave is as good as timed out
TIMEOUT_LIKE_EXCEPTIONS = (10, 11)
NEVER_DISCONNECT = 1 << 30


class RequestError(Exception):
    def __init__(self, kind: str, reason: str, code: int | None = None):
        super().__init__(reason)
        # connect | timeout | exception (the device refused) | garbage (an answer that is not Modbus) |
        # internal (anything else raised while making the request: that request failed, nothing more)
        self.kind = kind
        self.reason = reason
        self.code = code


class ModbusLink:
    def __init__(self, bus: str, device: ModbusDevice, timeout_s: float):
        self.bus = bus
        self.serial = device.transport == "rtu"
        self.port_path = str(device.port) if self.serial else None
        client: AsyncModbusSerialClient | AsyncModbusTcpClient
        # retries and reconnects are the scheduler's (per device, with backoff); pymodbus does neither
        if self.serial:
            client = AsyncModbusSerialClient(
                str(device.port),
                baudrate=device.baudrate,
                bytesize=device.bytesize,
                parity=device.parity,
                stopbits=device.stopbits,
                timeout=timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        else:
            client = AsyncModbusTcpClient(
                str(device.host), port=int(device.port or 502), timeout=timeout_s, retries=0, reconnect_delay=0
            )
        # a dead unit behind a TCP gateway must not drop the connection its neighbours use
        client.set_max_no_responses(NEVER_DISCONNECT)
        self.client = client

    @property
    def connected(self) -> bool:
        return self.client.connected

    async def connect(self, timeout_s: float) -> None:
        if self.serial and self.port_path and not os.path.exists(self.port_path):
            raise RequestError("connect", f"serial port {self.port_path} does not exist (is the adapter plugged in?)")
        try:
            async with asyncio.timeout(timeout_s):
                ok = await self.client.connect()
        except TimeoutError:
            ok = False
        except OSError as exc:
            raise RequestError("connect", f"cannot open {self.bus}: {exc.strerror or exc}") from None
        if not ok:
            self.client.close()
            what = "cannot open serial port" if self.serial else "connection refused or unreachable:"
            raise RequestError("connect", f"{what} {self.bus.split('://', 1)[1]}")

    def close(self) -> None:
        self.client.close()

    async def read(self, table: str, start: int, count: int, unit: int, timeout_s: float) -> list[Any]:
        call = {
            "holding": self.client.read_holding_registers,
            "input": self.client.read_input_registers,
            "coil": self.client.read_coils,
            "discrete": self.client.read_discrete_inputs,
        }[table]
        response = await self._execute(
            lambda: call(start, count=count, device_id=unit), timeout_s, unit, f"reading {count} from {table} {start}"
        )
        data = getattr(response, "bits" if table in ("coil", "discrete") else "registers", None)
        if data is None:
            raise RequestError("garbage", f"unit {unit} answered {type(response).__name__} to a read of {table}")
        if len(data) < count:
            raise RequestError("garbage", f"unit {unit} answered {len(data)} values to a read of {count}")
        return list(data[:count])

    async def write_registers(self, address: int, registers: list[int], unit: int, timeout_s: float) -> None:
        what = f"writing {len(registers)} to holding {address}"
        if len(registers) == 1:
            await self._execute(
                lambda: self.client.write_register(address, registers[0], device_id=unit), timeout_s, unit, what
            )
        else:
            await self._execute(
                lambda: self.client.write_registers(address, registers, device_id=unit), timeout_s, unit, what
            )

    async def write_coil(self, address: int, value: bool, unit: int, timeout_s: float) -> None:
        await self._execute(
            lambda: self.client.write_coil(address, value, device_id=unit), timeout_s, unit, f"writing coil {address}"
        )

    async def _execute(self, request: Callable[[], Awaitable[Any]], timeout_s: float, unit: int, what: str) -> Any:
        """`request` is called in here: pymodbus raises ConnectionException as soon as it is called on a
        connection it knows is gone, before there is anything to await. Whatever else one request raises
        is that request failing (a RequestError naming the unit and address), never the adapter's crash."""
        try:
            async with asyncio.timeout(timeout_s):
                response = await request()
        except TimeoutError:
            raise RequestError("timeout", f"no answer from unit {unit} within {timeout_s * 1000:.0f} ms") from None
        except ConnectionException as exc:
            raise RequestError("connect", f"{self.bus} not connected: {exc}") from None
        except ModbusIOException as exc:
            text = str(exc)
            if "No response" in text:
                raise RequestError("timeout", f"no answer from unit {unit} within {timeout_s * 1000:.0f} ms") from None
            raise RequestError("garbage", f"unit {unit}: invalid answer: {text}") from None
        except ModbusException as exc:
            raise RequestError("garbage", f"unit {unit}: invalid answer: {exc}") from None
        except OSError as exc:  # the serial adapter unplugged mid-request, a socket error pymodbus let through
            raise RequestError("connect", f"{self.bus} failed {what} for unit {unit}: {exc.strerror or exc}") from None
        except Exception as exc:
            raise RequestError("internal", f"unit {unit}: unexpected {type(exc).__name__}: {exc}") from exc
        if not hasattr(response, "isError"):
            raise RequestError("garbage", f"unit {unit}: no usable answer {what}: {response!r}")
        if response.isError():
            code = getattr(response, "exception_code", None)
            name = EXCEPTION_NAMES.get(code or 0, "unknown")
            kind = "timeout" if code in TIMEOUT_LIKE_EXCEPTIONS else "exception"
            raise RequestError(kind, f"unit {unit} answered exception {code} ({name})", code)
        return response
