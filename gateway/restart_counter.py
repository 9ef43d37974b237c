"""A supervisord RPC plugin that counts how often each program was (re)started, which supervisord
itself does not expose; `millgate status` reads it as `millgate.getRestartCounts`.

It runs inside supervisord's process, so it imports only supervisor and the standard library.
"""

from __future__ import annotations

from typing import Any

from supervisor import events


class RestartCounter:
    def __init__(self) -> None:
        self.starts: dict[str, int] = {}
        events.subscribe(events.ProcessStateStartingEvent, self._on_starting)

    def _on_starting(self, event: Any) -> None:
        name = event.process.config.name
        self.starts[name] = self.starts.get(name, 0) + 1

    def getRestartCounts(self) -> dict[str, int]:
        """program name -> restarts since supervisord started (first start not counted)."""
        return {name: max(count - 1, 0) for name, count in self.starts.items()}


def make_interface(supervisord: Any, **config: Any) -> RestartCounter:
    return RestartCounter()
