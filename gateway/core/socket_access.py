"""Keeps the broker's unix socket connectable by every local uid (function workers run under their
own): mosquitto 2.0 creates it 0770 and recreates it on every restart. Logins are still required.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path

from gateway.backoff import sleep_or_stop

log = logging.getLogger(__name__)

SOCKET_MODE = 0o666
CHECK_INTERVAL_S = 0.5


async def keep_socket_open_to_local_users(socket_path: Path, stop: asyncio.Event) -> None:
    if os.geteuid() != 0:
        return  # every component runs as the same user outside root
    while not stop.is_set():
        try:
            mode = stat.S_IMODE(socket_path.stat().st_mode)
            if mode != SOCKET_MODE:
                os.chmod(socket_path, SOCKET_MODE)
                log.info("event=broker-socket-opened path=%s mode=%o", socket_path, SOCKET_MODE)
        except FileNotFoundError:
            pass
        await sleep_or_stop(stop, CHECK_INTERVAL_S)
