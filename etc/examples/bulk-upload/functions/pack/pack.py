"""Bulk upload: one vibration window in, two messages out. The whole window, compacted, goes to a
`bulk/` topic that the uplink batches into S3 objects; a summary of a few bytes goes to `telemetry/`
over MQTT. The cloud's MQTT bill and bandwidth see the summary, not 1,000 samples a second.
"""

import math

from functions import sdk


def pack(device, window):
    """(bulk record, summary) for a window {"ts", "rate_hz", "samples": [...]}, or None if it is not one."""
    samples = window.get("samples") if isinstance(window, dict) else None
    if not samples or not all(isinstance(s, (int, float)) for s in samples):
        return None
    rms = math.sqrt(sum(s * s for s in samples) / len(samples))
    peak = max(abs(s) for s in samples)
    ts, rate = window.get("ts"), window.get("rate_hz")
    record = {"device": device, "ts": ts, "rate_hz": rate, "samples": [round(s, 4) for s in samples]}
    summary = {"device": device, "ts": ts, "count": len(samples), "rms": round(rms, 4), "peak": round(peak, 4)}
    return record, summary


def function_handler(event, context):
    device = context.client_context.custom["subject"].split("/")[1]  # plant/<device>/vibration/raw
    packed = pack(device, event)
    if packed is None:
        return None
    record, summary = packed
    sdk.publish(f"bulk/{device}/vibration", record, qos=1)
    sdk.publish(f"telemetry/{device}/vibration", summary, qos=1)
    return summary
