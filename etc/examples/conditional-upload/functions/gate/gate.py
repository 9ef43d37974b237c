"""Conditional upload: forward a reading to the cloud only when a condition holds. Here: the value
left its band [LOW, HIGH], moved another STEP while outside it, or came back in (once). Everything
else stays local. A long-lived function, so one worker sees each device's readings in order.
"""

import os

from functions import sdk


class Gate:
    def __init__(self, low, high, step):
        self.low, self.high, self.step = low, high, step
        self.outside = {}  # device -> the last value forwarded while outside the band

    def decide(self, device, value):
        """The reason to forward this value ('left-band', 'moved', 'back-in-band'), or None to keep it local."""
        inside = self.low <= value <= self.high
        last = self.outside.get(device)
        if inside:
            if last is None:
                return None
            del self.outside[device]
            return "back-in-band"
        if last is None:
            self.outside[device] = value
            return "left-band"
        if abs(value - last) >= self.step:
            self.outside[device] = value
            return "moved"
        return None


gate = Gate(float(os.environ.get("LOW", "20")), float(os.environ.get("HIGH", "80")), float(os.environ.get("STEP", "5")))


def function_handler(event, context):
    if not isinstance(event, dict) or not isinstance(event.get("value"), (int, float)):
        return None
    device = context.client_context.custom["subject"].split("/")[1]  # plant/<device>/temperature
    reason = gate.decide(device, float(event["value"]))
    if reason is not None:
        sdk.publish(f"upload/{device}/temperature", {**event, "device": device, "reason": reason}, qos=1)
    return reason
