"""Masking: the cloud learns that a reading happened, when, how good it was and whether it was in
its normal band, never the value. The whitelist backs this up: only `meta/#` from this function is
routed to the cloud.
"""

import os

from functions import sdk

KEPT = ("ts", "quality", "unit", "units")  # millgate's adapters say "units"; devices may say "unit"


def mask(topic, reading, low, high):
    """(topic, metadata) for a reading on plant/<device>/<tag...>: everything but the value."""
    parts = topic.split("/")
    device, tag = parts[1], "/".join(parts[2:]) or "_"
    meta = {"device": device, "tag": tag}
    if isinstance(reading, dict):
        meta.update({k: reading[k] for k in KEPT if k in reading})
        value = reading.get("value")
    else:
        value = None
    meta["has_value"] = isinstance(value, (int, float))
    if meta["has_value"]:
        meta["in_band"] = low <= value <= high
    return f"meta/{device}/{tag}", meta


def function_handler(event, context):
    low = float(os.environ.get("BAND_LOW", "-inf"))
    high = float(os.environ.get("BAND_HIGH", "inf"))
    topic, meta = mask(context.client_context.custom["subject"], event, low, high)
    sdk.publish(topic, meta, qos=1)
    return meta
