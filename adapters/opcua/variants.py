"""Converts between OPC-UA values and the gateway's JSON: a DataValue from the server becomes a
TagValue (value made JSON-safe, quality, source and server timestamps), and a JSON value from a
command becomes a Variant of the node's own type, or a ValueError that says why it cannot.

No I/O: the node's VariantType and ValueRank are read by the session and handed in.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import uuid
from dataclasses import fields, is_dataclass
from enum import Enum
from typing import Any

from asyncua import ua

from adapters.base.tag import Quality, SourceTimes, TagValue, now_ms
from adapters.opcua.quality import quality_of, status_reason

VT = ua.VariantType
INTEGER_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    VT.SByte: (-(2**7), 2**7 - 1),
    VT.Byte: (0, 2**8 - 1),
    VT.Int16: (-(2**15), 2**15 - 1),
    VT.UInt16: (0, 2**16 - 1),
    VT.Int32: (-(2**31), 2**31 - 1),
    VT.UInt32: (0, 2**32 - 1),
    VT.Int64: (-(2**63), 2**63 - 1),
    VT.UInt64: (0, 2**64 - 1),
}
FLOAT_TYPES = (VT.Float, VT.Double)
FLOAT32_MAX = 3.4028234663852886e38


def epoch_ms(when: dt.datetime | None) -> int | None:
    if when is None:
        return None
    if when.tzinfo is None:  # asyncua hands out naive UTC datetimes
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def to_json(value: Any) -> Any:
    """A JSON-encodable rendering of whatever asyncua decoded (numbers stay numbers; NaN becomes null)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, ua.NodeId | ua.QualifiedName):
        return value.to_string()
    if isinstance(value, ua.Variant):
        return to_json(value.Value)
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    return str(value)


def reading_of(data: ua.DataValue) -> TagValue:
    """The TagValue of a DataValue: good and uncertain keep their value, bad carries the status as reason."""
    code = data.StatusCode.value if data.StatusCode is not None else 0
    quality = quality_of(code)
    times = SourceTimes(epoch_ms(data.SourceTimestamp), epoch_ms(data.ServerTimestamp))
    if quality == Quality.BAD:
        return TagValue(None, quality, now_ms(), status_reason(code), times)
    variant = data.Value
    raw = variant.Value if variant is not None else None
    if variant is not None and isinstance(raw, float) and not math.isfinite(raw):
        # a server (or the PLC behind it) flags a failed measurement with NaN; null and good would hide it
        what = "NaN" if math.isnan(raw) else ("+Inf" if raw > 0 else "-Inf")
        sent = f"not a finite number: the server sent {variant.VariantType.name} {what}"
        return TagValue(None, Quality.BAD, now_ms(), sent, times)
    value = to_json(raw)
    reason = None if quality == Quality.GOOD else status_reason(code)
    return TagValue(value, quality, now_ms(), reason, times)


def bad_reading(reason: str) -> TagValue:
    """A node the adapter cannot read at all (session lost, node unknown): no server times to give."""
    return TagValue(None, Quality.BAD, now_ms(), reason, SourceTimes(None, None))


def _scalar(value: Any, vtype: ua.VariantType) -> Any:
    if vtype == VT.Boolean:
        if not isinstance(value, bool):
            raise ValueError(f"Boolean needs true or false, not {value!r}")
        return value
    if vtype in INTEGER_RANGES:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{vtype.name} needs an integer, not {value!r}")
        low, high = INTEGER_RANGES[vtype]
        if not low <= value <= high:
            raise ValueError(f"{value} is out of the {vtype.name} range ({low}..{high})")
        return value
    if vtype in FLOAT_TYPES:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{vtype.name} needs a number, not {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise ValueError(f"an integer this large is out of the {vtype.name} range") from None
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number")
        if vtype == VT.Float and abs(number) > FLOAT32_MAX:
            raise ValueError(f"{value} is out of the Float range (±{FLOAT32_MAX:.4g})")
        return number
    if vtype in (VT.String, VT.XmlElement):
        if not isinstance(value, str):
            raise ValueError(f"{vtype.name} needs a string, not {value!r}")
        return value
    if vtype == VT.LocalizedText:
        if not isinstance(value, str):
            raise ValueError(f"LocalizedText needs a string, not {value!r}")
        return ua.LocalizedText(value)
    if vtype == VT.DateTime:
        if not isinstance(value, str):
            raise ValueError(f"DateTime needs an ISO 8601 string, not {value!r}")
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"DateTime needs an ISO 8601 string, not {value!r}") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    if vtype == VT.ByteString:
        if not isinstance(value, str):
            raise ValueError("ByteString needs base64 text")
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise ValueError("ByteString needs base64 text") from None
    if vtype == VT.Guid:
        try:
            return uuid.UUID(str(value))
        except ValueError:
            raise ValueError(f"Guid needs a UUID string, not {value!r}") from None
    if vtype == VT.NodeId:
        try:
            return ua.NodeId.from_string(str(value))
        except (ValueError, ua.UaError):
            raise ValueError(f"NodeId needs text like 'ns=2;s=Name', not {value!r}") from None
    raise ValueError(f"writing a {vtype.name} from JSON is not supported")


def to_variant(value: Any, vtype: ua.VariantType, value_rank: int = -1) -> ua.Variant:
    """A Variant of exactly `vtype` (a list for array nodes, value_rank >= 1), or ValueError."""
    if value_rank >= 1 or (value_rank == 0 and isinstance(value, list)):
        if not isinstance(value, list):
            raise ValueError(f"the node holds an array of {vtype.name}: send a JSON list")
        return ua.Variant([_scalar(item, vtype) for item in value], vtype, is_array=True)
    if isinstance(value, list):
        raise ValueError(f"the node holds one {vtype.name}, not a list")
    if vtype == VT.Variant:  # an abstract type (BaseDataType, Number): let the stack guess
        return ua.Variant(value)
    return ua.Variant(_scalar(value, vtype), vtype)
