"""A supervisord plugin for how millgate's programs stop: the gateway in bands of programs instead of
one program at a time, and nothing left of a program's process group once the program has gone.

supervisord stops its process groups strictly one after another, and every millgate program is a group
of its own (so that a deployment can add, remove and restart each alone); with N programs a shutdown
could take N stop deadlines. When supervisord starts stopping, this regroups its stop queue: programs
whose priority is at or above a band's floor stop together, bands in descending priority order
(gateway/supervisor_config.py sets the floors and each program's stop deadline).

supervisord signals a program's whole process group (stopasgroup) but waits only for the program's own
pid, so a child that ignores SIGTERM (a function's helper process, a worker) outlived it, even the
gateway. When a program has stopped or exited, whatever is still in its process group is SIGKILLed.

It runs inside supervisord's process, so it imports only supervisor and the standard library.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from supervisor import events


class StopBand:
    """Several process groups that supervisord's shutdown stops as if they were one."""

    def __init__(self, floor: int, groups: list[Any]):
        self.floor = floor
        self.groups = groups

    def stop_all(self) -> None:
        for group in self.groups:
            group.stop_all()

    def get_unstopped_processes(self) -> list[Any]:
        return [process for group in self.groups for process in group.get_unstopped_processes()]


def bands(groups: list[Any], floors: list[int]) -> list[StopBand]:
    """`groups` in bands, lowest band first (supervisord stops the last one first); each band holds
    the groups whose priority is at least its floor and below the next higher floor."""
    ordered = sorted(set(floors), reverse=True)
    found: dict[int, list[Any]] = {}
    for group in groups:
        floor = next((f for f in ordered if group.config.priority >= f), 0)
        found.setdefault(floor, []).append(group)
    return [StopBand(floor, found[floor]) for floor in sorted(found)]


def kill_leftovers(pgid: int) -> bool:
    """SIGKILL what is left in the process group a program led; True when something was."""
    if pgid <= 1:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False  # the group is empty (its id cannot have been reused while anyone was in it)
    return True


class StopBands:
    """Exposed under the `stopbands` RPC namespace: the floors in force and the leftovers killed."""

    def __init__(self, supervisord: Any, floors: list[int]):
        self.supervisord = supervisord
        self.floors = floors
        self.leftovers: dict[str, int] = {}  # program -> times something of its group had to be killed
        events.subscribe(events.SupervisorStoppingEvent, self._on_stopping)
        for gone in (events.ProcessStateStoppedEvent, events.ProcessStateExitedEvent, events.ProcessStateBackoffEvent):
            events.subscribe(gone, self._on_gone)

    def _on_gone(self, event: Any) -> None:
        # sent from supervisord's reaping, while process.pid is still the reaped leader's (its pgid:
        # supervisord's child calls setpgrp)
        process = event.process
        if kill_leftovers(int(process.pid or 0)):
            name = process.config.name
            self.leftovers[name] = self.leftovers.get(name, 0) + 1
            process.config.options.logger.warn(f"killed what was left of {name}'s process group {process.pid}")

    def _on_stopping(self, _event: Any) -> None:
        # supervisord has just queued every group, sorted by priority, and pops from the end
        queued = self.supervisord.stop_groups
        if queued:
            self.supervisord.stop_groups = bands(list(queued), self.floors)

    def getFloors(self) -> list[int]:  # supervisord RPC names are camelCase
        return self.floors

    def getLeftovers(self) -> dict[str, int]:
        return self.leftovers


def install(supervisord: Any, floors: str = "", **_config: Any) -> StopBands:
    """[rpcinterface:stopbands] with `floors = 40,20`: priorities >= 40 stop first, together; then
    those >= 20; then the rest."""
    return StopBands(supervisord, [int(f) for f in floors.split(",") if f.strip()])
