"""A long-lived (pinned) function, one supervised process `fn-<name>`: it puts itself in a memory cgroup
where it can (functions/limits.py), drops to the function's uid, runs the module's init once in its own
thread (it may loop forever, as the periodic-task pattern does) and, in another, feeds the messages
routed to it, in arrival order, to its handler as soon as the module has defined one (even while the
init still runs); a module with no handler is legal. A handler call that outlives the function's timeout
is answered for, counted, and ends the process: a thread stuck in user code cannot be stopped from
inside, so supervisord restarts the function.

A long-lived Greengrass v1 function is instead this process exec'ing the v1 runtime
(functions/greengrass/lambda_runtime.py): the core takes its messages and hands them over, in order,
through the v1 API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from functions.function_stats import FunctionStats
from functions.handler import FunctionIdentity, Handler, call_handler, load_handler
from functions.limits import MIB, RUNTIME_HEADROOM_MB, limit_address_space, place_self_in_cgroup
from functions.mount_namespace import MountRefused, enter_private_mounts
from functions.privileges import drop_privileges
from functions.runner_spec import RunnerSpec, read_spec
from gateway.backoff import sleep_or_stop
from gateway.component import component_arguments, component_credentials, stop_on_signals
from gateway.credentials import Credentials
from gateway.function_deploy import read_manifest
from gateway.logs import setup_logging as setup_component_logging
from gateway.mqtt import LocalMqtt, MqttError, Received
from gateway.paths import GatewayPaths
from gateway.topics import invoke_topic

log = logging.getLogger("functions.pinned")

REPLY_TIMEOUT_S = 10.0
HANDLER_POLL_S = (0.02, 1.0)  # first and longest wait between looks for the handler while init runs
# The broker does not hold QoS 1 messages back at this client's Receive Maximum once acknowledgements
# interleave (mosquitto 2.0.11, Debian 12's: 18,000 unacknowledged against a window of 50, measured),
# so this runner's queue is what bounds them, inside the runtime's memory headroom (functions/limits.py).
# A queued message costs about 7 KB (mostly paho's MQTT 5 properties object; 10,000 took 70 MB).
QUEUED_MESSAGE_BYTES = 8 * 1024
MAX_QUEUED = RUNTIME_HEADROOM_MB * MIB // 2 // QUEUED_MESSAGE_BYTES
EXIT_TIMEOUT = 4  # a handler call timed out: not in the program's exitcodes, so supervisord restarts it


class TimeoutCount:
    """Handler timeouts since supervisord started: each one restarts this process, so the count lives in
    a file in the run dir, opened before the privilege drop and tagged with supervisord's pid."""

    def __init__(self, path: Path):
        self.path = path
        self.tag = str(os.getppid())
        self.fd: int | None = None
        self.value = 0
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            recorded = os.pread(self.fd, 64, 0).decode(errors="replace").split()
        except OSError as exc:
            log.warning("event=timeout-count-unavailable path=%s reason=%s (counted per process only)", path, exc)
            return
        if len(recorded) == 2 and recorded[0] == self.tag and recorded[1].isdigit():
            self.value = int(recorded[1])

    def add(self) -> int:
        self.value += 1
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
                os.pwrite(self.fd, f"{self.tag} {self.value}\n".encode(), 0)
                os.fsync(self.fd)
            except OSError as exc:
                log.warning("event=timeout-count-not-saved path=%s reason=%s", self.path, exc)
        return self.value


