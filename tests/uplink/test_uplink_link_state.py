"""An unreachable or TLS-failing cloud endpoint is logged once per state change with its reason, not
once per retry (issue 5, "Bad input"), while the uplink retries every few hundred milliseconds."""

from __future__ import annotations

import time

from tests.fixtures.gateway import RunningGateway, wait_until
from tests.uplink.conftest import CloudBroker
from tests.uplink.test_uplink_drain import GATEWAY, uplink_status

RETRYING_S = 3.0  # with reconnect_max_s = 0.5, many attempts


def events(gw: RunningGateway, event: str) -> list[str]:
    log = gw.paths.component_log("uplink").read_text()
    return [line for line in log.splitlines() if f"event={event} " in line]


def test_a_tls_failure_is_logged_once_with_the_reason(uplink_gateway, cloud_broker: CloudBroker) -> None:
    cloud_broker.start()
    toml = cloud_broker.toml().replace(str(cloud_broker.pki.ca), str(cloud_broker.pki.other_ca))
    gw = uplink_gateway(GATEWAY + toml)
    wait_until(lambda: "TLS failed" in (uplink_status(gw)["cloud"]["reason"] or ""), 10, "the TLS failure")
    time.sleep(RETRYING_S)
    (line,) = events(gw, "cloud-disconnected")
    assert "TLS failed" in line and "CERTIFICATE_VERIFY_FAILED" in line, line
    assert f"endpoint=localhost:{cloud_broker.port}" in line
    assert uplink_status(gw)["cloud"]["connected"] is False


def test_an_unreachable_endpoint_is_logged_once_and_so_is_its_return(uplink_gateway, cloud_broker: CloudBroker) -> None:
    gw = uplink_gateway(GATEWAY + cloud_broker.toml())  # nothing listens on the port yet
    wait_until(lambda: "refused" in (uplink_status(gw)["cloud"]["reason"] or ""), 10, "the refused connection")
    time.sleep(RETRYING_S)
    (line,) = events(gw, "cloud-disconnected")
    assert "Connection refused" in line, line
    cloud_broker.start()
    wait_until(lambda: uplink_status(gw)["cloud"]["connected"], 10, "the cloud link")
    time.sleep(1.0)
    assert len(events(gw, "cloud-connected")) == 1
    assert len(events(gw, "cloud-disconnected")) == 1
