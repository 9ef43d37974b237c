"""The gateway's own Greengrass discovery API (issue 3, item 6): mutual TLS with the device's
certificate, AWS's JSON shape with the core's connectivity and the group CA, 403 for any thing but the
caller's own (enrolled or not, so the answer tells nothing about other things) or a client without a
certificate, 404 for a caller whose own thing is not a device of the group, and a TLS refusal (logged
with the reason) for a revoked or foreign certificate. AWS's 403 and 404: "Troubleshooting client
devices", AWS IoT Greengrass developer guide (403: no permission to call greengrass:Discover for that
thing; 404: the thing provided for discovery was not found). Clients on the plant network that open
connections and trickle a request cannot hold discovery's connection slots for ever.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway import ca as group_ca
from gateway import discovery as discovery_api
from gateway.config import GatewayConfig
from gateway.config_loader import load_config
from gateway.discovery import discover_response
from gateway.ip_detector import interface_addresses
from tests.fixtures.gateway import RunningGateway, wait_until
from tests.fixtures.slow_clients import start_trickling
from tests.fixtures.tls_devices import (
    DeviceFiles,
    client_context,
    enrol,
    foreign_ca_device,
    free_port,
    gateway_on,
    peer_certificate,
)


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    tls_port, discovery_port = free_port(), free_port()
    toml = f"""
[gateway]
thing_name = "disc-gw"
status_interval_s = 0.5

[broker]
tls_port = {tls_port}