class PinnedFunction:
    def __init__(self, name: str, queue_size: int, identity: FunctionIdentity, timeout_s: float):
        self.name = name
        self.identity = identity
        self.timeout_s = timeout_s
        self.inbox: deque[Received] = deque()
        self.queue_size = queue_size
        self.wakeup = threading.Condition()
        self.stats = FunctionStats()
        self.handler: Handler | None = None
        self.init = "running"  # the module's import: running (perhaps forever), done or failed
        self.without_handler = False  # the import finished and defined no handler: messages are refused
        self.problems: list[str] = []
        self.acknowledge: Callable[[Received], None] = lambda _message: None
        self.mqtt: LocalMqtt | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.running: tuple[Received, str, float] | None = None  # message, request id, monotonic start
        self.timed_out = False
        self.timeout_count: TimeoutCount | None = None

    def bind(self, mqtt: LocalMqtt) -> None:
        """Use `mqtt` (running on the current loop) for acknowledgements and invocation answers."""
        self.mqtt = mqtt
        self.loop = asyncio.get_running_loop()
        self.acknowledge = mqtt.ack

    def status(self) -> dict[str, Any]:
        return {
            "function_state": self.function_state,
            "problems": self.problems,
            "init": self.init,
            "handler": self.handler is not None,
            "lifecycle": "long-lived",
            "queue_depth": len(self.inbox),
            "queue_size": self.queue_size,
            "invocations": self.stats.invocations,
            "errors": self.stats.errors,
            "timeouts": self.timeout_count.value if self.timeout_count else self.stats.timeouts,
            "rejected": self.stats.rejected,
            "p50_ms": self.stats.percentile(0.5),
            "p99_ms": self.stats.percentile(0.99),
        }

    @property
    def function_state(self) -> str:
        if self.problems:
            return "failed"
        if self.handler is not None:
            return "ready"
        return "running" if self.without_handler else "loading"

    async def on_message(self, message: Received) -> None:
        with self.wakeup:
            cannot_run = bool(self.problems)
            accepted = len(self.inbox) < self.queue_size and not self.without_handler and not cannot_run
            if accepted:
                self.inbox.append(message)
                self.wakeup.notify()
        if accepted:
            return
        if cannot_run:
            await self.refuse_cannot_run(message)
            return
        if self.without_handler:
            await self.refuse_without_handler(message)
            return
        self.stats.rejected += 1
        if self.stats.rejected == 1 or self.stats.rejected % 1000 == 0:
            log.error(
                "function=%s event=queue-full rejected=%d queue_size=%d",
                self.name,
                self.stats.rejected,
                self.queue_size,
            )
        await self.reply(message, None, "Unhandled", "input queue full: message rejected")
        self.acknowledge(message)  # rejected for good: not to be delivered again

    def start(self, code_dir: Path, handler: str) -> None:
        """Import the module in one thread and serve messages in another: the init may never return."""
        module, _, attribute = handler.rpartition(".")
        threading.Thread(
            target=self._import, args=(code_dir, handler), daemon=True, name=f"fn-{self.name}-init"
        ).start()
        threading.Thread(target=self._serve, args=(module, attribute), daemon=True, name=f"fn-{self.name}").start()

    def _import(self, code_dir: Path, handler: str) -> None:
        module = handler.rpartition(".")[0]
        try:
            load_handler(code_dir, handler)
        except BaseException as exc:
            # Python drops a module whose init raised from sys.modules; one still there ran to its end
            # without defining the handler, which a long-lived function may do
            imported = module in sys.modules
            with self.wakeup:
                if imported:
                    self.init = "done"
                else:
                    self.init = "failed"
                    self.problems.append(f"handler could not load: {type(exc).__name__}: {exc}")
                self.wakeup.notify_all()
            if imported:
                log.info("function=%s event=init-done handler=none (messages routed to it are refused)", self.name)
            else:
                log.exception("function=%s event=init-failed", self.name)
            return
        with self.wakeup:
            self.init = "done"
            self.wakeup.notify_all()
        log.info("function=%s event=init-done", self.name)

    def _resolve(self, module: str, attribute: str) -> Handler | None:
        """The handler once the module (possibly still running its init) has defined it."""
        found = getattr(sys.modules.get(module), attribute, None)
        return found if callable(found) else None

    def _serve(self, module: str, attribute: str) -> None:
        delay, longest = HANDLER_POLL_S
        while True:
            with self.wakeup:
                init = self.init
            handler = self._resolve(module, attribute)
            if handler is not None:
                break
            if init == "failed":
                with self.wakeup:
                    waiting = list(self.inbox)
                    self.inbox.clear()
                for message in waiting:
                    self.refuse_from_thread(message, self.refuse_cannot_run)
                return
            if init == "done":
                with self.wakeup:
                    self.without_handler = True
                    waiting = list(self.inbox)
                    self.inbox.clear()
                for message in waiting:
                    self.refuse_from_thread(message, self.refuse_without_handler)
                return
            with self.wakeup:
                self.wakeup.wait(delay)  # woken early when the import ends
            delay = min(delay * 2, longest)
        self.handler = handler
        log.info("function=%s event=serving init=%s", self.name, self.init)
        while True:
            with self.wakeup:
                while not self.inbox:
                    self.wakeup.wait()
                message = self.inbox.popleft()
            request_id, started = uuid.uuid4().hex, time.monotonic()
            with self.wakeup:
                self.running = (message, request_id, started)
            outcome = call_handler(handler, self.identity, request_id, message.topic, message.payload, self.timeout_s)
            with self.wakeup:
                self.running = None
                if self.timed_out:
                    return  # answered for by watch_timeouts; the process is on its way out
            self.stats.invocations += 1
            self.stats.durations_ms.append((time.monotonic() - started) * 1000)
            if not outcome.ok:
                self.stats.errors += 1
                log.error("function=%s event=handler-error error=%r\n%s", self.name, outcome.error, outcome.traceback)
                self.reply_from_thread(message, None, "Handled", outcome.error)
            else:
                self.reply_from_thread(message, outcome.result, None, None)
            self.acknowledge(message)

    async def watch_timeouts(self, stop: asyncio.Event) -> int:
        """Until `stop`: when a handler call outlives timeout_s, answer the caller as the dispatcher does,
        acknowledge the message (redelivered, it would only time out again), count it, set `stop` and
        return EXIT_TIMEOUT; 0 on a normal stop."""
        interval = min(max(self.timeout_s / 10, 0.05), 1.0)
        while not stop.is_set():
            await sleep_or_stop(stop, interval)
            with self.wakeup:
                running = self.running
                if running is None or time.monotonic() - running[2] <= self.timeout_s:
                    continue
                self.timed_out = True
            message, request_id, _ = running
            self.stats.invocations += 1
            self.stats.timeouts += 1
            total = self.timeout_count.add() if self.timeout_count else self.stats.timeouts
            log.error(
                "function=%s event=timeout request=%s topic=%s timeout_s=%g timeouts=%d action=exiting for "
                "supervisord to restart the function",
                self.name,
                request_id,
                message.topic,
                self.timeout_s,
                total,
            )
            await self.reply(message, None, "Unhandled", f"Task timed out after {self.timeout_s:g} seconds")
            self.acknowledge(message)
            stop.set()
            return EXIT_TIMEOUT
        return 0

    async def refuse_without_handler(self, message: Received) -> None:
        self.stats.rejected += 1
        if self.stats.rejected == 1 or self.stats.rejected % 1000 == 0:
            log.error(
                "function=%s event=no-handler rejected=%d topic=%s", self.name, self.stats.rejected, message.topic
            )
        await self.reply(message, None, "Unhandled", f"long-lived function {self.name} has no handler")
        self.acknowledge(message)

    async def refuse_cannot_run(self, message: Received) -> None:
        """Answer at once, as the dispatcher does for an on-demand function with problems: the
        function's deployment or import failed, so nothing would ever take the message."""
        self.stats.errors += 1  # as the dispatcher counts them; the problems were logged when found
        await self.reply(message, None, "Unhandled", f"function cannot run: {'; '.join(self.problems)}")
        self.acknowledge(message)

    def refuse_from_thread(self, message: Received, refuse: Callable[[Received], Coroutine[Any, Any, None]]) -> None:
        if self.loop is not None:
            asyncio.run_coroutine_threadsafe(refuse(message), self.loop).result(REPLY_TIMEOUT_S + 1)

    def reply_from_thread(self, message: Received, result: Any, function_error: str | None, error: Any) -> None:
        """Answer an SDK `invoke` (a message with a response topic) as the on-demand dispatcher does."""
        if not message.response_topic or self.loop is None:
            return
        sent = asyncio.run_coroutine_threadsafe(self.reply(message, result, function_error, error), self.loop)
        try:
            sent.result(REPLY_TIMEOUT_S + 1)
        except TimeoutError:
            sent.cancel()

    async def reply(self, message: Received, result: Any, function_error: str | None, error: Any) -> None:
        # the same answer document as functions/dispatcher.py's, which the SDK's invoke reads
        if not message.response_topic or self.mqtt is None:
            return
        answer = {"result": result, "function_error": function_error, "error": error}
        try:
            await self.mqtt.publish(message.response_topic, json.dumps(answer), qos=1, timeout_s=REPLY_TIMEOUT_S)
        except (MqttError, TimeoutError) as exc:
            log.warning("function=%s event=reply-not-sent topic=%s reason=%s", self.name, message.response_topic, exc)


