"""Edge/cloud cooperation: a command from the cloud is checked against limits the plant keeps
locally, carried out on the plant network (a setpoint to the machine), and answered with a report,
so the cloud knows what really happened. A refused command is reported too, never silently dropped.
"""

import os

from functions import sdk

MACHINES = ("press-01",)


def plan(machine, command, speed_min, speed_max):
    """(local actions as [(topic, payload)], report) for a command {"id", "action", "value"}."""
    command = command if isinstance(command, dict) else {}
    report = {"id": command.get("id"), "machine": machine, "action": command.get("action")}
    if machine not in MACHINES:
        return [], {**report, "status": "rejected", "reason": f"unknown machine {machine!r}"}
    if command.get("action") != "set-speed":
        return [], {**report, "status": "rejected", "reason": f"unknown action {command.get('action')!r}"}
    value = command.get("value")
    if not isinstance(value, (int, float)) or not speed_min <= value <= speed_max:
        return [], {**report, "status": "rejected", "reason": f"speed must be {speed_min:g}-{speed_max:g}"}
    action = (f"plant/{machine}/speed/set", {"value": value, "command": command.get("id")})
    return [action], {**report, "status": "applied", "value": value}


def function_handler(event, context):
    topic = context.client_context.custom["subject"]  # commands/<thing>/<machine>
    thing, machine = topic.split("/")[1], topic.split("/")[-1]
    actions, report = plan(
        machine, event, float(os.environ.get("SPEED_MIN", "0")), float(os.environ.get("SPEED_MAX", "60"))
    )
    for action_topic, payload in actions:
        sdk.publish(action_topic, payload, qos=1)
    sdk.publish(f"reports/{thing}/{machine}", report, qos=1)
    return report
