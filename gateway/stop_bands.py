"""A supervisord plugin that stops the gateway one band of programs at a time instead of one program
at a time, so a shutdown's worst case is the sum over a few bands, not over every program.

supervisord stops its process groups strictly one after another, and every millgate program is a group
of its own (so that a deployment can add, remove and restart each alone); with N programs a shutdown
could take N stop deadlines. When supervisord starts stopping, this regroups its stop queue: programs
whose priority is at or above a band's floor stop together, bands in descending priority order
(gateway/supervisor_config.py sets the floors and each program's stop deadline).

It runs inside supervisord's process, so it imports only supervisor and the standard library.
"""

from __future__ import annotations

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


class StopBands:
    """Exposed under the `stopbands` RPC namespace: the floors in force."""

    def __init__(self, supervisord: Any, floors: list[int]):
        self.supervisord = supervisord
        self.floors = floors
        events.subscribe(events.SupervisorStoppingEvent, self._on_stopping)

    def _on_stopping(self, _event: Any) -> None:
        # supervisord has just queued every group, sorted by priority, and pops from the end
        queued = self.supervisord.stop_groups
        if queued:
            self.supervisord.stop_groups = bands(list(queued), self.floors)

    def getFloors(self) -> list[int]:  # supervisord RPC names are camelCase
        return self.floors


def install(supervisord: Any, floors: str = "", **_config: Any) -> StopBands:
    """[rpcinterface:stopbands] with `floors = 40,20`: priorities >= 40 stop first, together; then
    those >= 20; then the rest."""
    return StopBands(supervisord, [int(f) for f in floors.split(",") if f.strip()])
