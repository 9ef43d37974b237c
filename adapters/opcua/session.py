"""The session to one OPC-UA server and everything that runs on it, as an explicit state machine:
connecting -> session-active (node ids and data types resolved) -> subscriptions-created -> running
-> lost -> (backoff) -> connecting... Each session is a fresh asyncua client, so nothing stale from
a dead server survives a reconnect; every monitored item is created again and its first notification
re-reads the current value, while every node reads bad with the reason in between. A session is lost
when the connection drops, when a subscription goes quiet past its keep-alive (publish_watch.py: the
server dropped it while the session lives) and when any read, write or call is answered with a session
or subscription error (BadSessionIdInvalid, BadSubscriptionIdInvalid, ...).

It hands readings to the sink and performs writes and method calls; it never touches MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from enum import StrEnum
from typing import Any

from asyncua import Client, ua
from asyncua.common.events import Event

from adapters.base.commands import WriteRefused
from adapters.base.device_health import DeviceHealth
from adapters.base.tag import Point, TagValue
from adapters.opcua.certificate import ClientCertificate
from adapters.opcua.event_map import EventBinding, EventSourceError, event_body, event_filter
from adapters.opcua.node_map import (
    BATCH,
    MethodBinding,
    NodeBinding,
    read_data_types,
    read_method_inputs,
    resolve_node_ids,
)
from adapters.opcua.publish_watch import PublishWatch
from adapters.opcua.quality import status_reason
from adapters.opcua.secure_channel import ChannelSecurity, ServerNotTrusted
from adapters.opcua.trust import TrustStore
from adapters.opcua.variants import bad_reading, reading_of, to_json, to_variant
from gateway.adapter_config import OpcuaAdapter
from gateway.backoff import Backoff

log = logging.getLogger(__name__)

Sink = Callable[[Point, TagValue], None]
EventSink = Callable[[EventBinding, dict[str, Any]], None]
SESSION_TIMEOUT_MS = 120_000  # the server drops a session we abandoned after this long
CLOSE_TIMEOUT_S = 2.0
MIN_PUBLISHING_MS = 50.0
BACKOFF_INITIAL_S = 0.5
PROVEN_AFTER_S = 10.0  # a session up this long has worked, even one that had nothing to read
EVENTS_PUBLISHING_MS = 200.0  # of the one subscription that carries every [[events]] source
# a failure of the session or subscription itself, as opposed to one event source being refused
SESSION_CODES = frozenset(
    {
        ua.StatusCodes.BadSessionIdInvalid,
        ua.StatusCodes.BadSessionClosed,
        ua.StatusCodes.BadSessionNotActivated,
        ua.StatusCodes.BadSubscriptionIdInvalid,
        ua.StatusCodes.BadSecureChannelIdInvalid,
        ua.StatusCodes.BadSecureChannelClosed,
        ua.StatusCodes.BadConnectionClosed,
        ua.StatusCodes.BadServerNotConnected,
        ua.StatusCodes.BadTimeout,
    }
)
# a read, write or call answered with one of these: the session itself is gone, not just that request
# (BadTimeout there is the server's device timing out, not the session)
SERVICE_SESSION_CODES = SESSION_CODES - {ua.StatusCodes.BadTimeout}


class State(StrEnum):
    CONNECTING = "connecting"
    SESSION_ACTIVE = "session-active"
    SUBSCRIBED = "subscriptions-created"
    RUNNING = "running"
    LOST = "lost"


class CallRefused(Exception):
    """A method call that cannot be attempted (not connected, wrong arguments)."""


class CallFailed(Exception):
    """A method call the server answered with a bad status."""


class WriteFailed(Exception):
    """A write the server did not accept."""


def describe(exc: BaseException, endpoint: str, timeout_s: float) -> str:
    """What went wrong talking to the server, in words an operator can act on."""
    if isinstance(exc, TimeoutError):
        return f"no answer from {endpoint} within {timeout_s:g} s"
    if isinstance(exc, ua.UaStatusCodeError):
        return status_reason(exc.code)
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {endpoint} (is the server running and the port right?)"
    if isinstance(exc, OSError):
        return f"cannot reach {endpoint}: {exc.strerror or exc}"
    if isinstance(exc, ServerNotTrusted):
        return str(exc)
    if isinstance(exc, ua.UaError) and "No matching endpoints" in str(exc):
        return f"{endpoint} offers no endpoint with this security policy and mode ({exc})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Notifications:
    """asyncua's subscription handler for one session: forwards to the session while it is current."""

    def __init__(self, session: OpcuaSession, generation: int):
        self.session = session
        self.generation = generation

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        if self.generation == self.session.generation:
            self.session.on_data_change(data.subscription_data.client_handle, data.monitored_item.Value)

    def status_change_notification(self, status: Any) -> None:
        if self.generation == self.session.generation:
            code = getattr(status, "Status", status)
            value = code.value if isinstance(code, ua.StatusCode) else int(code)
            self.session.signal_lost(f"subscription status {status_reason(value)}")

    def event_notification(self, event: Event) -> None:
        if self.generation == self.session.generation:
            self.session.on_event(event)


