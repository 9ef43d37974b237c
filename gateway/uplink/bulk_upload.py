"""Bulk topics to S3 (the bulk-upload pattern): cut waiting records into gzip JSON Lines batches by
size or age, and upload each batch in the configured online windows through a short-lived
`gateway.uplink.s3_put` child; a batch is forgotten only once S3 confirmed it.

It never imports boto3 (the child does) and never decides what is bulk beyond the configured filters.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from datetime import UTC, datetime

from gateway.backoff import Backoff
from gateway.config import BulkSection
from gateway.storage_thread import StorageThread
from gateway.topics import topic_matches
from gateway.uplink.metrics import UplinkMetrics
from storage.bulk import Batch, BulkStore

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 5.0


def object_key(prefix: str, thing: str, batch: Batch) -> str:
    """The S3 key of a batch: `prefix` with its placeholders (config.BULK_PREFIX_PLACEHOLDERS: {thing}
    and the UTC time of the first record), then `<thing>-<first record time>-<batch id>.jsonl.gz`."""
    when = datetime.fromtimestamp(batch.first_ts, UTC)
    filled = prefix.format(**prefix_values(thing, when))
    return f"{filled}{thing}-{when:%Y%m%dT%H%M%SZ}-{batch.id:08d}.jsonl.gz"


def prefix_values(thing: str, when: datetime) -> dict[str, str]:
    """What each placeholder of config.BULK_PREFIX_PLACEHOLDERS stands for in one batch's key."""
    return {
        "thing": thing,
        "yyyy": f"{when:%Y}",
        "mm": f"{when:%m}",
        "dd": f"{when:%d}",
        "hh": f"{when:%H}",
        "date": f"{when:%Y-%m-%d}",
    }


def in_window(windows: list[str], now: datetime) -> bool:
    """Whether local time `now` falls in one of the "HH:MM-HH:MM" windows (empty: always)."""
    if not windows:
        return True
    minute = now.hour * 60 + now.minute
    for window in windows:
        start_text, end_text = window.split("-")
        start = int(start_text[:2]) * 60 + int(start_text[3:])
        end = int(end_text[:2]) * 60 + int(end_text[3:])
        inside = start <= minute < end if start <= end else minute >= start or minute < end
        if inside:
            return True
    return False


class BulkUploader:
    def __init__(
        self, store: BulkStore, storage: StorageThread, config: BulkSection, thing: str, metrics: UplinkMetrics
    ):
        self.store = store
        self.storage = storage
        self.config = config
        self.thing = thing
        self.metrics = metrics
        self.backoff = Backoff(initial_s=5.0, cap_s=600.0)
        self._failing: str | None = None
        self._cut_blocked: str | None = None
        self.check_interval_s = min(CHECK_INTERVAL_S, config.max_batch_age_s / 4)

    def wants(self, topic: str) -> bool:
        return any(topic_matches(f, topic) for f in self.config.topics)

    async def run(self) -> None:
        self.metrics.bulk_state = "idle"
        while True:
            await self.storage.call(self.store.cut, int(self.config.max_batch_bytes), self.config.max_batch_age_s)
            self._set_cut_blocked(self.store.cut_blocked)
            pending = await self.storage.call(self.store.pending)
            waiting, _size, _oldest = await self.storage.call(self.store.waiting)
            self.metrics.bulk_counters = await self.storage.call(self.store.counters)
            self.metrics.bulk_bytes = self.store.bytes
            self.metrics.bulk_pending_batches = len(pending)
            self.metrics.bulk_pending_records = waiting + sum(b.records for b in pending)
            delay = self.check_interval_s
            if pending and not in_window(self.config.windows, datetime.now()):
                self.metrics.bulk_state = "waiting-for-window"
            elif pending:
                self.metrics.bulk_state = "uploading"
                for batch in pending:
                    failure = await self._upload(batch)
                    if failure is not None:
                        self._set_failing(failure)
                        delay = self.backoff.next_delay()
                        break
                    await self.storage.call(self.store.done, batch)
                    self.metrics.bulk_uploaded += 1
                    self.metrics.bulk_pending_batches -= 1
                    self.backoff.reset()
                    self._set_failing(None)
                else:
                    self.metrics.bulk_state = "idle"
            await asyncio.sleep(delay)

    async def _upload(self, batch: Batch) -> str | None:
        """None when S3 confirmed the object, else why not."""
        key = object_key(self.config.prefix, self.thing, batch)
        argv = [
            sys.executable,
            "-m",
            "gateway.uplink.s3_put",
            "--bucket",
            self.config.bucket,
            "--key",
            key,
            "--file",
            str(batch.file),
            "--multipart-threshold",
            str(int(self.config.multipart_threshold)),
        ]
        if self.config.region:
            argv += ["--region", self.config.region]
        if self.config.endpoint_url:
            argv += ["--endpoint-url", self.config.endpoint_url]
        started = time.monotonic()
        child = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with asyncio.timeout(self.config.upload_timeout_s):
                _out, err = await child.communicate()
        except TimeoutError:
            child.kill()
            await child.wait()
            return f"s3://{self.config.bucket}/{key}: no answer within upload_timeout_s={self.config.upload_timeout_s}"
        if child.returncode != 0:
            return err.decode(errors="replace").strip().splitlines()[-1] if err.strip() else f"exit {child.returncode}"
        log.info(
            "event=bulk-uploaded bucket=%s key=%s records=%d bytes=%d seconds=%.1f",
            self.config.bucket,
            key,
            batch.records,
            batch.bytes,
            time.monotonic() - started,
        )
        return None

    def _set_cut_blocked(self, reason: str | None) -> None:
        if reason == self._cut_blocked:
            return
        self._cut_blocked = reason
        if reason is None:
            log.info("event=bulk-cutting-again path=%s", self.store.batch_dir)
        else:
            log.error(
                "event=bulk-cut-blocked reason=%s action=records stay in %s and are batched once there is room; "
                "free disk space",
                reason,
                self.store.path,
            )

    def _set_failing(self, reason: str | None) -> None:
        if reason == self._failing:
            return
        self._failing = reason
        if reason is None:
            log.info("event=bulk-upload-recovered bucket=%s", self.config.bucket)
        else:
            self.metrics.bulk_state = "failing"
            log.error(
                "event=bulk-upload-failing bucket=%s reason=%s action=batches stay on disk and are retried with "
                "backoff; check credentials, bucket and network",
                self.config.bucket,
                reason,
            )
