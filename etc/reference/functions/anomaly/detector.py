"""Reference on-demand function: a rolling z-score on one tag stream. Every reading gets a score on
scores/<device>/<tag>; a reading more than THRESHOLD standard deviations from the recent mean is also
an alert. The window lives in the warm worker (max_concurrency = 1 keeps it to one)."""

import math
import os
from collections import deque

from functions import sdk

THRESHOLD = float(os.environ.get("THRESHOLD", "3.0"))
recent = deque(maxlen=60)


def function_handler(event, context):
    if not isinstance(event, dict) or event.get("quality", "good") != "good":
        return None
    value = float(event["value"])
    score = 0.0
    if len(recent) >= 10:
        mean = sum(recent) / len(recent)
        spread = math.sqrt(sum((v - mean) ** 2 for v in recent) / len(recent)) or 1e-9
        score = abs(value - mean) / spread
    recent.append(value)
    tail = "/".join(context.client_context.custom["subject"].split("/")[1:])
    verdict = {"value": value, "z": round(score, 2), "ts": event.get("ts"), "seq": event.get("seq")}
    sdk.publish(f"scores/{tail}", verdict, qos=1)
    if score > THRESHOLD:
        sdk.publish(f"alerts/{tail}", verdict, qos=1)
    return verdict
