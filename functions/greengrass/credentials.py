"""The container credential provider behind `/2016-11-01/credentialprovider/`: the gateway's own AWS
credentials from the standard chain, for boto3 inside v1 functions. They are resolved in a short-lived
child process (boto3 is never resident in the core) and cached until shortly before they expire.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 30.0
REFRESH_BEFORE_S = 300.0  # botocore refreshes container credentials 15 min ahead; we stay fresher
RETRY_AFTER_FAILURE_S = 5.0


class CredentialsUnavailable(Exception):
    """The gateway has no AWS credentials to lend; the message says why."""


class CredentialProvider:
    def __init__(self) -> None:
        self._cached: dict[str, Any] | None = None
        self._expires_at = 0.0
        self._failed_until = 0.0
        self._failure = ""
        self._lock = asyncio.Lock()
        self.state = "idle"

    async def current(self) -> dict[str, Any]:
        """AccessKeyId, SecretAccessKey, Token, Expiration, as botocore's container provider reads them."""
        async with self._lock:
            now = time.time()
            if self._cached is not None and now < self._expires_at - REFRESH_BEFORE_S:
                return self._cached
            if now < self._failed_until:
                raise CredentialsUnavailable(self._failure)
            try:
                found = await self._fetch()
            except CredentialsUnavailable as exc:
                if self.state != "failed":
                    log.error("event=greengrass-credentials-unavailable reason=%s", exc)
                self.state, self._failure = "failed", str(exc)
                self._failed_until = now + RETRY_AFTER_FAILURE_S
                raise
            if self.state != "serving":
                log.info("event=greengrass-credentials-available expires=%s", found["Expiration"])
            self.state = "serving"
            self._cached = found
            self._expires_at = datetime.fromisoformat(found["Expiration"].replace("Z", "+00:00")).timestamp()
            return found

    async def _fetch(self) -> dict[str, Any]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "functions.greengrass.credential_fetch",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                out, err = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise CredentialsUnavailable(f"resolving credentials took longer than {FETCH_TIMEOUT_S:.0f} s") from None
        if process.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise CredentialsUnavailable(lines[-1] if lines else f"credential fetch exited {process.returncode}")
        try:
            found: dict[str, Any] = json.loads(out)
            for key in ("AccessKeyId", "SecretAccessKey", "Token", "Expiration"):
                if not isinstance(found.get(key), str):
                    raise ValueError(f"no {key}")
        except ValueError as exc:
            raise CredentialsUnavailable(f"credential fetch printed no credentials: {exc}") from None
        return found