[discovery]
port = {discovery_port}
"""
    with gateway_on(toml) as running:
        running.tls_port, running.discovery_port = tls_port, discovery_port  # type: ignore[attr-defined]
        wait_until(lambda: "event=discovery-serving" in core_log(running), 10, "discovery to listen")
        yield running


def core_log(gw: RunningGateway) -> str:
    return gw.paths.component_log("core").read_text()


def discover(port: int, thing: str, files: DeviceFiles | None, trust: Path) -> tuple[int, dict]:
    """GET /greengrass/discover/thing/<thing> the way AWS's v1 Python SDK does it: HTTP/1.1 with a
    Host header, status from the status line, body length from a lower-case `content-length`."""
    context = client_context(files, trust)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(f"GET /greengrass/discover/thing/{thing} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(4096)
            assert chunk, f"connection closed after {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = re.match(r"HTTP/1.1 ([0-9]+) ", head.decode())
        length = re.search(r"content-length: ([0-9]+)\r\n", head.decode() + "\r\n")
        assert status and length, head
        while len(body) < int(length.group(1)):
            body += tls.recv(4096)
    return int(status.group(1)), json.loads(body)


def test_known_thing_gets_the_aws_shaped_answer_with_connectivity_and_group_ca(gw, short_tmp) -> None:
    files = enrol(gw.paths, "sensor-1", short_tmp)
    status, body = discover(gw.discovery_port, "sensor-1", files, files.ca)
    assert status == 200, body
    (group,) = body["GGGroups"]
    assert group["GGGroupId"] == "disc-gw"
    (core,) = group["Cores"]
    assert core["thingArn"].endswith(":thing/disc-gw")
    assert group["CAs"] == [gw.paths.ca_cert.read_text()]
    detected = interface_addresses()
    assert [c["HostAddress"] for c in core["Connectivity"]] == detected
    for entry in core["Connectivity"]:
        assert set(entry) == {"Id", "HostAddress", "PortNumber", "Metadata"}
        assert entry["PortNumber"] == gw.tls_port
    # what discovery returns is enough to reach the broker: its CA verifies the broker for each address
    trusting_answer = short_tmp / "from-discovery.pem"
    trusting_answer.write_text(group["CAs"][0])
    as_sdk = DeviceFiles("sensor-1", files.cert, files.key, trusting_answer)
    for entry in core["Connectivity"]:
        peer_certificate(gw.tls_port, as_sdk, host=entry["HostAddress"])


def unrecorded(gw: RunningGateway, thing: str, out: Path) -> DeviceFiles:
    """A certificate from the group CA for `thing` that the device registry holds no record of."""
    ca = group_ca.load_ca(gw.paths)
    issued = group_ca.issue_device_cert(ca, thing, 30)
    assert issued.key_pem is not None
    files = DeviceFiles(thing, out / f"{thing}.cert.pem", out / f"{thing}.key.pem", gw.paths.ca_cert)
    files.cert.write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(issued.key_pem)
    return files


def test_own_thing_that_is_not_a_device_of_the_group_is_404(gw, short_tmp) -> None:
    files = unrecorded(gw, "sensor-2", short_tmp)
    status, body = discover(gw.discovery_port, "sensor-2", files, files.ca)
    assert status == 404
    assert "not a device of this group" in body["errorMessage"]


def test_another_thing_is_403_whether_it_is_enrolled_or_not(gw, short_tmp) -> None:
    files = enrol(gw.paths, "sensor-5", short_tmp)
    enrol(gw.paths, "sensor-6", short_tmp)
    answers = {thing: discover(gw.discovery_port, thing, files, files.ca) for thing in ("sensor-6", "never-enrolled")}
    assert {thing: status for thing, (status, _) in answers.items()} == {"sensor-6": 403, "never-enrolled": 403}
    assert answers["never-enrolled"][1]["errorMessage"] == (
        "this certificate (CN=sensor-5) may not discover thing never-enrolled"
    )


def test_another_devices_thing_is_403(gw, short_tmp) -> None:
    files = enrol(gw.paths, "sensor-3", short_tmp)
    enrol(gw.paths, "sensor-4", short_tmp)
    status, body = discover(gw.discovery_port, "sensor-4", files, files.ca)
    assert status == 403
    assert "CN=sensor-3" in body["errorMessage"]


def test_client_without_a_certificate_is_403(gw) -> None:
    status, body = discover(gw.discovery_port, "sensor-1", None, gw.paths.ca_cert)
    assert status == 403
    assert "client certificate" in body["errorMessage"]


@pytest.mark.parametrize(("kind", "logged"), [("revoked", "certificate revoked"), ("foreign", "unable to get local")])
def test_revoked_or_foreign_certificate_is_refused_and_logged(gw, short_tmp, kind: str, logged: str) -> None:
    if kind == "revoked":
        files = enrol(gw.paths, "sensor-revoked", short_tmp)
        result = gw.cli("device", "revoke", "sensor-revoked")
        assert result.returncode == 0, result.stderr
    else:
        files = foreign_ca_device(gw.paths, "sensor-foreign", short_tmp)
    with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
        discover(gw.discovery_port, files.thing, files, gw.paths.ca_cert)
    wait_until(lambda: f"event=discovery-refused peer=127.0.0.1 reason='{logged}" in core_log(gw), 5, "the log line")


def test_configured_addresses_override_the_detected_ones() -> None:
    config = GatewayConfig.model_validate(
        {
            "gateway": {"thing_name": "gw"},
            "broker": {"tls_port": 8883},
            "discovery": {
                "addresses": ["gw.plant.example:8883", "10.0.0.5:18883"],
                "group_id": "plant-a",
                "core_thing_arn": "arn:aws:iot:eu-west-1:123456789012:thing/gw",
            },
        }
    )
    body = discover_response(config, "PEM", detected=["192.0.2.9"])
    (group,) = body["GGGroups"]
    assert group["GGGroupId"] == "plant-a"
    assert group["Cores"][0]["thingArn"] == "arn:aws:iot:eu-west-1:123456789012:thing/gw"
    assert group["Cores"][0]["Connectivity"] == [
        {"Id": "gw.plant.example:8883", "HostAddress": "gw.plant.example", "PortNumber": 8883, "Metadata": ""},
        {"Id": "10.0.0.5:18883", "HostAddress": "10.0.0.5", "PortNumber": 18883, "Metadata": ""},
    ]
    assert group["CAs"] == ["PEM"]


def test_connections_trickling_a_request_are_cut_at_the_deadline_and_discovery_serves_again(
    gw, short_tmp, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 3
    monkeypatch.setattr(discovery_api, "MAX_CONNECTIONS", cap)
    monkeypatch.setattr(discovery_api._Server, "request_deadline_s", 2.0)
    port = free_port()
    config = load_config(gw.config_dir).gateway
    config = config.model_copy(update={"discovery": config.discovery.model_copy(update={"port": port})})
    server = discovery_api.DiscoveryServer(gw.paths, config, host="127.0.0.1")
    files = enrol(gw.paths, "sensor-slow", short_tmp)

    def exercise() -> tuple[object, float, list[bytes], int]:
        stop = threading.Event()
        context = client_context(files, files.ca)
        trickling = [
            context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
            for _ in range(cap)
        ]
        start_trickling(list(trickling), b"GET /greengrass/discover/thing/sensor-slow HTTP/1.1", stop)
        try:
            time.sleep(0.5)
            try:
                locked_out: object = discover(port, "sensor-slow", files, files.ca)[0]
            except (OSError, AssertionError) as exc:  # refused for want of a slot: closed at once
                locked_out = exc
            started = time.monotonic()
            while True:
                try:
                    status = discover(port, "sensor-slow", files, files.ca)[0]
                    break
                except (OSError, AssertionError):
                    assert time.monotonic() - started < 10, "discovery never served again"
                    time.sleep(0.2)
            waited = time.monotonic() - started
            for connection in trickling:
                connection.settimeout(5)
            return locked_out, waited, [connection.recv(1) for connection in trickling], status
        finally:
            stop.set()
            for connection in trickling:
                connection.close()

    async def run() -> tuple[object, float, list[bytes], int]:
        stop = asyncio.Event()
        serving = asyncio.create_task(server.run(stop))
        try:
            async with asyncio.timeout(10):
                while server.state != "serving":
                    await asyncio.sleep(0.05)
            return await asyncio.to_thread(exercise)
        finally:
            stop.set()
            await serving

    locked_out, waited, read, status = asyncio.run(run())
    assert locked_out != 200, "every slot was held by a trickling client"
    assert waited < 2.0 + 2, "cut at the deadline, not after the per-read timeout (never, for a trickle)"
    assert read == [b""] * cap, "each trickling connection was closed by the gateway"
    assert status == 200
