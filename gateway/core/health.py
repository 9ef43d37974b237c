"""The core's view of every component, from their retained status heartbeats on the local broker."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.mqtt import Received
from gateway.topics import status_component

log = logging.getLogger(__name__)


@dataclass
class ComponentHealth:
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    _on_offline: dict[str, list[Callable[[], None]]] = field(default_factory=dict)

    def when_offline(self, component: str, callback: Callable[[], None]) -> None:
        """Call `callback` whenever `component` goes offline (a clean stop, or its last will)."""
        self._on_offline.setdefault(component, []).append(callback)

    async def on_status(self, message: Received) -> None:
        component = status_component(message.topic)
        try:
            status = json.loads(message.payload)
            claimed = status["component"]
            state = str(status["state"])
        except (ValueError, KeyError, TypeError):
            log.warning("event=bad-status topic=%s payload=%r", message.topic, message.payload[:200])
            return
        if component is None or claimed != component:
            # only `component` may write on its status topic (the ACL): it does not speak for another
            log.warning("event=bad-status topic=%s claims=%r reason=not the topic's component", message.topic, claimed)
            return
        previous = self.seen.get(component, {}).get("state")
        self.seen[component] = status
        if previous != state:
            log.info("event=component-state component=%s state=%s pid=%s", component, state, status.get("pid"))
            if state == "offline":
                for callback in self._on_offline.get(component, []):
                    callback()

    def summary(self) -> dict[str, Any]:
        online = sorted(c for c, s in self.seen.items() if s.get("state") == "online")
        return {"components_online": online}
