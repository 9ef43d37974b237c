"""One on-demand worker as the dispatcher sees it: spawned under the function's uid/gid and groups,
put in a memory cgroup where possible, fed invocations over its stdin and answering on a pipe,
killed and forgotten on timeout or crash. Its stdout/stderr go to the function's log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from functions.limits import place_in_cgroup, remove_cgroup
from functions.mount_namespace import VolumeMount, wrap_command
from functions.privileges import can_switch_users
from functions.protocol import ProtocolError, b64, body_size, decode_body, encode_frame, header_size
from functions.user_log import UserLog

log = logging.getLogger(__name__)

INIT_TIMEOUT_S = 60.0


class WorkerFailed(Exception):
    """The worker could not start, or died, or broke the protocol."""


class InvocationTimeout(Exception):
    pass


# the longest line of a function's output copied to its log whole
LOG_LINE_MAX = 64 * 1024


@dataclass(frozen=True)
class WorkerSpec:
    function: str
    version: str
    code_dir: Path
    handler: str
    thing_name: str
    uid: int
    gid: int
    extra_groups: list[int]
    memory_mb: int
    environment: dict[str, str] = field(default_factory=dict)
    mounts: tuple[VolumeMount, ...] = ()  # volumes with a destination, in a mount namespace of its own

    def command(self, reply_fd: int) -> list[str]:
        # -P: the code dir (the cwd) must not shadow the runtime; the worker puts it on sys.path itself
        return [
            sys.executable,
            "-P",
            "-m",
            "functions.worker",
            "--function",
            self.function,
            "--version",
            self.version,
            "--code",
            str(self.code_dir),
            "--handler",
            self.handler,
            "--thing",
            self.thing_name,
            "--memory-mb",
            str(self.memory_mb),
            "--reply-fd",
            str(reply_fd),
        ]


class WorkerProcess:
    def __init__(self, spec: WorkerSpec, user_log: UserLog):
        self.spec = spec
        self.user_log = user_log
        self.process: asyncio.subprocess.Process | None = None
        self._replies: asyncio.StreamReader | None = None
        self._pipes: list[asyncio.Task[None]] = []
        self.cgroup: str | None = None
        self.idle_since = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def spawn(self, command: list[str], environment: dict[str, str], pass_fds: tuple[int, ...] = ()) -> None:
        """Start `command` as the function's uid/gid/groups in its code dir, its output to the function's
        log, in a memory cgroup where this machine allows one (`self.cgroup` says whether it did), with
        its volume destinations mounted (functions/mount_namespace.py, which then changes identity)."""
        identity: dict[str, Any] = {}
        refusals: int | None = None
        if self.spec.mounts:
            refusals, error_fd = os.pipe()
            pass_fds = (*pass_fds, error_fd)
            spec = self.spec
            command = wrap_command(spec.function, spec.uid, spec.gid, spec.extra_groups, spec.mounts, error_fd, command)
        elif can_switch_users():
            identity = {"user": self.spec.uid, "group": self.spec.gid, "extra_groups": self.spec.extra_groups}
        try:
            self.process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=pass_fds,
                env=environment,
                cwd=self.spec.code_dir,
                **identity,
            )
        except OSError as exc:
            raise WorkerFailed(f"cannot start a worker: {exc}") from exc
        finally:
            if refusals is not None:
                os.close(error_fd)
        if refusals is not None:
            refused = await asyncio.to_thread(_read_to_end, refusals)  # the end: it exec'd the worker
            if refused:
                log.error("function=%s event=mounts-refused reason=%s", self.spec.function, refused)
                await self.kill()
                raise WorkerFailed(f"volume destinations could not be mounted: {refused}")
        assert self.process.stdout is not None and self.process.stderr is not None
        self._pipes = [asyncio.create_task(self._copy_to_log(s)) for s in (self.process.stdout, self.process.stderr)]
        group = f"{self.spec.function}-{self.process.pid}"
        self.cgroup = group if place_in_cgroup(group, self.process.pid, self.spec.memory_mb) else None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        try:
            await self.spawn(self.spec.command(write_fd), self.spec.environment, (write_fd,))
        except WorkerFailed:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        replies = asyncio.StreamReader(limit=2**26)
        self._replies = replies
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(replies), os.fdopen(read_fd, "rb", 0))
        await self._send({"type": "init", "cgroup": self.cgroup is not None})
        try:
            async with asyncio.timeout(INIT_TIMEOUT_S):
                ready = await self._receive()
        except TimeoutError:
            await self.kill()
            raise WorkerFailed(f"the handler module did not load within {INIT_TIMEOUT_S:.0f} s") from None
        if ready.get("type") != "ready":
            await self.kill()
            raise WorkerFailed(f"the handler could not load: {ready.get('error')}")

    async def invoke(
        self, request_id: str, topic: str, payload: bytes, timeout_s: float, client_context: str | None = None
    ) -> dict[str, Any]:
        await self._send({"id": request_id, "topic": topic, "payload": b64(payload), "timeout_s": timeout_s})
        try:
            async with asyncio.timeout(timeout_s):
                return await self._receive()
        except TimeoutError:
            await self.kill()
            raise InvocationTimeout(f"Task timed out after {timeout_s:g} seconds") from None

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        for task in self._pipes:
            task.cancel()
        if self.cgroup:
            remove_cgroup(self.cgroup)
            self.cgroup = None

    async def stop(self) -> None:
        """Close stdin (the worker returns when it sees the end) and wait briefly, else kill."""
        if self.process is None or self.process.returncode is not None:
            await self.kill()
            return
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            async with asyncio.timeout(2):
                await self.process.wait()
        except TimeoutError:
            pass
        await self.kill()

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(encode_frame(message))
            await self.process.stdin.drain()
        except (ConnectionError, BrokenPipeError) as exc:
            await self.kill()
            raise WorkerFailed(f"worker {self.pid} is gone: {exc}") from exc

    async def _receive(self) -> dict[str, Any]:
        assert self._replies is not None
        try:
            header = await self._replies.readexactly(header_size())
            return decode_body(await self._replies.readexactly(body_size(header)))
        except (asyncio.IncompleteReadError, ProtocolError, ValueError) as exc:
            code = self.process.returncode if self.process else None
            await self.kill()
            raise WorkerFailed(f"worker {self.pid} died or broke the protocol (exit {code}): {exc}") from exc

    async def _copy_to_log(self, stream: asyncio.StreamReader) -> None:
        """Each line the function prints, to its log; a line longer than LOG_LINE_MAX is cut there (the
        rest up to its newline dropped, said so) so that one huge print neither stops the copying nor
        leaves the function blocked on a full pipe."""
        prefix = f"[{self.spec.function} pid={self.pid}] "
        pending = b""
        cut = 0  # bytes of the current line dropped so far
        while chunk := await stream.read(LOG_LINE_MAX):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if cut:
                    self.user_log.write(f"{prefix}[... {cut + len(line)} more bytes of that line dropped]\n")
                    cut = 0
                else:
                    self.user_log.write(prefix + line.decode(errors="replace") + "\n")
            if len(pending) > LOG_LINE_MAX:
                if not cut:
                    self.user_log.write(prefix + pending[:LOG_LINE_MAX].decode(errors="replace") + "\n")
                    cut, pending = len(pending) - LOG_LINE_MAX, b""
                else:
                    cut, pending = cut + len(pending), b""
        if pending and not cut:
            self.user_log.write(prefix + pending.decode(errors="replace") + "\n")


def _read_to_end(fd: int) -> str:
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")
