"""The v1 HTTP API's connection slots (functions/greengrass/daemon.py), served for real on a free port:
sockets that any local process opens and leaves idle are dropped after READ_TIMEOUT_S, so they cannot
hold every slot and lock the v1 functions out. The cap is lowered to a handful for the test.
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request

import pytest

from functions.greengrass import daemon
from functions.greengrass.service import GreengrassService
from gateway.config import Function
from tests.fixtures.gateway import free_port

CAP = 4


def _health(port: int) -> int | str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/2016-11-01/health/workers", timeout=3) as response:
            return int(response.status)
    except OSError as exc:
        return repr(exc)


def _lock_out_then_recover(port: int) -> tuple[int | str, float, list[bytes]]:
    """Fill every slot with idle sockets: (a request's answer meanwhile, how long until one is served
    again, what each idle socket then reads)."""
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(CAP)]
    try:
        time.sleep(0.5)
        locked_out = _health(port)
        started = time.monotonic()
        while _health(port) != 200:
            assert time.monotonic() - started < daemon.READ_TIMEOUT_S + 10, "the API never served again"
            time.sleep(0.2)
        waited = time.monotonic() - started
        for connection in idle:
            connection.settimeout(5)
        return locked_out, waited, [connection.recv(1) for connection in idle]
    finally:
        for connection in idle:
            connection.close()


def test_idle_sockets_holding_every_slot_are_dropped_and_the_api_serves_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon, "MAX_CONNECTIONS", CAP)
    port = free_port()
    function = Function(
        name="f", code="functions/f", handler="f.handler", run_as="1001:1001", runtime="greengrass-v1", daemon_port=port
    )

    async def run() -> tuple[int | str, float, list[bytes]]:
        service = GreengrassService({"f": function}, {"f": "arn:aws:lambda:us-east-1:123456789012:function:f:1"}, [])
        stop = asyncio.Event()
        serving = asyncio.create_task(daemon.serve(service, stop))
        try:
            async with asyncio.timeout(10):
                while await asyncio.to_thread(_health, port) != 200:  # until it is bound
                    await asyncio.sleep(0.05)
            return await asyncio.to_thread(_lock_out_then_recover, port)
        finally:
            stop.set()
            await serving

    locked_out, waited, read = asyncio.run(run())
    assert locked_out != 200  # the cap was full: a worker's request was refused
    assert waited < daemon.READ_TIMEOUT_S + 2
    assert read == [b""] * CAP  # each idle socket was closed by the API, not by us
