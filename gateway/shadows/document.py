"""AWS IoT device shadow semantics as pure functions: request validation with AWS's codes and texts,
the merge, per-leaf metadata, the delta, the size and depth limits, and the response documents
(../shared/aws-shadow-semantics.md, sections 2-7).

It does no I/O and knows no topics or storage; `gateway/shadows/handler.py` applies it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from gateway import strict_json
from gateway.aws_names import SHADOW_NAME_PATTERN, THING_NAME_PATTERN

SECTIONS = ("desired", "reported")
MAX_STATE_BYTES = 8192  # desired + reported of the merged document, metadata excluded
MAX_DEPTH = 6  # levels below desired/reported
MAX_CLIENT_TOKEN_BYTES = 64
MAX_REQUEST_BYTES = 128 * 1024  # AWS IoT's MQTT payload limit
THING_NAME = re.compile(THING_NAME_PATTERN)
SHADOW_NAME = re.compile(SHADOW_NAME_PATTERN)

Json = dict[str, Any]


class ShadowError(Exception):
    """A request AWS IoT would reject: the HTTP-style code and AWS's exact message."""

    def __init__(self, code: int, message: str, client_token: str | None = None):
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.client_token = client_token


def bad_request(message: str) -> ShadowError:
    return ShadowError(400, message)


def not_found(thing: str, name: str | None) -> ShadowError:
    # AWS quotes the shadow's name (docs/shadows.md gives the sources), and for the classic shadow
    # names the thing
    return ShadowError(404, f"No shadow exists with name: '{name or thing}'")


def too_deep() -> ShadowError:
    return bad_request(f"JSON contains too many levels of nesting; maximum is {MAX_DEPTH}")


VERSION_CONFLICT = "Version conflict"
TOO_LARGE = "The payload exceeds the maximum size allowed"
NOT_UTF8 = "Unsupported documented encoding; supported encoding is UTF-8"
INTERNAL = "Internal service failure"


@dataclass(frozen=True)
class UpdateRequest:
    state: Json | None  # None: the request said "state": null (clears both sections)
    client_token: str | None
    version: int | None


# ---- reading requests ---------------------------------------------------------------------------


def read_json(payload: bytes) -> Any:
    """The payload's JSON value; NaN, Infinity and numbers beyond a double's range are not JSON."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ShadowError(415, NOT_UTF8) from None
    try:
        return strict_json.loads(text)
    except RecursionError:
        # only nesting makes the parser recurse that deep: far past the depth AWS allows [S9]
        raise too_deep() from None
    except strict_json.NotJson:
        raise bad_request("Invalid JSON") from None


def client_token(document: Json) -> str | None:
    if "clientToken" not in document:
        return None
    token = document["clientToken"]
    # a lone surrogate (`"\\ud800"`) is no Unicode text: it could not be echoed back
    if not isinstance(token, str) or not _encodable(token) or len(token.encode("utf-8")) > MAX_CLIENT_TOKEN_BYTES:
        raise bad_request("Invalid clientToken")
    return token


def token_if_any(payload: bytes) -> str | None:
    """For an error answer: the request's valid clientToken whatever else is wrong with the request
    (1e400, NaN), so the caller can match the refusal; None when there is none to find. Never raises."""
    try:
        document = json.loads(payload)  # Python's lenient reading: only the token is wanted
        return client_token(document) if isinstance(document, dict) else None
    except (ValueError, RecursionError, ShadowError):
        return None


def token_of_side_request(payload: bytes) -> str | None:
    """A get or delete request's clientToken; the rest of its content is ignored [S2], and so is a
    payload that is not a JSON object. An over-long token is still refused like an update's [S1]."""
    if not payload.strip():
        return None
    try:
        document = read_json(payload)
    except ShadowError:
        return None
    return client_token(document) if isinstance(document, dict) else None


