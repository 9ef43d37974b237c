"""Demo on-demand function: a rolling z-score on the press temperature; a reading more than THRESHOLD
standard deviations from the recent mean is published as an alert. State lives in the warm worker."""

import math
import os
from collections import deque

from functions import sdk

THRESHOLD = float(os.environ.get("THRESHOLD", "3.0"))
recent: deque[float] = deque(maxlen=60)


def function_handler(event, context):
    if not isinstance(event, dict) or event.get("quality") != "good":
        return None
    value = float(event["value"])
    score = 0.0
    if len(recent) >= 10:
        mean = sum(recent) / len(recent)
        spread = math.sqrt(sum((v - mean) ** 2 for v in recent) / len(recent)) or 1e-9
        score = abs(value - mean) / spread
        if score > THRESHOLD:
            sdk.publish(
                "alerts/line1/press-01/temperature",
                {"value": value, "mean": round(mean, 2), "z": round(score, 2), "ts": event.get("ts")},
                qos=1,
            )
    recent.append(value)
    return {"z": round(score, 2)}
