"""The core's certificate keeper: re-issues the broker's server certificate well before it expires
(or when the CA generation or the machine's addresses changed, or its key is not the certificate's),
signs the CRL again when it is not the current CA's, and makes mosquitto reload them with SIGHUP,
which keeps every connected client.

It never creates or rotates the CA and never touches device certificates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from gateway.backoff import sleep_or_stop
from gateway.broker_reload import BrokerReloadFailed, reload_broker
from gateway.ca import (
    CaError,
    crl_problem,
    file_owner,
    issue_server_cert,
    load_ca,
    load_server_cert,
    now_utc,
    renewal_time,
    server_cert_renewal_reason,
    write_crl,
)
from gateway.config import GatewayConfig
from gateway.device_registry import RegistryCorrupt
from gateway.paths import GatewayPaths

log = logging.getLogger(__name__)
CA_EXPIRY_WARNING = timedelta(days=30)


class CertRenewal:
    """Checks every `broker.server_cert_check_s` seconds (sooner when the renewal time is nearer)."""

    def __init__(
        self,
        paths: GatewayPaths,
        config: GatewayConfig,
        reload: Callable[[GatewayPaths], bool] = reload_broker,
    ):
        self.paths = paths
        self.config = config
        self.reload = reload
        self.state = "starting"
        self.last_error: str | None = None
        self.renewals = 0
        self._warned_ca_expiry = False

    def health(self) -> dict[str, object]:
        cert = load_server_cert(self.paths)
        return {
            "server_cert": self.state,
            "server_cert_not_after": f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}" if cert else None,
            "server_cert_renewals": self.renewals,
            "server_cert_error": self.last_error,
        }

    def check_once(self) -> float:
        """Renew if due; return how many seconds until the next look. Blocking: run in a thread."""
        ca = load_ca(self.paths)
        now = now_utc()
        if ca.cert.not_valid_after_utc - now < CA_EXPIRY_WARNING and not self._warned_ca_expiry:
            self._warned_ca_expiry = True
            log.warning(
                "event=ca-expiring not_after=%s action='run `millgate ca rotate` and re-issue device certificates'",
                f"{ca.cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
            )
        reason = server_cert_renewal_reason(self.paths, ca, self.config, now)
        if reason is not None:
            issued = issue_server_cert(self.paths, ca, self.config, file_owner())
            self.renewals += 1
            reloaded = self.reload(self.paths)
            log.info(
                "event=server-cert-renewed reason=%r serial=%x not_after=%s broker_reloaded=%s",
                reason,
                issued.serial_number,
                f"{issued.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
                reloaded,
            )
        crl_reason = crl_problem(self.paths, ca)
        if crl_reason is not None:
            write_crl(self.paths, ca, file_owner())
            log.warning("event=crl-rewritten reason=%r broker_reloaded=%s", crl_reason, self.reload(self.paths))
        cert = load_server_cert(self.paths)
        interval = self.config.broker.server_cert_check_s
        if cert is not None:
            until = (renewal_time(cert, self.config.broker.server_cert_renew_at) - now_utc()).total_seconds()
            interval = min(interval, max(until, 1.0))
        return interval

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                interval = await asyncio.to_thread(self.check_once)
            except (CaError, RegistryCorrupt, OSError, BrokerReloadFailed) as exc:
                if self.state != "failed":
                    log.error("event=server-cert-check-failed reason=%s", exc)
                self.state, self.last_error = "failed", str(exc)
                interval = min(self.config.broker.server_cert_check_s, 60.0)
            else:
                if self.state == "failed":
                    log.info("event=server-cert-check-recovered")
                self.state, self.last_error = "ok", None
            await sleep_or_stop(stop, interval)
