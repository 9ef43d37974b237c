"""The core's side of the Greengrass v1 contract (contract section 3), behind the HTTP transport: who
a token belongs to (each worker's slot, functions/greengrass/slot.py), and the targets of an SDK
call — GGRouter (publish as the caller), GGShadowService (the local shadow service over the broker,
within the caller's subscriptions), GGSecretManager (refused clearly) and every local function.

It runs on the core's event loop and owns no socket; `daemon.py` carries its requests and answers.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from functions.dispatcher import Answer, FunctionPool, ResidentWorker
from functions.greengrass.credentials import CredentialProvider, CredentialsUnavailable
from functions.greengrass.environment import my_function_arn, pinned_token
from functions.greengrass.shadow_calls import Publish, ShadowCalls, custom_of
from functions.greengrass.slot import WorkerRetired, WorkerSlot, WorkResult, failed
from functions.runner_spec import read_spec
from gateway.config import Function, Subscription
from gateway.config_loader import LoadedConfig
from gateway.function_deploy import read_manifest
from gateway.greengrass.arns import (
    API_VERSION_PREFIX,
    SHADOW_ARN,
    ArnError,
    parse_function_arn,
    system_function_name,
)
from gateway.mqtt import LocalMqtt, MqttError, PublishRefused, Received
from gateway.paths import GatewayPaths
from gateway.topics import TopicError, invoke_topic, validate_topic_name

log = logging.getLogger(__name__)

CONNECTED_WAIT_S = 5.0  # a publish waits this long for the caller's broker connection to come up
MAX_PENDING_RESULTS = 10_000
MAX_REFUSALS_REMEMBERED = 1000
MAX_RETIRED_REMEMBERED = 10_000  # tokens of stopped workers, told 410 (not counted as refused) if they call

H_INVOCATION_ID = "X-Amz-InvocationId"
H_CLIENT_CONTEXT = "X-Amz-Client-Context"
H_FUNCTION_ERROR = "X-Amz-Function-Error"
H_WORKER_EXITING = "X-Millgate-Worker-Exiting"  # millgate's runtime: this worker exits after this result


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    peer: str


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # work handed to a poll: the transport calls this (on the core's loop) if it could not deliver it
    undelivered: Callable[[], None] | None = None


def _json(status: int, document: Any, headers: dict[str, str] | None = None) -> ApiResponse:
    return ApiResponse(status, json.dumps(document).encode(), {"Content-Type": "application/json", **(headers or {})})


def answer_to_result(answer: Answer) -> WorkResult:
    """A dispatcher answer as v1 returned it: the raw payload, FunctionError Handled / Unhandled."""
    kind = answer.get("function_error") or ""
    raw = answer.get("payload")
    if raw is not None:
        return WorkResult(base64.b64decode(raw), kind)
    if kind:
        return failed(kind, str(answer.get("error")))
    return WorkResult(json.dumps(answer.get("result")).encode(), "")


SHADOW_WORKER_ID = str(uuid.uuid4())


class GreengrassService:
    def __init__(
        self,
        v1_functions: dict[str, Function],
        arns: dict[str, str],
        all_functions: list[Function],
        subscriptions: list[Subscription] | None = None,
    ):
        self.v1_functions = v1_functions
        self.arns = arns  # v1 function -> MY_FUNCTION_ARN
        self.paths: GatewayPaths | None = None  # where long-lived workers' runner specs are (for_config)
        self.all_functions = {f.name: f for f in all_functions}
        self.ports = sorted({f.daemon_port for f in v1_functions.values()})
        self.slots: dict[str, WorkerSlot] = {}
        self.pools: dict[str, FunctionPool] = {}
        self.connections: dict[str, LocalMqtt] = {}
        self.credentials = CredentialProvider()
        self.refused_requests = 0
        self._retired: OrderedDict[str, None] = OrderedDict()
        self._pending: OrderedDict[str, tuple[str, asyncio.Future[WorkResult]]] = OrderedDict()
        self.shadows = ShadowCalls(subscriptions or [])
        self._refusals_logged: set[tuple[str, str]] = set()
        self._background: set[asyncio.Task[Any]] = set()

    @classmethod
    def for_config(cls, loaded: LoadedConfig, paths: GatewayPaths) -> GreengrassService | None:
        """The service for a config with v1 functions (None without), long-lived workers' tokens known."""
        functions = loaded.gateway.functions
        v1 = {f.name: f for f in functions if f.runtime == "greengrass-v1"}
        if not v1:
            return None
        manifest = read_manifest(paths.state_dir / "functions")
        arns = {name: my_function_arn(f, manifest[name].version) for name, f in v1.items()}
        service = cls(v1, arns, list(functions), list(loaded.gateway.subscriptions))
        service.paths = paths
        for name, function in v1.items():
            if function.lifecycle == "long-lived":
                service.register(name, pinned_token(paths.credentials_dir, name))
        return service

    # ---- wiring -----------------------------------------------------------------------------------

    @property
    def subscriptions(self) -> list[tuple[str, int]]:
        """What the core's connection must subscribe to (and route to `on_shadow_answer`)."""
        return self.shadows.subscriptions

    def attach(self, name: str, pool: FunctionPool) -> None:
        """A function's pool in the core: invocations go to it, and its broker connection (under the
        function's own identity) carries what the function publishes."""
        self.pools[name] = pool
        if pool.mqtt is not None:
            self.connections[name] = pool.mqtt
        slot = next((s for s in self.slots.values() if s.function == name), None)
        if slot is not None and pool.function.lifecycle == "long-lived":
            # supervisord runs its worker as fn-<name>; the pool's heartbeat, under that name, speaks for it
            pool.resident = lambda: ResidentWorker(
                slot.pid, None if slot.init_failure is None else f"handler could not load: {slot.init_failure}"
            )

    def register(self, function: str, token: str) -> WorkerSlot:
        slot = WorkerSlot(function, self.arns[function], token)
        self.slots[token] = slot
        return slot

    def unregister(self, token: str) -> None:
        slot = self.slots.pop(token, None)
        if slot is not None:
            slot.retire()
            self._retired[token] = None
            while len(self._retired) > MAX_RETIRED_REMEMBERED:
                self._retired.popitem(last=False)

    def retire_all(self) -> None:
        for slot in self.slots.values():
            slot.retire()

    def status_fields(self) -> dict[str, Any]:
        return {
            "greengrass_ports": self.ports,
            "greengrass_workers": len(self.slots),
            "greengrass_refused_requests": self.refused_requests,
            "greengrass_refused_shadow_calls": self.shadows.refused,
            "greengrass_credentials": self.credentials.state,
        }

    def use_publisher(self, publish: Publish) -> None:
        """The core's own publish (its identity may write shadow requests)."""
        self.shadows.use_publisher(publish)

    async def on_shadow_answer(self, received: Received) -> None:
        await self.shadows.on_answer(received)

    # ---- requests ---------------------------------------------------------------------------------

    async def handle(self, request: ApiRequest) -> ApiResponse:
        prefix = API_VERSION_PREFIX + "/"
        if not request.path.startswith(prefix):
            return _json(404, {"message": f"no such resource: {request.path}"})
        rest = request.path[len(prefix) :]
        if rest.rstrip("/") == "health/workers":
            # v1 answered anyone on the host (`curl localhost:8000/...`): ARNs, pids and states only
            return self._health(request)
        token = request.headers.get("authorization", "")
        slot = self.slots.get(token) if token else None
        if slot is None and token in self._retired:
            # a worker the pool stopped, calling once more on its way out: the runtime exits on 410
            return _json(410, {"message": "this worker has been stopped"})
        if slot is None:
            return self._refuse(request, 401 if not token else 403, "missing token" if not token else "unknown token")
        if rest.rstrip("/") == "credentialprovider":
            return await self._credentials(request)
        if not rest.startswith("functions/"):
            return _json(404, {"message": f"no such resource: {request.path}"})
        target = rest[len("functions/") :]
        if target.endswith("/work"):
            return await self._work(slot, request, target.removesuffix("/work"))
        if target.endswith("/started"):
            return await self._started(slot, request, target.removesuffix("/started"))
        if target.endswith("/initialized"):
            return await self._initialized(slot, request, target.removesuffix("/initialized"))
        if request.method == "POST":
            return await self._invoke(slot, request, target)
        if request.method == "GET":
            return await self._result(slot, request)
        return _json(405, {"message": f"{request.method} is not allowed on {request.path}"})

    def _refuse(self, request: ApiRequest, status: int, reason: str, function: str | None = None) -> ApiResponse:
        self.refused_requests += 1
        log.warning(
            "event=greengrass-request-refused status=%d method=%s path=%s peer=%s function=%s reason=%r",
            status,
            request.method,
            request.path,
            request.peer,
            function,
            reason,
        )
        return _json(status, {"message": reason})

    async def _credentials(self, request: ApiRequest) -> ApiResponse:
        if request.method != "GET":
            return _json(405, {"message": "use GET"})
        try:
            return _json(200, await self.credentials.current())
        except CredentialsUnavailable as exc:
            return _json(503, {"message": f"the gateway has no AWS credentials to lend: {exc}"})

    def _workers(self) -> list[dict[str, Any]]:
        """The v1 health objects: every v1 worker, and GGShadowService, which the core itself serves."""
        workers: list[dict[str, Any]] = [
            {"FuncArn": s.arn, "WorkerId": s.worker_id, "ProcessId": s.pid or 0, "WorkerState": s.state}
            for s in self.slots.values()
        ]
        shadow_state = "Waiting" if self.shadows.ready else "Starting"
        workers.append(
            {"FuncArn": SHADOW_ARN, "WorkerId": SHADOW_WORKER_ID, "ProcessId": os.getpid(), "WorkerState": shadow_state}
        )
        return workers

    def _health(self, request: ApiRequest) -> ApiResponse:
        workers = self._workers()
        if request.method == "GET":
            return _json(200, workers)
        if request.method != "POST":
            return _json(405, {"message": "use GET or POST"})
        try:
            asked = json.loads(request.body or b"null").get("FuncArns")
        except (ValueError, AttributeError):
            asked = None
        if not isinstance(asked, list) or not asked or not all(isinstance(a, str) for a in asked):
            return _json(400, {"message": 'Invalid request: the body must be {"FuncArns":["function-1-arn",...]}'})
        chosen: list[dict[str, Any]] = []
        invalid: list[str] = []
        for arn in asked:
            # v1: an ARN that is malformed, unknown or has no worker now is invalid
            found = [w for w in workers if self._same_function(str(w["FuncArn"]), arn)]
            if not found:
                invalid.append(arn)
            chosen.extend(w for w in found if w not in chosen)
        return _json(200, {"Workers": chosen, "InvalidArns": invalid})

    async def _work(self, slot: WorkerSlot, request: ApiRequest, arn: str) -> ApiResponse:
        if not slot.owns(arn):
            return self._refuse(request, 403, f"a worker of {slot.arn} may not take the work of {arn}", slot.function)
        if request.method == "GET":
            slot.mark_initialized(True, "")  # a runtime that predates PUT /initialized
            try:
                item = await slot.next_work()
            except WorkerRetired:
                return _json(410, {"message": "this worker has been stopped"})
            return ApiResponse(
                200,
                item.payload,
                {H_INVOCATION_ID: item.invocation_id, H_CLIENT_CONTEXT: item.client_context},
                functools.partial(slot.give_back, item),
            )
        if request.method == "POST":
            invocation_id = request.headers.get(H_INVOCATION_ID.lower(), "")
            kind = request.headers.get(H_FUNCTION_ERROR.lower(), "")
            exiting = request.headers.get(H_WORKER_EXITING.lower()) == "true"
            if slot.complete(invocation_id, WorkResult(request.body, kind, exiting)):
                return ApiResponse(202)
            return _json(404, {"message": f"no invocation {invocation_id!r} is waiting for this worker"})
        return _json(405, {"message": "use GET or POST"})

    async def _started(self, slot: WorkerSlot, request: ApiRequest, arn: str) -> ApiResponse:
        """millgate's runtime reports its pid before it imports the handler: a long-lived function's
        import may loop forever (contract section 4.2), and its worker is running all the while."""
        if not slot.owns(arn):
            return self._refuse(request, 403, f"a worker of {slot.arn} may not report for {arn}", slot.function)
        if request.method != "PUT":
            return _json(405, {"message": "use PUT"})
        try:
            pid = json.loads(request.body or b"{}").get("ProcessId")
        except (ValueError, AttributeError):
            pid = None
        if type(pid) is not int or pid <= 0:
            return _json(400, {"message": 'the body must be {"ProcessId": <the worker\'s pid>}'})
        pool = self.pools.get(slot.function)
        long_lived = pool is not None and pool.function.lifecycle == "long-lived"
        if pool is not None and long_lived:
            await self._follow_runner_spec(slot, pool)
        slot.mark_started(pid)
        if long_lived:
            log.info("event=greengrass-worker-started function=%s pid=%d", slot.function, pid)
        return ApiResponse(202)

    async def _initialized(self, slot: WorkerSlot, request: ApiRequest, arn: str) -> ApiResponse:
        if not slot.owns(arn):
            return self._refuse(request, 403, f"a worker of {slot.arn} may not report for {arn}", slot.function)
        try:
            report = json.loads(request.body or b"{}")
            success, response = bool(report.get("Success")), str(report.get("Response", ""))
        except (ValueError, AttributeError):
            return _json(400, {"message": 'the body must be {"Success": bool, "Response": str}'})
        # millgate's runtime adds its pid: supervisord, not the core, starts (and restarts) a long-lived worker
        pid = report.get("ProcessId") if isinstance(report.get("ProcessId"), int) else None
        pool = self.pools.get(slot.function)
        if pool is not None and pool.function.lifecycle == "long-lived":
            await self._follow_runner_spec(slot, pool)
        slot.mark_initialized(success, response, pid)
        if not success:
            log.error("event=greengrass-init-failed function=%s pid=%s response=%r", slot.function, slot.pid, response)
        return ApiResponse(202)

    async def _follow_runner_spec(self, slot: WorkerSlot, pool: FunctionPool) -> None:
        """A long-lived worker (re)started, perhaps by a deployment that changed only its function (which
        restarts fn-<name>, not the core): adopt what its runner spec says of it now — its ARN, qualified
        with the deployed code version, and the timeout and queue size its messages get."""
        if self.paths is None:
            return
        try:
            spec = await asyncio.to_thread(read_spec, self.paths, slot.function)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("event=greengrass-runner-spec-unreadable function=%s reason=%s", slot.function, exc)
            return
        arn = spec.environment.get("MY_FUNCTION_ARN", slot.arn)
        if arn != slot.arn and slot.owns(arn):
            log.info("event=greengrass-worker-version function=%s arn=%s previous=%s", slot.function, arn, slot.arn)
            slot.arn = self.arns[slot.function] = arn
        pool.follow_limits(spec.timeout_s, spec.queue_size)

    async def _result(self, slot: WorkerSlot, request: ApiRequest) -> ApiResponse:
        invocation_id = request.headers.get(H_INVOCATION_ID.lower(), "")
        pending = self._pending.get(invocation_id)
        if pending is None or pending[0] != slot.token:
            return _json(404, {"message": f"no invocation {invocation_id!r} of this worker is waiting"})
        result = await asyncio.shield(pending[1])
        self._pending.pop(invocation_id, None)
        headers = {H_FUNCTION_ERROR: result.function_error} if result.function_error else {}
        return ApiResponse(200, result.payload, headers)

    # ---- invocations: the system functions and local functions ------------------------------------

    async def _invoke(self, slot: WorkerSlot, request: ApiRequest, target: str) -> ApiResponse:
        kind = request.headers.get("x-amz-invocation-type") or "RequestResponse"
        if kind not in ("RequestResponse", "Event"):
            return _json(400, {"message": f"X-Amz-Invocation-Type {kind!r}: use RequestResponse or Event"})
        context = request.headers.get(H_CLIENT_CONTEXT.lower(), "")
        invocation_id = uuid.uuid4().hex
        result: asyncio.Future[WorkResult] = asyncio.get_running_loop().create_future()
        system = system_function_name(target)
        if system == "GGRouter":
            refused = await self._route(slot, request, context)
            if refused is not None:
                return refused
            result.set_result(WorkResult(b""))
        elif system == "GGShadowService":
            self._background_task(self._shadow(slot.function, context, request.body), result)
        elif system == "GGSecretManager":
            # the SDK raises SecretsManagerError for a body with Status and Message
            message = "millgate does not serve the Greengrass v1 secrets manager: pass secrets in the environment"
            result.set_result(WorkResult(json.dumps({"Status": 501, "Message": message}).encode()))
        elif system is not None:
            result.set_result(failed("Unhandled", f"{system} is a Greengrass core function millgate does not provide"))
        else:
            try:
                name = self._resolve(target)
            except ArnError as exc:
                return _json(400, {"message": str(exc)})
            if name is None:
                return _json(404, {"message": f"Function not found: {target}"})
            refused = await self._invoke_function(slot, name, request.body, context, kind, result)
            if refused is not None:
                return refused
        if kind == "RequestResponse":
            self._remember(invocation_id, slot.token, result)
        return ApiResponse(202, headers={H_INVOCATION_ID: invocation_id})

    def _remember(self, invocation_id: str, token: str, result: asyncio.Future[WorkResult]) -> None:
        self._pending[invocation_id] = (token, result)
        while len(self._pending) > MAX_PENDING_RESULTS:
            dropped, _ = self._pending.popitem(last=False)
            log.warning("event=greengrass-result-dropped invocation=%s reason=never-collected", dropped)

    def _background_task(self, work: Awaitable[WorkResult], result: asyncio.Future[WorkResult]) -> None:
        async def run() -> None:
            try:
                outcome = await work
            except Exception as exc:
                log.exception("event=greengrass-invocation-failed")
                outcome = failed("Unhandled", f"{type(exc).__name__}: {exc}")
            if not result.done():
                result.set_result(outcome)

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _resolve(self, arn: str) -> str | None:
        """The local function an ARN names: by its configured v1 ARN, else by its name. Its qualifier
        selects nothing: a gateway runs one deployed version of each function and has no aliases, and a
        local ARN's qualifier is the code version, which every code deployment changes."""
        parsed = parse_function_arn(arn)
        for name, mine in self.arns.items():
            if parse_function_arn(mine).unqualified == parsed.unqualified:
                return name
        return parsed.name if parsed.name in self.all_functions else None

    def _same_function(self, first: str, second: str) -> bool:
        system = system_function_name(first)
        if system is not None:
            return system == system_function_name(second)
        try:
            return parse_function_arn(first).unqualified == parse_function_arn(second).unqualified
        except ArnError:
            return False

    async def _invoke_function(
        self,
        slot: WorkerSlot,
        name: str,
        payload: bytes,
        context: str,
        kind: str,
        result: asyncio.Future[WorkResult],
    ) -> ApiResponse | None:
        pool = self.pools.get(name)
        if pool is not None:
            # the caller's client context as it came, empty too: a subject is only a routed message's
            answer = pool.submit(invoke_topic(name), payload, context, wait=kind == "RequestResponse")
            if answer is not None:
                answer.add_done_callback(lambda done: result.set_result(answer_to_result(done.result())))
            return None
        # a native long-lived function runs in its own process and takes invocations from the broker
        if kind == "RequestResponse":
            result.set_result(
                failed(
                    "Unhandled", f"{name} is a long-lived native function: it returns no results, invoke it as Event"
                )
            )
            return None
        try:
            await self._publish_as(slot.function, invoke_topic(name), payload)
        except (MqttError, TimeoutError) as exc:
            return _json(503, {"message": f"could not hand the invocation to {name}: {exc}"})
        return None

    async def _publish_as(self, function: str, topic: str, payload: bytes) -> None:
        """Publish under the function's own broker identity, so the subscription whitelist decides."""
        connection = self.connections.get(function)
        deadline = time.monotonic() + CONNECTED_WAIT_S
        while connection is None or not connection.connected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the broker connection of function {function} is not up")
            await asyncio.sleep(0.05)
            connection = self.connections.get(function)
        await connection.publish(topic, payload, qos=1)

    async def _route(self, slot: WorkerSlot, request: ApiRequest, context: str) -> ApiResponse | None:
        """GGRouter: publish as the calling function; None when done, else the refusal."""
        custom = custom_of(context)
        source, subject = custom.get("source"), custom.get("subject")
        # any version of the caller's own function: a redeployed long-lived worker publishes under its
        # new version's ARN from its import on, before it reports in (contract section 7: no other function's)
        if not isinstance(source, str) or not slot.owns(source):
            return self._refuse(
                request, 403, f"publish source {source!r} is not this worker's function {slot.arn}", slot.function
            )
        try:
            topic = validate_topic_name(str(subject or ""))
        except TopicError as exc:
            return _json(400, {"message": f"publish topic {exc}"})
        all_or_error = custom.get("queueFullPolicy") == "AllOrError"
        try:
            await self._publish_as(slot.function, topic, request.body)
        except PublishRefused as exc:
            # v1 dropped a message no subscription routes; AllOrError asked to hear about it
            key = (slot.function, topic)
            if key not in self._refusals_logged and len(self._refusals_logged) < MAX_REFUSALS_REMEMBERED:
                self._refusals_logged.add(key)
                log.warning(
                    "event=greengrass-publish-refused function=%s topic=%s reason=%s "
                    "hint=no-subscription-with-source-function:%s",
                    slot.function,
                    topic,
                    exc,
                    slot.function,
                )
            if all_or_error:
                return _json(403, {"message": f"no subscription routes {topic} from {slot.function}"})
        except (MqttError, TimeoutError) as exc:
            log.warning("event=greengrass-publish-failed function=%s topic=%s reason=%s", slot.function, topic, exc)
            if all_or_error:
                return _json(503, {"message": f"publish on {topic} failed: {exc}"})
        return None

    async def _shadow(self, function: str, context: str, body: bytes) -> WorkResult:
        """GGShadowService, for the calling function and within its subscriptions."""
        answer = await self.shadows.call(function, context, body)
        return WorkResult(answer.payload, answer.function_error)