@dataclass(frozen=True)
class Runner:
    """The runner's start-up: its spec (written by the launcher), paths and broker credentials."""

    component: str
    spec: RunnerSpec
    paths: GatewayPaths
    creds: Credentials
    in_cgroup: bool = False  # its memory cgroup caps it; RLIMIT_AS otherwise
    mounts_refused: str | None = None  # why its volume destinations could not be mounted: it must not start


def start_runner(argv: list[str] | None = None) -> Runner:
    args, component = component_arguments("fn", argv)
    if args.name is None:
        raise SystemExit("millgate-fn: --name FUNCTION is required")
    try:
        spec = read_spec(GatewayPaths.resolve(args.config, args.state, None), args.name)
    except (OSError, ValueError, TypeError) as exc:
        raise SystemExit(f"{component}: cannot read its runner spec (written by `millgate run`): {exc}") from None
    paths = GatewayPaths.resolve(args.config, args.state, Path(spec.log_dir) if spec.log_dir else None)
    setup_component_logging(component, spec.log_level)
    # while still root: the group is named as a worker's (<name>-<pid>), so the same sweep finds it
    in_cgroup = place_self_in_cgroup(f"{component}-{os.getpid()}", spec.memory_mb)
    refused = None
    try:
        enter_private_mounts(spec.name, spec.mounts)  # single-threaded still: every later thread shares it
    except MountRefused as exc:
        refused = str(exc)
        log.error("function=%s event=mounts-refused reason=%s", spec.name, exc)
    return Runner(component, spec, paths, component_credentials(paths, component), in_cgroup, refused)