def parse_update(payload: bytes) -> UpdateRequest:
    """Validate an /update request document [S1][S3]; raise ShadowError with AWS's code and text."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise ShadowError(413, TOO_LARGE)
    try:
        document = read_json(payload)
    except ShadowError as exc:
        exc.client_token = token_if_any(payload)
        raise
    if not isinstance(document, dict):
        raise bad_request("Invalid JSON")
    token = client_token(document)
    try:
        version = _version(document)
        if "state" not in document:
            raise bad_request("Missing required node: state")
        state = document["state"]
        if state is None:
            return UpdateRequest(None, token, version)
        if not isinstance(state, dict):
            raise bad_request("State node must be an object")
        if any(key not in SECTIONS for key in state):
            raise bad_request("State contains an invalid node")
        for section in SECTIONS:
            if section in state:
                _check_section(section, state[section])
        return UpdateRequest(state, token, version)
    except ShadowError as exc:
        exc.client_token = token
        raise


def _version(document: Json) -> int | None:
    if "version" not in document:
        return None
    version = document["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise bad_request("Invalid version")
    return version


def _check_section(section: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise bad_request(f"{section.capitalize()} node must be an object")
    if deeper_than(value, MAX_DEPTH):
        raise too_deep()
    if _array_holds_null(value, in_array=False):
        raise bad_request("Invalid JSON")
    if not _encodable(value):
        raise bad_request("Invalid JSON")  # a lone surrogate escape: text that is not Unicode


def deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` levels (`{"a": 1}` is 1); iterative and
    stopping at the first path past the limit, so no input can exhaust the stack."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        node, level = pending.pop()
        if isinstance(node, dict | list):
            if level == limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            pending.extend((child, level + 1) for child in children)
    return False


def _encodable(value: Any) -> bool:
    try:
        compact(value)
    except UnicodeEncodeError:
        return False
    return True


def _array_holds_null(value: Any, in_array: bool) -> bool:
    if value is None:
        return in_array
    if isinstance(value, dict):
        return any(_array_holds_null(v, False) for v in value.values())
    if isinstance(value, list):
        return any(_array_holds_null(v, True) for v in value)
    return False


def check_names(thing: str, name: str | None) -> None:
    if not THING_NAME.fullmatch(thing):
        raise bad_request("Invalid thing name")
    if name is not None and not SHADOW_NAME.fullmatch(name):
        raise bad_request("Invalid shadow name")


# ---- merge, metadata, delta ---------------------------------------------------------------------


def mirror(value: Any, timestamp: int) -> Any:
    """Metadata for a value: its shape, with {"timestamp": t} at every leaf (array elements too)."""
    if isinstance(value, dict):
        return {k: mirror(v, timestamp) for k, v in value.items()}
    if isinstance(value, list):
        return [mirror(v, timestamp) for v in value]
    return {"timestamp": timestamp}


def without_nulls(value: Any) -> Any:
    """`value` with the nulls of its objects removed; an object that held nothing but nulls (at any
    depth) becomes None, so a null aimed at a field that does not exist adds no empty object (AWS's
    Greengrass shadow manager, JsonMerger.createMergeTree); an explicit {} stays."""
    if not isinstance(value, dict):
        return value
    kept = {k: v for k, v in ((k, without_nulls(v)) for k, v in value.items()) if v is not None}
    return None if not kept and value else kept


def _merge(state: Json, metadata: Json, patch: Json, timestamp: int) -> tuple[Json, Json]:
    state, metadata = dict(state), dict(metadata)
    for key, value in patch.items():
        if value is None:
            state.pop(key, None)
            metadata.pop(key, None)
        elif isinstance(value, dict) and isinstance(state.get(key), dict):
            inner_meta = metadata.get(key)
            state[key], metadata[key] = _merge(
                state[key], inner_meta if isinstance(inner_meta, dict) else {}, value, timestamp
            )
        else:
            clean = without_nulls(value)
            if clean is None:  # only nulls, for a field that is not an object: nothing to set
                if key not in state:
                    continue
                clean = {}
            state[key] = clean
            metadata[key] = mirror(clean, timestamp)
    return state, metadata


def apply_update(state: Json, metadata: Json, request_state: Json | None, timestamp: int) -> tuple[Json, Json]:
    """The stored state and metadata after an accepted update [S1]: only the fields given change, a
    null removes a field (or a whole section), arrays are replaced whole; an emptied section is dropped."""
    if request_state is None:
        return {}, {}
    state, metadata = dict(state), dict(metadata)
    for section in SECTIONS:
        if section not in request_state:
            continue
        patch = request_state[section]
        if patch is None:
            state.pop(section, None)
            metadata.pop(section, None)
            continue
        state[section], metadata[section] = _merge(state.get(section, {}), metadata.get(section, {}), patch, timestamp)
        if not state[section]:
            del state[section]
            metadata.pop(section, None)
    return state, metadata


def same_value(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, objects compare key by key, arrays element by element."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b  # JSON has one number type: 1 and 1.0 are the same value
    return type(a) is type(b) and a == b


def delta(desired: Json, reported: Json) -> Json:
    """Desired fields whose value differs from reported, down to the differing leaf [S1 Delta state]."""
    out: Json = {}
    for key, want in desired.items():
        if key not in reported:
            out[key] = want
            continue
        have = reported[key]
        if isinstance(want, dict) and isinstance(have, dict):
            inner = delta(want, have)
            if inner:
                out[key] = inner
        elif not same_value(want, have):
            out[key] = want
    return out


def delta_metadata(delta_state: Json, desired_metadata: Json) -> Json:
    """The delta's metadata: the desired metadata of the same fields [S1]."""
    out: Json = {}
    for key, value in delta_state.items():
        meta = desired_metadata.get(key, {})
        out[key] = delta_metadata(value, meta) if isinstance(value, dict) and isinstance(meta, dict) else meta
    return out


