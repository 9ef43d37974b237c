"""Tells a running broker to pick up new certificates, CRL and ACLs (SIGHUP through supervisord), or
restarts it when connections made under the old trust must end (a CA rotation).

It only signals; it writes no file and decides nothing about when a reload is due.
"""

from __future__ import annotations

import logging
import xmlrpc.client

from gateway.paths import GatewayPaths
from gateway.status import SupervisorTimeout, supervisor_proxy

log = logging.getLogger(__name__)
BROKER = "broker"


class BrokerReloadFailed(RuntimeError):
    pass


def reload_broker(paths: GatewayPaths) -> bool:
    """SIGHUP the broker; False when the gateway is not running (the next start reads the files)."""
    try:
        supervisor_proxy(paths).supervisor.signalProcess(BROKER, "HUP")
    except SupervisorTimeout as exc:  # there, but stuck: the broker keeps its old users and ACL
        raise BrokerReloadFailed(str(exc)) from exc
    except OSError:
        return False
    except xmlrpc.client.Fault as exc:
        raise BrokerReloadFailed(f"supervisord at {paths.supervisor_socket}: cannot signal the broker: {exc}") from exc
    log.info("event=broker-reloaded")
    return True


def restart_broker(paths: GatewayPaths) -> bool:
    """Stop and start the broker, ending every connection; False when the gateway is not running."""
    try:
        proxy = supervisor_proxy(paths)
        proxy.supervisor.stopProcess(BROKER, True)
        proxy.supervisor.startProcess(BROKER, True)
    except SupervisorTimeout as exc:
        raise BrokerReloadFailed(str(exc)) from exc
    except OSError:
        return False
    except xmlrpc.client.Fault as exc:
        raise BrokerReloadFailed(f"supervisord at {paths.supervisor_socket}: cannot restart the broker: {exc}") from exc
    log.info("event=broker-restarted")
    return True
