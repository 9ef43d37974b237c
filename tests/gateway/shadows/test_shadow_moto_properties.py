"""Property test: random valid update/delete sequences give the same documents, deltas and versions in
millgate's shadow handler (over a real shadows.db) as in moto's iot-data backend, an independent
implementation, compared only where moto matches AWS (aws-shadow-semantics.md section 9).

Left out because moto deviates (measured with moto 5.2.5): `"desired": null` (moto keeps the section),
the version after a delete (moto counts the delete as a version: delete of N answers N+1; millgate, like
Greengrass v2's shadow manager, answers N and continues at N+1), limits, clientToken and errors.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto.server import ThreadedMotoServer

from gateway.shadows.handler import ShadowHandler
from storage.shadows import ShadowStore

KEYS = st.sampled_from(["a", "b", "c"])
LEAVES = st.one_of(
    st.integers(min_value=2, max_value=50),  # 0 and 1 left out: moto compares True == 1 as Python does
    st.text(alphabet="xyz", min_size=1, max_size=3),
    st.booleans(),
    st.lists(st.integers(min_value=2, max_value=9), min_size=1, max_size=3),
)
VALUES = st.recursive(LEAVES, lambda inner: st.dictionaries(KEYS, inner, min_size=1, max_size=3), max_leaves=6)
PATCHES = st.dictionaries(KEYS, st.one_of(VALUES, st.none()), min_size=1, max_size=3)
UPDATES = st.one_of(
    st.fixed_dictionaries({"desired": PATCHES}),
    st.fixed_dictionaries({"reported": PATCHES}),
    st.fixed_dictionaries({"desired": PATCHES, "reported": PATCHES}),
)
OPERATIONS = st.lists(st.one_of(UPDATES, st.just("delete")), min_size=1, max_size=8)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def moto_iot() -> Iterator[tuple[Any, Any]]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    kwargs = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    try:
        yield boto3.client("iot", **kwargs), boto3.client("iot-data", **kwargs)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShadowHandler]:
    store = ShadowStore(Path(tmp_path_factory.mktemp("shadows")) / "shadows.db")
    yield ShadowHandler(store)
    store.close()


def _prune(value: Any) -> Any:
    """Empty objects inside a delta: moto keeps `{"a": {}}` where nothing differs below `a`."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v != {}}
    return value


def _comparable(document: dict[str, Any]) -> dict[str, Any]:
    state = dict(document.get("state") or {})
    if "delta" in state:
        state["delta"] = _prune(state["delta"])
        if not state["delta"]:
            del state["delta"]
    return state


def _ours(handler: ShadowHandler, thing: str, operation: str, body: Any = None) -> tuple[str, dict[str, Any]]:
    payload = json.dumps(body).encode() if body is not None else b""
    outcome = handler.handle(thing, None, operation, payload)
    topic = outcome.messages[0].topic
    return topic.rsplit("/", 1)[-1], json.loads(outcome.messages[0].payload)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS)
def test_update_sequences_match_moto(moto_iot: tuple[Any, Any], handler: ShadowHandler, operations: list) -> None:
    """sections 2-5 where moto matches AWS (section 9): merge, null deletes, delta, version."""
    iot, data = moto_iot
    thing = f"p{uuid.uuid4().hex[:10]}"
    iot.create_thing(thingName=thing)
    deletes = 0
    exists = False
    for operation in operations:
        if operation == "delete":
            if not exists:
                continue
            moto_answer = json.loads(data.delete_thing_shadow(thingName=thing)["payload"].read())
            outcome, ours = _ours(handler, thing, "delete")
            assert outcome == "accepted"
            assert ours["version"] == moto_answer["version"] - deletes - 1
            deletes += 1
            exists = False
            continue
        request = {"state": operation}
        moto_answer = json.loads(
            data.update_thing_shadow(thingName=thing, payload=json.dumps(request))["payload"].read()
        )
        outcome, ours = _ours(handler, thing, "update", request)
        assert outcome == "accepted", ours
        assert ours["version"] == moto_answer["version"] - deletes
        exists = True
        moto_get = json.loads(data.get_thing_shadow(thingName=thing)["payload"].read())
        outcome, our_get = _ours(handler, thing, "get")
        assert outcome == "accepted"
        assert _comparable(our_get) == _comparable(moto_get), request
        assert our_get["version"] == moto_get["version"] - deletes
