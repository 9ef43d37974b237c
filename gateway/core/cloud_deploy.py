"""The core's cloud deployment service: watches the gateway's own shadow for a desired deployment
(config bundle) or package (core OTA) that differs from the reported one, hands it to a detached job
(gateway/deploy_job.py) that outlives the core's restart, and reports each job's result back into the
shadow's reported state as an update published by the core.

It owns no MQTT connection and never imports boto3; the job does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.deploy_job import (
    KINDS,
    START_GRACE_S,
    JobRecord,
    Request,
    RequestInvalid,
    finish,
    pid_alive,
    read_job,
    result_fields,
    spawn,
    write_job,
)
from gateway.mqtt import MqttError, Received
from gateway.topics import shadow_topic

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
POLL_S = 1.0
GET_RETRY_S = 5.0


class CloudDeployService:
    def __init__(self, thing: str, config_dir: Path, state_dir: Path, enabled: bool = True):
        self.thing = thing
        self.config_dir = config_dir
        self.state_dir = state_dir
        self.enabled = enabled
        self._publish: Publish | None = None
        self._have_shadow = False
        self._invalid: dict[str, Any] = {}  # the last malformed request reported per kind, not re-reported
        self._lock = asyncio.Lock()

    @property
    def subscriptions(self) -> list[tuple[str, int]]:
        if not self.enabled:
            return []
        topics = [
            shadow_topic(self.thing, None, "update", "documents"),
            shadow_topic(self.thing, None, "get", "accepted"),
        ]
        return [(t, 1) for t in topics]

    async def on_message(self, received: Received) -> None:
        try:
            document = json.loads(received.payload)
            state = document["current"]["state"] if received.topic.endswith("/documents") else document["state"]
        except (ValueError, KeyError, TypeError):
            log.warning("event=shadow-document-unreadable topic=%s", received.topic)
            return
        self._have_shadow = True
        async with self._lock:
            await self._consider(state if isinstance(state, dict) else {})

    async def run(self, stop: asyncio.Event, publish: Publish) -> None:
        if not self.enabled:
            return
        self._publish = publish
        next_get = 0.0
        while not stop.is_set():
            async with self._lock:
                await self._report_finished()
            # before the connection is up the get fails quietly and is tried again at the next poll
            wanted = not self._have_shadow and time.monotonic() >= next_get
            if wanted and await self._send(shadow_topic(self.thing, None, "get"), {}, quiet=True):
                next_get = time.monotonic() + GET_RETRY_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await stop.wait()

    async def _consider(self, state: dict[str, Any]) -> None:
        desired = state.get("desired") or {}
        reported = state.get("reported") or {}
        for kind in KINDS:
            if kind not in desired or desired[kind] is None:
                continue
            try:
                request = Request.parse(kind, desired[kind])
            except RequestInvalid as exc:
                if self._invalid.get(kind) != desired[kind]:
                    self._invalid[kind] = desired[kind]
                    log.error("event=cloud-%s-refused reason=%s", kind, exc)
                    version = str(desired[kind].get("version", "")) if isinstance(desired[kind], dict) else ""
                    fields = result_fields(Request(version, "", "", ""), "refused", str(exc))
                    await self._send_reported(kind, fields)
                continue
            done = reported.get(kind) or {}
            if done.get("version") == request.version and done.get("sha256") == request.sha256:
                continue
            await self._start(kind, request)

    async def _start(self, kind: str, request: Request) -> None:
        records = {k: await asyncio.to_thread(read_job, self.state_dir, k) for k in KINDS}
        record = records[kind]
        if record is not None and record.request == request:
            return  # under way, or done and about to be reported
        busy = [r for r in records.values() if r is not None and not r.done]
        if busy:
            log.info("event=cloud-%s-waiting version=%s busy=%s", kind, request.version, busy[0].kind)
            return  # considered again when the busy job's report changes the shadow
        record = JobRecord(kind, request, time.time())
        await asyncio.to_thread(write_job, self.state_dir, record)
        log.info(
            "event=cloud-%s-requested version=%s key=s3://%s/%s", kind, request.version, request.bucket, request.key
        )
        try:
            await asyncio.to_thread(spawn, kind, self.config_dir, self.state_dir)
        except (OSError, subprocess.SubprocessError) as exc:
            await asyncio.to_thread(finish, self.state_dir, record, "failed", f"cannot start the {kind} job: {exc}")

    async def _report_finished(self) -> None:
        for kind in KINDS:
            record = await asyncio.to_thread(read_job, self.state_dir, kind)
            if record is None or record.reported:
                continue
            if not record.done and self._vanished(record):
                why = f"the {kind} job (pid {record.pid}) ended without a result; see {self.state_dir}/cloud-deploy"
                await asyncio.to_thread(finish, self.state_dir, record, "failed", why)
            if record.result is None:
                continue
            if await self._send_reported(kind, record.result):
                record.reported = True
                await asyncio.to_thread(write_job, self.state_dir, record)

    @staticmethod
    def _vanished(record: JobRecord) -> bool:
        if record.pid is None:
            return time.time() - record.spawned_at > START_GRACE_S
        return not pid_alive(record.pid)

    async def _send_reported(self, kind: str, fields: dict[str, Any]) -> bool:
        sent = await self._send(shadow_topic(self.thing, None, "update"), {"state": {"reported": {kind: fields}}})
        if sent:
            result = fields.get("result")
            level = logging.INFO if result == "ok" else logging.ERROR
            log.log(
                level,
                "event=cloud-%s-%s version=%s reason=%s",
                kind,
                result,
                fields.get("version"),
                fields.get("reason"),
            )
        return sent

    async def _send(self, topic: str, document: dict[str, Any], quiet: bool = False) -> bool:
        if self._publish is None:
            return False
        try:
            await self._publish(topic, json.dumps(document).encode())
        except (MqttError, TimeoutError) as exc:
            log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "event=shadow-publish-failed topic=%s reason=%s",
                topic,
                exc,
            )
            return False
        return True
