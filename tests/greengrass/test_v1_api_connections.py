"""The v1 HTTP API's connection slots (functions/greengrass/daemon.py), served for real on a free port:
sockets that any local process opens and leaves idle are dropped after READ_TIMEOUT_S, and those fed a
request a byte at a time after REQUEST_DEADLINE_S, so they cannot hold every slot and lock the v1
functions out; a worker's long poll, waiting for work longer than that, is not cut. The cap and the
deadline are lowered for the test.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

import pytest

from functions.greengrass import daemon
from functions.greengrass.service import GreengrassService
from gateway.config import Function
from tests.fixtures.gateway import free_port
from tests.fixtures.slow_clients import start_trickling

CAP = 4
T = TypeVar("T")


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


ARN = "arn:aws:lambda:us-east-1:123456789012:function:f:1"


def _serve_api(port: int, exercise: Callable[[], T], worker_token: str | None = None) -> T:
    """Serve the v1 API on `port` with one v1 function (and a worker of it holding `worker_token`) and
    run `exercise` (in a thread) once it answers."""
    function = Function(
        name="f", code="functions/f", handler="f.handler", run_as="1001:1001", runtime="greengrass-v1", daemon_port=port
    )

    async def run() -> T:
        service = GreengrassService({"f": function}, {"f": ARN}, [])
        if worker_token is not None:
            service.register("f", worker_token)
        stop = asyncio.Event()
        serving = asyncio.create_task(daemon.serve(service, stop))
        try:
            async with asyncio.timeout(10):
                while await asyncio.to_thread(_health, port) != 200:  # until it is bound
                    await asyncio.sleep(0.05)
            return await asyncio.to_thread(exercise)
        finally:
            stop.set()
            await serving

    return asyncio.run(run())


def test_idle_sockets_holding_every_slot_are_dropped_and_the_api_serves_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon, "MAX_CONNECTIONS", CAP)
    port = free_port()
    locked_out, waited, read = _serve_api(port, lambda: _lock_out_then_recover(port))
    assert locked_out != 200  # the cap was full: a worker's request was refused
    assert waited < daemon.READ_TIMEOUT_S + 2
    assert read == [b""] * CAP  # each idle socket was closed by the API, not by us


def test_requests_sent_a_byte_at_a_time_are_cut_at_the_deadline_but_a_long_poll_waits_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(daemon, "MAX_CONNECTIONS", CAP)
    monkeypatch.setattr(daemon._Server, "request_deadline_s", 3.0)
    port = free_port()

    def exercise() -> tuple[int | str, float, list[bytes], bool]:
        # a worker's long poll, in a slot of its own: there is no work for longer than the deadline
        poll = socket.create_connection(("127.0.0.1", port))
        poll.sendall(
            f"GET /2016-11-01/functions/{ARN}/work HTTP/1.1\r\nHost: x\r\nAuthorization: worker-token\r\n\r\n".encode()
        )
        stop = threading.Event()
        dribblers = [socket.create_connection(("127.0.0.1", port)) for _ in range(CAP - 1)]
        start_trickling(dribblers, b"GET /2016-11-01/health/workers HTTP/1.1", stop)
        try:
            time.sleep(0.5)
            locked_out = _health(port)
            started = time.monotonic()
            while _health(port) != 200:
                assert time.monotonic() - started < 10, "the API never served again"
                time.sleep(0.2)
            waited = time.monotonic() - started
            for connection in dribblers:
                connection.settimeout(5)
            read = [connection.recv(1) for connection in dribblers]
            poll.setblocking(False)
            try:
                poll.recv(1)  # an answer, or the end of the connection
                poll_open = False
            except BlockingIOError:
                poll_open = True  # nothing to read and not closed: still waiting for work
            return locked_out, waited, read, poll_open
        finally:
            stop.set()
            for connection in [poll, *dribblers]:
                connection.close()

    locked_out, waited, read, poll_open = _serve_api(port, exercise, worker_token="worker-token")
    assert locked_out != 200  # the long poll and the dribblers held every slot
    assert waited < 3.0 + 2, "cut at the deadline, not after the per-read timeout (never, for a dribbler)"
    assert read == [b""] * (CAP - 1)  # each dribbler was cut by the API
    assert poll_open, "a long poll waiting for work is not subject to the request deadline"
