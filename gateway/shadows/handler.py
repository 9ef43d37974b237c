"""Answers one shadow request (get, update, delete) against the shadow store: reads, applies AWS's
rules from `document`, writes in one transaction, and returns every message to publish.

It runs on the thread that owns the store and never publishes itself; the service does that.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.shadows import document as doc
from gateway.shadows.document import Json, ShadowError
from gateway.topics import shadow_topic
from storage.shadows import ShadowStore, StoredShadow

log = logging.getLogger(__name__)

TOMBSTONE_S = 48 * 3600  # a shadow re-created within 48 h continues the deleted one's version [S4]


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes


@dataclass(frozen=True)
class Change:
    """An accepted write, for whoever mirrors shadows elsewhere (cloud sync)."""

    thing: str
    name: str | None
    operation: str  # "update" | "delete"
    version: int
    client_token: str | None


@dataclass
class Outcome:
    messages: list[Outgoing] = field(default_factory=list)
    change: Change | None = None
    error: ShadowError | None = None


def _encode(document: Json) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


class ShadowHandler:
    def __init__(self, store: ShadowStore, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock
        self._failures_logged: set[str] = set()  # exception types whose traceback is in the log already

    def handle(
        self, thing: str, name: str | None, operation: str, payload: bytes, *, expected_version: int | None = None
    ) -> Outcome:
        """The answer to one request; never raises for what a client sent. `expected_version` is for
        the sync engine's deletes only: applied only at that version, else 409 (an MQTT delete request
        cannot ask for that: its content is ignored [S2])."""
        now = self.clock()
        timestamp = int(now)
        token: str | None = None
        try:
            if operation == "update":
                return self._update(thing, name, payload, now)
            token = doc.token_of_side_request(payload)
            doc.check_names(thing, name)
            if operation == "get":
                return self._get(thing, name, token, timestamp)
            return self._delete(thing, name, token, now, expected_version)
        except ShadowError as exc:
            if exc.client_token is None:
                exc.client_token = token
            return self._rejected(thing, name, operation, exc, timestamp)
        except Exception as exc:
            self._log_failure(thing, name, operation, exc)
            error = ShadowError(500, doc.INTERNAL, doc.token_if_any(payload))
            return self._rejected(thing, name, operation, error, timestamp)

    def _log_failure(self, thing: str, name: str | None, operation: str, exc: Exception) -> None:
        """A fault of ours: its traceback once per exception type, one line per request after that."""
        kind = type(exc).__name__
        first = kind not in self._failures_logged
        self._failures_logged.add(kind)
        log.error(
            "event=shadow-request-failed thing=%s name=%s operation=%s error=%s: %s",
            thing,
            name,
            operation,
            kind,
            exc,
            exc_info=exc if first else None,
        )

    def live(self, thing: str, name: str | None) -> StoredShadow | None:
        row = self.store.get(thing, name or "")
        return row if row is not None and not row.deleted else None

    def current(self, thing: str, name: str | None) -> tuple[StoredShadow | None, int]:
        """The live shadow (None if there is none) and, read with it, the `version` an update
        conditioned on it must carry: the live one's, else a deleted one's within 48 h, else 0 [S4]."""
        row = self.store.get(thing, name or "")
        if row is not None and not row.deleted:
            return row, row.version
        return None, self._version_to_create(row, self.clock())

    @staticmethod
    def _version_to_create(row: StoredShadow | None, now: float) -> int:
        if row is not None and row.deleted_at is not None and now - row.deleted_at <= TOMBSTONE_S:
            return row.version
        return 0

    # ---- operations -----------------------------------------------------------------------------

    def _get(self, thing: str, name: str | None, token: str | None, timestamp: int) -> Outcome:
        row = self.live(thing, name)
        if row is None:
            raise doc.not_found(thing, name)
        answer = doc.get_accepted(row.state, row.metadata, row.version, timestamp, token)
        return Outcome([Outgoing(shadow_topic(thing, name, "get", "accepted"), _encode(answer))])

    def _update(self, thing: str, name: str | None, payload: bytes, now: float) -> Outcome:
        timestamp = int(now)
        request = doc.parse_update(payload)
        try:
            doc.check_names(thing, name)
        except ShadowError as exc:
            exc.client_token = request.client_token
            raise
        with self.store.transaction():
            row = self.store.get(thing, name or "")
            current = row if row is not None and not row.deleted else None
            version = current.version if current is not None else self._version_to_create(row, now)
            if request.version is not None and request.version != version:
                raise ShadowError(409, doc.VERSION_CONFLICT, request.client_token)
            state, metadata = doc.apply_update(
                current.state if current else {}, current.metadata if current else {}, request.state, timestamp
            )
            if doc.state_size(state) > doc.MAX_STATE_BYTES:
                raise ShadowError(413, doc.TOO_LARGE, request.client_token)
            new = StoredShadow(thing, name or "", state, metadata, version + 1, now, None)
            self.store.put(new)
        token = request.client_token
        previous = doc.snapshot(current.state, current.metadata, current.version) if current else None
        messages = [
            Outgoing(
                shadow_topic(thing, name, "update", "accepted"),
                _encode(doc.update_accepted(request, new.version, timestamp)),
            ),
            Outgoing(
                shadow_topic(thing, name, "update", "documents"),
                _encode(doc.documents_message(previous, doc.snapshot(state, metadata, new.version), timestamp, token)),
            ),
        ]
        delta = doc.delta_message(state, metadata, new.version, timestamp, token)
        if delta is not None:
            messages.append(Outgoing(shadow_topic(thing, name, "update", "delta"), _encode(delta)))
        return Outcome(messages, Change(thing, name, "update", new.version, token))

    def _delete(
        self, thing: str, name: str | None, token: str | None, now: float, expected_version: int | None
    ) -> Outcome:
        with self.store.transaction():
            row = self.live(thing, name)
            if row is None:
                raise doc.not_found(thing, name)
            if expected_version is not None and row.version != expected_version:
                raise ShadowError(409, doc.VERSION_CONFLICT, token)
            self.store.put(StoredShadow(thing, name or "", {}, {}, row.version, now, now))
        answer = doc.delete_accepted(row.version, int(now), token)
        return Outcome(
            [Outgoing(shadow_topic(thing, name, "delete", "accepted"), _encode(answer))],
            Change(thing, name, "delete", row.version, token),
        )

    def _rejected(self, thing: str, name: str | None, operation: str, error: ShadowError, timestamp: int) -> Outcome:
        answer = doc.error_document(error, timestamp)
        return Outcome([Outgoing(shadow_topic(thing, name, operation, "rejected"), _encode(answer))], error=error)
