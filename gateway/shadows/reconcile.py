"""The sync reconciliation rule as pure functions: a three-way merge of the local and the cloud copy of
a shadow against the state both last agreed on (the rule itself is described in `gateway/shadows/sync.py`).
No I/O, no MQTT, no store: the sync engine feeds it documents and applies what it returns.
"""

from __future__ import annotations

from typing import Any

from gateway.shadows import document as doc
from gateway.shadows.document import Json

_MISSING: Any = object()


def _same(a: Any, b: Any) -> bool:
    if a is _MISSING or b is _MISSING:
        return a is b
    return doc.same_value(a, b)


def merge3(base: Any, local: Any, cloud: Any, prefer_local: bool) -> Any:
    """One field's reconciled value; `_MISSING` stands for an absent field."""
    if _same(local, cloud):
        return local
    if _same(local, base):
        return cloud
    if _same(cloud, base):
        return local
    if isinstance(local, dict) and isinstance(cloud, dict):
        inner_base = base if isinstance(base, dict) else {}
        merged = {}
        for key in [*local, *(k for k in cloud if k not in local)]:
            value = merge3(
                inner_base.get(key, _MISSING), local.get(key, _MISSING), cloud.get(key, _MISSING), prefer_local
            )
            if value is not _MISSING:
                merged[key] = value
        return merged
    return local if prefer_local else cloud


def reconcile(base: Json | None, local: Json | None, cloud: Json | None, direction: str) -> Json:
    """The state (desired/reported sections) both sides should hold after a sync."""
    merged: Json = {}
    for section in doc.SECTIONS:
        prefer_local = section == "reported" if direction == "both" else direction == "local-to-cloud"
        value = merge3(
            (base or {}).get(section, _MISSING),
            (local or {}).get(section, _MISSING),
            (cloud or {}).get(section, _MISSING),
            prefer_local,
        )
        if value is not _MISSING and value != {}:
            merged[section] = value
    return merged


def state_patch(old: Json, new: Json) -> Json:
    """The update request `state` that turns `old` into `new` (null removes)."""
    out: Json = {}
    for key in old:
        if key not in new:
            out[key] = None
    for key, value in new.items():
        if key not in old:
            out[key] = value
        elif isinstance(value, dict) and isinstance(old[key], dict):
            inner = state_patch(old[key], value)
            if inner:
                out[key] = inner
        elif not doc.same_value(old[key], value):
            out[key] = value
    return out