def state_delta(state: Json) -> Json:
    return delta(state.get("desired", {}), state.get("reported", {}))


def state_size(state: Json) -> int:
    """Bytes counted against the 8 KB limit: compact JSON of desired plus reported [S6]."""
    return sum(len(compact(state[s])) for s in SECTIONS if s in state)


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


# ---- response documents [S1] --------------------------------------------------------------------


def _with_token(document: Json, token: str | None) -> Json:
    if token is not None:
        document["clientToken"] = token
    return document


def error_document(error: ShadowError, timestamp: int) -> Json:
    return _with_token({"code": error.code, "message": error.message, "timestamp": timestamp}, error.client_token)


def update_accepted(request: UpdateRequest, version: int, timestamp: int) -> Json:
    """Only the fields of the request, each with its metadata timestamp."""
    if request.state is None:
        state: Json | None = None
        metadata: Json = {}
    else:
        state = {s: request.state[s] for s in SECTIONS if s in request.state}
        metadata = {s: mirror(v, timestamp) for s, v in state.items()}
    return _with_token(
        {"state": state, "metadata": metadata, "version": version, "timestamp": timestamp}, request.client_token
    )


def snapshot(state: Json, metadata: Json, version: int) -> Json:
    """A document as `/update/documents` shows it: sections only, no delta."""
    return {
        "state": {s: state[s] for s in SECTIONS if s in state},
        "metadata": {s: metadata[s] for s in SECTIONS if s in metadata},
        "version": version,
    }


def documents_message(previous: Json | None, current: Json, timestamp: int, token: str | None) -> Json:
    document: Json = {}
    if previous is not None:
        document["previous"] = previous
    document["current"] = current
    document["timestamp"] = timestamp
    return _with_token(document, token)


def delta_message(state: Json, metadata: Json, version: int, timestamp: int, token: str | None) -> Json | None:
    """The `/update/delta` message, or None when desired and reported agree."""
    changes = state_delta(state)
    if not changes:
        return None
    return _with_token(
        {
            "version": version,
            "timestamp": timestamp,
            "state": changes,
            "metadata": delta_metadata(changes, metadata.get("desired", {})),
        },
        token,
    )


def get_accepted(state: Json, metadata: Json, version: int, timestamp: int, token: str | None) -> Json:
    full_state = {s: state[s] for s in SECTIONS if s in state}
    full_metadata = {s: metadata[s] for s in SECTIONS if s in metadata}
    changes = state_delta(state)
    if changes:
        full_state["delta"] = changes
        full_metadata["delta"] = delta_metadata(changes, metadata.get("desired", {}))
    return _with_token(
        {"state": full_state, "metadata": full_metadata, "version": version, "timestamp": timestamp}, token
    )


def delete_accepted(version: int, timestamp: int, token: str | None) -> Json:
    return _with_token({"version": version, "timestamp": timestamp}, token)