class OpcuaSession:
    def __init__(
        self,
        config: OpcuaAdapter,
        nodes: list[NodeBinding],
        methods: list[MethodBinding],
        sink: Sink,
        certificate: ClientCertificate | None = None,
        events: Sequence[EventBinding] = (),
        event_sink: EventSink | None = None,
        trust: TrustStore | None = None,
    ):
        self.config = config
        self.security = ChannelSecurity(config, certificate, trust)
        self.events = list(events)
        self.event_sink = event_sink
        self.nodes = nodes
        self.methods = methods
        self.sink = sink
        self.timeout_s = config.timeout_ms / 1000
        self.health = DeviceHealth(config.name, "server")
        self.backoff = Backoff(initial_s=BACKOFF_INITIAL_S, cap_s=config.backoff_max_ms / 1000)
        self.state = State.CONNECTING
        self.reason: str | None = None
        self.generation = 0  # one per session attempt; late callbacks from an older one are ignored
        self.sessions = 0
        self.notifications = 0
        self._client: Client | None = None
        self._lost = asyncio.Event()
        self._lost_reason: str | None = None
        self._by_key = {b.point.key: b for b in nodes}
        self._by_handle = {b.handle: b for b in nodes}
        self._node_problems: dict[str, str] = {}
        self._event_problems: dict[str, str] = {}
        self._events_by_item: dict[int, EventBinding] = {}  # this session's monitored item id -> source
        self.publish_watch = PublishWatch(config.endpoint, config.keepalive_ms, self.timeout_s)
        self.events_received = 0
        self._heard: set[str] = set()  # this session's poll groups that answered, "subscriptions" if notified
        self._needed: set[str] = set()  # what this session must hear from before it counts as working
        self._running_since: float | None = None

    @property
    def points(self) -> list[Point]:
        return [b.point for b in self.nodes]

    # ---- the state machine --------------------------------------------------------------------

    async def run(self) -> None:
        """Keep a session up until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            reason = await self._one_session()
            if self._running_since is not None and loop.time() - self._running_since >= PROVEN_AFTER_S:
                self.backoff.reset()
            self._enter(State.LOST, reason)
            self.health.set_down(reason)
            for binding in self.nodes:
                self.sink(binding.point, bad_reading(reason))
            await asyncio.sleep(self.backoff.next_delay())

    def _enter(self, state: State, reason: str | None = None) -> None:
        self.state, self.reason = state, reason
        log.debug("adapter=%s event=session-state state=%s reason=%s", self.config.name, state, reason)

    def signal_lost(self, reason: str) -> None:
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    async def _one_session(self) -> str:
        """Run one session from connect to loss; return why it ended."""
        self.generation += 1
        self._lost = asyncio.Event()
        self._lost_reason = None
        self._heard, self._needed, self._running_since = set(), set(), None
        client = self._new_client()
        try:
            self._enter(State.CONNECTING)
            async with asyncio.timeout(self.timeout_s * 2):
                await self.security.apply(client)
                await client.connect()
            self.sessions += 1
            self._enter(State.SESSION_ACTIVE)
            await resolve_node_ids(client, self.nodes, self.timeout_s)
            await read_data_types(client, self.nodes, self.timeout_s)
            await self._subscribe(client)
            await self._subscribe_events(client)
            self._enter(State.SUBSCRIBED)
            self._report_problems()
            self._client = client
            self._enter(State.RUNNING)
            self.health.set_up()
            self._expect_answers()
            async with asyncio.TaskGroup() as tasks:
                workers = [tasks.create_task(self._poll(client, ms, group)) for ms, group in self._poll_groups()]
                workers.append(tasks.create_task(self.publish_watch.run(self.signal_lost)))
                await self._lost.wait()
                for worker in workers:
                    worker.cancel()
            return self._lost_reason or "session lost"
        except Exception as exc:
            if not isinstance(exc, OSError | TimeoutError | ConnectionError | ua.UaError | ServerNotTrusted):
                log.debug("adapter=%s event=session-error", self.config.name, exc_info=True)
            return self._lost_reason or describe(exc, self.config.endpoint, self.timeout_s)
        finally:
            self._client = None
            self._events_by_item = {}
            self.publish_watch.clear()
            self.generation += 1
            await self._close(client)

    def _expect_answers(self) -> None:
        """The backoff is reset only once this session has shown it works (every poll group read once,
        a notification if nodes are subscribed) or after PROVEN_AFTER_S up: one that fails right after
        RUNNING, a poll timing out every time, backs off instead of reconnecting twice a second."""
        self._running_since = asyncio.get_running_loop().time()
        self._needed = {f"poll {ms}" for ms, _ in self._poll_groups()}
        if any(b.config.mode == "subscribe" and b.problem is None for b in self.nodes):
            self._needed.add("subscriptions")
        self._heard_from(None)

    def _heard_from(self, what: str | None) -> None:
        if what is not None:
            if what in self._heard:
                return
            self._heard.add(what)
        if self._needed and self._needed <= self._heard:
            self._needed = set()
            self.backoff.reset()

    def _new_client(self) -> Client:
        client = Client(self.config.endpoint, timeout=self.timeout_s, watchdog_intervall=self.config.watchdog_ms / 1000)
        client.application_uri = self.config.application_uri or f"urn:millgate:{self.config.name}"
        client.name = client.description = f"millgate adapter {self.config.name}"
        client.session_timeout = SESSION_TIMEOUT_MS
        if self.config.username is not None and self.config.password is not None:
            client.set_user(self.config.username)
            client.set_password(self.config.password)
        generation = self.generation

        async def lost(exc: Exception) -> None:
            if generation == self.generation:
                self.signal_lost(describe(exc, self.config.endpoint, self.timeout_s))

        client.connection_lost_callback = lost
        return client

    async def _close(self, client: Client) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await client.disconnect()
        with contextlib.suppress(Exception):
            client.disconnect_socket()

    def _report_problems(self) -> None:
        """A node that cannot be read this session reads bad with why; logged once per new reason."""
        for binding in self.nodes:
            key = binding.point.key
            if binding.problem is None:
                if self._node_problems.pop(key, None) is not None:
                    log.info("adapter=%s node=%s event=node-recovered", self.config.name, binding.config.name)
                continue
            if self._node_problems.get(key) != binding.problem:
                log.warning(
                    "adapter=%s node=%s address=%s event=node-unavailable reason=%s",
                    self.config.name,
                    binding.config.name,
                    binding.address,
                    binding.problem,
                )
                self._node_problems[key] = binding.problem
            self.sink(binding.point, bad_reading(f"{binding.address}: {binding.problem}"))
        for events in self.events:
            name = events.config.name
            if events.problem is None:
                if self._event_problems.pop(name, None) is not None:
                    log.info("adapter=%s events=%s event=events-recovered", self.config.name, name)
                continue
            if self._event_problems.get(name) != events.problem:
                log.warning(
                    "adapter=%s events=%s address=%s event=events-unavailable reason=%s",
                    self.config.name,
                    name,
                    events.address,
                    events.problem,
                )
                self._event_problems[name] = events.problem

    # ---- subscriptions ------------------------------------------------------------------------

    async def _subscribe(self, client: Client) -> None:
        groups: dict[int, list[NodeBinding]] = {}
        for binding in self.nodes:
            if binding.config.mode == "subscribe" and binding.problem is None:
                groups.setdefault(binding.config.sampling_ms, []).append(binding)
        handler = _Notifications(self, self.generation)
        for sampling_ms, group in sorted(groups.items()):
            subscription = await self.publish_watch.create(client, max(float(sampling_ms), MIN_PUBLISHING_MS), handler)
            for start in range(0, len(group), BATCH):
                chunk = group[start : start + BATCH]
                async with asyncio.timeout(self.timeout_s):
                    results = await subscription.create_monitored_items([self._item_request(b) for b in chunk])
                for binding, result in zip(chunk, results, strict=True):
                    if isinstance(result, ua.StatusCode):
                        binding.problem = status_reason(result.value)

    def _check_session(self, exc: BaseException) -> None:
        """A read, write or call that failed because the session is gone ends the session, whichever
        service noticed it first."""
        if isinstance(exc, ua.UaStatusCodeError) and exc.code in SERVICE_SESSION_CODES:
            self.signal_lost(describe(exc, self.config.endpoint, self.timeout_s))

    async def _subscribe_events(self, client: Client) -> None:
        """One subscription for every event source; a source the server refuses gets a `problem`
        and the others go on (only a failure of the session itself ends it)."""
        if not self.events:
            return
        await resolve_node_ids(client, self.events, self.timeout_s)
        usable = [(e, e.node_id) for e in self.events if e.problem is None and e.node_id is not None]
        if not usable:
            return
        subscription = await self.publish_watch.create(
            client, EVENTS_PUBLISHING_MS, _Notifications(self, self.generation)
        )
        for events, source in usable:
            try:
                evfilter = await event_filter(client, events, self.timeout_s)
                async with asyncio.timeout(self.timeout_s):
                    item = await subscription.subscribe_events(
                        source, evfilter=evfilter, queuesize=events.config.queue_size
                    )
            except EventSourceError as exc:
                events.problem = str(exc)
                continue
            except ua.UaStatusCodeError as exc:
                if exc.code in SESSION_CODES:
                    raise
                events.problem = status_reason(exc.code)
                continue
            self._events_by_item[item] = events

    def on_event(self, event: Event) -> None:
        events = self._events_by_item.get(event.server_handle) if event.server_handle is not None else None
        if events is None or self.event_sink is None:
            return
        self.events_received += 1
        self.event_sink(events, event_body(events, event))

    @staticmethod
    def _item_request(binding: NodeBinding) -> ua.MonitoredItemCreateRequest:
        node = binding.config
        item = ua.ReadValueId()
        item.NodeId = binding.node_id
        item.AttributeId = ua.AttributeIds.Value
        params = ua.MonitoringParameters()
        params.ClientHandle = binding.handle
        params.SamplingInterval = float(node.sampling_ms)
        params.QueueSize = node.queue_size
        params.DiscardOldest = True
        if node.deadband or node.deadband_percent:
            change = ua.DataChangeFilter()
            change.Trigger = ua.DataChangeTrigger.StatusValue
            change.DeadbandType = ua.DeadbandType.Absolute if node.deadband else ua.DeadbandType.Percent
            change.DeadbandValue = node.deadband or node.deadband_percent
            params.Filter = change
        request = ua.MonitoredItemCreateRequest()
        request.ItemToMonitor = item
        request.MonitoringMode = ua.MonitoringMode.Reporting
        request.RequestedParameters = params
        return request

    def on_data_change(self, handle: int, data: ua.DataValue) -> None:
        binding = self._by_handle.get(handle)
        if binding is None:
            return
        self.notifications += 1
        self._heard_from("subscriptions")
        self.sink(binding.point, reading_of(data))

    # ---- polling ------------------------------------------------------------------------------

    def _poll_groups(self) -> list[tuple[int, list[NodeBinding]]]:
        groups: dict[int, list[NodeBinding]] = {}
        for binding in self.nodes:
            if binding.config.mode == "poll" and binding.problem is None:
                groups.setdefault(binding.config.sampling_ms, []).append(binding)
        return sorted(groups.items())

    async def _poll(self, client: Client, period_ms: int, group: list[NodeBinding]) -> None:
        """Read a group every period in batched Read requests (with both timestamps) until cancelled."""
        loop = asyncio.get_running_loop()
        period_s = period_ms / 1000
        due = loop.time()
        while True:
            try:
                for start in range(0, len(group), BATCH):
                    chunk = group[start : start + BATCH]
                    params = ua.ReadParameters()
                    params.TimestampsToReturn = ua.TimestampsToReturn.Both
                    for binding in chunk:
                        item = ua.ReadValueId()
                        item.NodeId = binding.node_id
                        item.AttributeId = ua.AttributeIds.Value
                        params.NodesToRead.append(item)
                    started = loop.time()
                    async with asyncio.timeout(self.timeout_s):
                        results = await client.uaclient.read(params)
                    self.health.answered(loop.time() - started)
                    for binding, data in zip(chunk, results, strict=True):
                        self.sink(binding.point, reading_of(data))
                self._heard_from(f"poll {period_ms}")
            except (OSError, TimeoutError, ConnectionError, ua.UaError) as exc:
                self.health.failed("timeout" if isinstance(exc, TimeoutError) else "exception")
                self.signal_lost(describe(exc, self.config.endpoint, self.timeout_s))
                return
            due += period_s
            now = loop.time()
            if due < now:
                self.health.missed_polls += int((now - due) // period_s) + 1
                due = now
            await asyncio.sleep(due - now)

    # ---- writes and method calls --------------------------------------------------------------

    def _live_client(self, what: str) -> Client:
        if self._client is None or self.state != State.RUNNING:
            raise WriteRefused(f"{what}: {self.config.endpoint} is not connected ({self.reason or self.state})")
        return self._client

    def submit_write(self, point: Point, value: Any) -> Awaitable[Any]:
        """TagWriter: convert to the node's own type now (refusing at once), then write."""
        binding = self._by_key.get(point.key)
        if binding is None:
            raise WriteRefused(f"no OPC-UA node {point.key}")
        client = self._live_client(f"{point.key} ({binding.address})")
        if binding.node_id is None or binding.variant_type is None:
            raise WriteRefused(f"{point.key} ({binding.address}): {binding.problem or 'data type not known yet'}")
        try:
            variant = to_variant(value, binding.variant_type, binding.value_rank)
        except ValueError as exc:
            raise WriteRefused(f"{point.key} ({binding.address}) is {binding.variant_type.name}: {exc}") from None
        return self._write(client, binding, variant)

    async def _write(self, client: Client, binding: NodeBinding, variant: ua.Variant) -> Any:
        assert binding.node_id is not None
        node = client.get_node(binding.node_id)
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self.timeout_s):
                await node.write_attribute(ua.AttributeIds.Value, ua.DataValue(variant))
        except (OSError, TimeoutError, ConnectionError, ua.UaError) as exc:
            self.health.writes_failed += 1
            self._check_session(exc)
            raise WriteFailed(
                f"{binding.point.key} ({binding.address}): {describe(exc, self.config.endpoint, self.timeout_s)}"
            ) from None
        self.health.answered(asyncio.get_running_loop().time() - started)
        self.health.writes_ok += 1
        return to_json(variant.Value)

    async def call(self, method: MethodBinding, args: list[Any]) -> list[Any]:
        """Call a configured method with JSON arguments converted to its input types; its outputs as JSON."""
        name = method.config.name
        try:
            client = self._live_client(f"method {name}")
        except WriteRefused as exc:
            raise CallRefused(str(exc)) from None
        timeout_s = method.config.timeout_ms / 1000
        try:
            inputs = await read_method_inputs(client, method, self.timeout_s)
        except (OSError, TimeoutError, ConnectionError, ua.UaError) as exc:
            self._check_session(exc)
            raise CallFailed(
                f"method {name}: cannot read its input arguments: {describe(exc, '', timeout_s)}"
            ) from None
        if len(args) != len(inputs):
            raise CallRefused(f"method {name} takes {len(inputs)} input argument(s), got {len(args)}")
        variants = []
        for index, (arg, (vtype, rank)) in enumerate(zip(args, inputs, strict=True)):
            try:
                variants.append(to_variant(arg, vtype, rank))
            except ValueError as exc:
                raise CallRefused(f"method {name}: argument {index + 1} is {vtype.name}: {exc}") from None
        request = ua.CallMethodRequest()
        request.ObjectId = method.object_id
        request.MethodId = method.method_id
        request.InputArguments = variants
        try:
            async with asyncio.timeout(timeout_s):
                [result] = await client.uaclient.call([request])
        except (OSError, TimeoutError, ConnectionError, ua.UaError) as exc:
            self._check_session(exc)
            raise CallFailed(f"method {name}: {describe(exc, self.config.endpoint, timeout_s)}") from None
        if not result.StatusCode.is_good():
            self._check_session(ua.UaStatusCodeError(result.StatusCode.value))
            raise CallFailed(f"method {name}: the server answered {status_reason(result.StatusCode.value)}")
        return [to_json(v.Value if isinstance(v, ua.Variant) else v) for v in result.OutputArguments or []]

    # ---- health -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "server": {
                "endpoint": self.config.endpoint,
                "session": self.state.value,
                "sessions": self.sessions,
                "notifications": self.notifications,
                **self.health.snapshot(),
            },
            "nodes": {"total": len(self.nodes), "unavailable": dict(self._node_problems)},
            "events": {
                "sources": len(self.events),
                "received": self.events_received,
                "unavailable": dict(self._event_problems),
            },
        }