def run_greengrass_v1(runner: Runner) -> NoReturn:
    """Become the function's single v1 worker: its uid, its v1 environment, then the v1 runtime exec'd in a
    fresh interpreter (same pid, cgroup, mounts and identity), so that none of this runner's modules
    (millgate's packages, paho-mqtt) shadow the function's own; the runtime sets RLIMIT_AS itself unless the
    cgroup caps it."""
    # here, not at the top: a native runner would carry these unused
    from functions.greengrass.environment import pinned_token
    from functions.greengrass.lambda_runtime import command as runtime_command

    spec = runner.spec
    deployed = read_manifest(runner.paths.state_dir / "functions")[spec.name]
    problems = deployed.problems + ([runner.mounts_refused] if runner.mounts_refused else [])
    if problems:
        log.error("function=%s event=not-started problems=%r", spec.name, problems)
        while True:  # exiting would only make supervisord retry what cannot work; the core reports it
            time.sleep(3600)
    token = pinned_token(runner.paths.credentials_dir, spec.name)
    drop_privileges(spec.uid, spec.gid, deployed.extra_groups)
    os.chdir(deployed.path)
    flags = ["--long-lived"] + ([] if runner.in_cgroup else ["--limit-address-space"])
    argv = runtime_command(Path(deployed.path), spec.handler, spec.memory_mb, spec.timeout_s, *flags)
    logging.shutdown()
    os.execve(argv[0], argv, {**spec.environment, "AWS_CONTAINER_AUTHORIZATION_TOKEN": token})


def entry() -> None:
    runner = start_runner()
    if runner.spec.runtime == "greengrass-v1":
        run_greengrass_v1(runner)
    status = asyncio.run(main(runner))
    if status:
        logging.shutdown()
        os._exit(status)  # the handler's thread is stuck in user code: do not wait for it


async def main(runner: Runner) -> int:
    spec = runner.spec
    deployed = read_manifest(runner.paths.state_dir / "functions")[spec.name]
    queue_size = min(spec.queue_size, MAX_QUEUED)
    if queue_size < spec.queue_size:
        log.warning(
            "function=%s event=queue-size-capped queue_size=%d effective=%d reason=the runner's queue must fit its "
            "memory headroom (about %d KB a message); a full queue rejects new messages, counted",
            spec.name,
            spec.queue_size,
            queue_size,
            QUEUED_MESSAGE_BYTES // 1024,
        )
    pinned = PinnedFunction(
        spec.name,
        queue_size,
        FunctionIdentity(spec.name, deployed.version, spec.thing_name, spec.memory_mb),
        spec.timeout_s,
    )
    pinned.problems.extend(deployed.problems)
    if runner.mounts_refused:
        pinned.problems.append(runner.mounts_refused)
    pinned.timeout_count = TimeoutCount(runner.paths.run_dir / f"{runner.component}.timeouts")
    drop_privileges(spec.uid, spec.gid, deployed.extra_groups)
    os.environ.update(spec.environment)
    if deployed.path:
        os.chdir(deployed.path)
    stop = stop_on_signals()
    subscriptions = [(f, 1) for f in spec.subscriptions] + [(invoke_topic(spec.name), 1)]
    mqtt = LocalMqtt(
        runner.paths.broker_socket,
        runner.creds,
        runner.component,
        status_interval_s=spec.status_interval_s,
        subscriptions=subscriptions,
        on_message=pinned.on_message,
        status_fields=pinned.status,
        # messages wait at the broker while this process restarts, and are acknowledged once handled
        manual_ack=True,
        persistent_session=True,
    )
    pinned.bind(mqtt)
    if not pinned.problems:
        if not runner.in_cgroup:
            limit_address_space(spec.memory_mb)
        pinned.start(Path(deployed.path), spec.handler)
    else:
        log.error("function=%s event=not-started problems=%r", spec.name, pinned.problems)
    watchdog = asyncio.create_task(pinned.watch_timeouts(stop))
    await mqtt.run(stop)
    return await watchdog


if __name__ == "__main__":
    entry()
