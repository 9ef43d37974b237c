"""Reference long-lived function: min/mean/max/count of every numeric stream routed to it, published
once per WINDOW_S seconds on aggregates/<adapter> (one message per adapter and window) and reset.
A thread started at import flushes the windows; the handler only accumulates."""

import os
import threading
import time

from functions import sdk

WINDOW_S = float(os.environ.get("WINDOW_S", "10"))
lock = threading.Lock()
windows = {}


def function_handler(event, context):
    if not isinstance(event, dict) or not isinstance(event.get("value"), (int, float)):
        return
    topic = context.client_context.custom["subject"]
    value = float(event["value"])
    with lock:
        stats = windows.get(topic)
        if stats is None:
            windows[topic] = [value, value, value, 1]
        else:
            stats[0] = min(stats[0], value)
            stats[1] = max(stats[1], value)
            stats[2] += value
            stats[3] += 1


def flush_forever():
    while True:
        time.sleep(WINDOW_S)
        with lock:
            done = dict(windows)
            windows.clear()
        by_adapter = {}
        for topic, (low, high, total, count) in done.items():
            adapter, _, rest = topic.partition("/")
            by_adapter.setdefault(adapter, {})[rest] = {
                "min": low,
                "max": high,
                "mean": round(total / count, 4),
                "n": count,
            }
        for adapter, streams in by_adapter.items():
            sdk.publish(f"aggregates/{adapter}", {"window_s": WINDOW_S, "ts": time.time(), "streams": streams}, qos=1)


threading.Thread(target=flush_forever, daemon=True, name="aggregate-flush").start()
