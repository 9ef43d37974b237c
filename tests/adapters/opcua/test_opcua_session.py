"""The OPC-UA session against the simulator (a real asyncua server in its own process): subscribed and
polled values with quality and both timestamps, the server-side deadband, writes in the node's own
data type, method calls, a server restart, an endpoint that is not there yet, and every security policy
and mode asyncua implements (Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss; Sign and
SignAndEncrypt)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from asyncua import Client, ua

from adapters.base.commands import WriteRefused
from adapters.base.tag import Quality
from adapters.opcua.certificate import ensure_client_certificate
from adapters.opcua.session import CallRefused, State
from adapters.opcua.trust import TrustStore
from tests.adapters.opcua.conftest import Harness, adapter_config


async def read_server(endpoint: str, node: str) -> ua.Variant:
    async with Client(endpoint) as client:
        value = (await client.get_node(node).read_data_value()).Value
    assert value is not None, f"{node} has no value"
    return value


async def write_server(endpoint: str, node: str, variant: ua.Variant) -> None:
    async with Client(endpoint) as client:
        await client.get_node(node).write_value(variant)


def test_subscribed_and_polled_values_arrive_with_quality_and_timestamps(opcua_simulator) -> None:
    sim = opcua_simulator("--period", "0.1")
    config = adapter_config(
        sim.endpoint,
        [
            {"name": "temperature", "node_id": "ns=2;s=Line2.Temperature", "sampling_ms": 50},
            {"name": "counter", "browse_path": "2:Line2/2:Counter", "mode": "poll", "sampling_ms": 100},
            {"name": "ghost", "node_id": "ns=2;s=Line2.NoSuchNode"},
            {"name": "lost", "browse_path": "2:Line2/2:Nowhere"},
        ],
    )

    async def scenario() -> None:
        async with Harness(config) as h:
            await h.wait_for(lambda: len(h.readings["temperature"]) >= 3, what="three temperature changes")
            await h.wait_for(lambda: len({r.value for r in h.readings["counter"]}) >= 3, what="polled counter")
            temperature = h.latest("temperature")
            assert temperature is not None and temperature.quality == Quality.GOOD
            assert 16.9 <= temperature.value <= 25.1
            assert temperature.times is not None and temperature.times.source_ms and temperature.times.server_ms
            assert abs(temperature.times.source_ms - temperature.ts_ms) < 5000
            body = temperature.payload()
            assert b'"source_ts":' in body and b'"server_ts":' in body and b'"quality":"good"' in body
            assert h.latest("counter").quality == Quality.GOOD  # type: ignore[union-attr]
            ghost = h.latest("ghost")
            assert ghost is not None and ghost.quality == Quality.BAD and "BadNodeIdUnknown" in (ghost.reason or "")
            lost = h.latest("lost")
            assert lost is not None and "not found" in (lost.reason or "")
            status = h.session.status()
            assert status["server"]["session"] == "running" and set(status["nodes"]["unavailable"]) == {
                "line2/ghost",
                "line2/lost",
            }

    asyncio.run(scenario())


def test_absolute_deadband_holds_back_small_changes(opcua_simulator) -> None:
    sim = opcua_simulator("--period", "60")
    config = adapter_config(
        sim.endpoint, [{"name": "speed", "node_id": "ns=2;s=Line2.Speed", "sampling_ms": 20, "deadband": 5.0}]
    )

    async def scenario() -> None:
        async with Harness(config) as h:
            await h.wait_for(lambda: h.readings["speed"], what="the initial value")
            for value in (1.0, 3.0, 4.9, 10.0, 11.0):
                await write_server(sim.endpoint, "ns=2;s=Line2.Speed", ua.Variant(value, ua.VariantType.Double))
                await asyncio.sleep(0.1)
            await h.wait_for(lambda: h.latest("speed").value == 10.0, what="the change past the deadband")  # type: ignore[union-attr]
            await asyncio.sleep(0.3)
            assert [r.value for r in h.readings["speed"]] == [0.0, 10.0]

    asyncio.run(scenario())


def test_writes_use_the_node_data_type_and_refuse_mismatches(opcua_simulator) -> None:
    sim = opcua_simulator("--period", "60")
    names = ("Setpoint", "Speed", "Mode", "Running", "Limits")
    config = adapter_config(
        sim.endpoint,
        [{"name": n.lower(), "node_id": f"ns=2;s=Line2.{n}", "writable": True} for n in names]
        + [{"name": "temperature", "node_id": "ns=2;s=Line2.Temperature", "writable": True}],
    )

    async def scenario() -> None:
        async with Harness(config) as h:
            await h.wait_for(lambda: h.session.state == State.RUNNING, what="the session")
            p = h.points
            assert await h.session.submit_write(p["setpoint"], 1500) == 1500
            assert await h.session.submit_write(p["speed"], 42) == 42.0
            assert await h.session.submit_write(p["mode"], "manual") == "manual"
            assert await h.session.submit_write(p["running"], False) is False
            assert await h.session.submit_write(p["limits"], [5, 95]) == [5, 95]
            setpoint = await read_server(sim.endpoint, "ns=2;s=Line2.Setpoint")
            assert setpoint.Value == 1500 and setpoint.VariantType == ua.VariantType.Int16
            speed = await read_server(sim.endpoint, "ns=2;s=Line2.Speed")
            assert speed.Value == 42.0 and speed.VariantType == ua.VariantType.Double
            assert (await read_server(sim.endpoint, "ns=2;s=Line2.Limits")).Value == [5, 95]
            await h.wait_for(lambda: h.latest("setpoint").value == 1500, what="the notification of the write")  # type: ignore[union-attr]

            with pytest.raises(WriteRefused, match=r"Int16.*70000 is out of the Int16 range"):
                h.session.submit_write(p["setpoint"], 70000)
            with pytest.raises(WriteRefused, match="needs an integer"):
                h.session.submit_write(p["setpoint"], "fast")
            with pytest.raises(WriteRefused, match="needs true or false"):
                h.session.submit_write(p["running"], 1)
            with pytest.raises(Exception, match=r"BadNotWritable|BadUserAccessDenied"):
                await h.session.submit_write(p["temperature"], 30.0)
            assert h.session.health.writes_ok == 5 and h.session.health.writes_failed == 1

    asyncio.run(scenario())


def test_method_call_converts_arguments_and_returns_outputs(opcua_simulator) -> None:
    sim = opcua_simulator("--period", "60")
    config = adapter_config(
        sim.endpoint,
        [{"name": "counter", "node_id": "ns=2;s=Line2.Counter"}],
        methods=[{"name": "set_counter", "object_id": "ns=2;s=Line2", "method_id": "ns=2;s=Line2.SetCounter"}],
    )

    async def scenario() -> None:
        async with Harness(config) as h:
            await h.wait_for(lambda: h.session.state == State.RUNNING, what="the session")
            method = h.methods["set_counter"]
            [previous] = await h.session.call(method, [500])
            assert isinstance(previous, int)
            assert (await read_server(sim.endpoint, "ns=2;s=Line2.Counter")).Value == 500
            await h.wait_for(lambda: h.latest("counter").value == 500, what="the counter notification")  # type: ignore[union-attr]
            with pytest.raises(CallRefused, match="takes 1 input argument"):
                await h.session.call(method, [])
            with pytest.raises(CallRefused, match="UInt32"):
                await h.session.call(method, [-1])

    asyncio.run(scenario())


@pytest.mark.slow
def test_server_restart_reports_bad_then_reconnects_and_resubscribes(opcua_simulator) -> None:
    sim = opcua_simulator("--period", "0.1")
    config = adapter_config(
        sim.endpoint,
        [
            {"name": "counter", "node_id": "ns=2;s=Line2.Counter", "sampling_ms": 50},
            {"name": "polled", "node_id": "ns=2;s=Line2.Counter", "mode": "poll", "sampling_ms": 100},
        ],
        watchdog_ms=200,
    )

    async def scenario() -> None:
        async with Harness(config) as h:
            await h.wait_for(lambda: len(h.readings["counter"]) >= 2, what="values before the restart")
            for round_ in range(2):
                await asyncio.to_thread(sim.stop)
                await h.wait_for(lambda: h.latest("counter").quality == Quality.BAD, what="bad quality")  # type: ignore[union-attr]
                assert h.session.state != State.RUNNING
                assert h.latest("polled").quality == Quality.BAD  # type: ignore[union-attr]
                await asyncio.to_thread(sim.start)
                mark = len(h.readings["counter"])

                def good_since(m: int = mark) -> bool:
                    return sum(r.quality == Quality.GOOD for r in h.readings["counter"][m:]) >= 2

                await h.wait_for(
                    good_since,
                    timeout_s=15,
                    what=f"values after restart {round_ + 1}",
                )
                await h.wait_for(lambda: h.latest("polled").quality == Quality.GOOD, what="polled values again")  # type: ignore[union-attr]
            assert h.session.sessions == 3 and h.session.state == State.RUNNING

    asyncio.run(scenario())


def test_missing_endpoint_is_reported_and_retried_until_it_appears(opcua_simulator) -> None:
    sim = opcua_simulator("--period", "0.1", start=False)
    config = adapter_config(sim.endpoint, [{"name": "counter", "node_id": "ns=2;s=Line2.Counter"}])

    async def scenario() -> None:
        async with Harness(config) as h:
            await h.wait_for(lambda: h.session.health.state == "down", what="the endpoint reported down")
            assert "connection refused" in (h.session.health.reason or "")
            bad = h.latest("counter")
            assert bad is not None and bad.quality == Quality.BAD and "connection refused" in (bad.reason or "")
            with pytest.raises(WriteRefused, match="not connected"):
                h.session.submit_write(h.points["counter"], 1)
            await asyncio.to_thread(sim.start)
            await h.wait_for(lambda: h.latest("counter").quality == Quality.GOOD, timeout_s=10, what="recovery")  # type: ignore[union-attr]
            assert h.session.health.state == "up"

    asyncio.run(scenario())


def server_supports(policy: str, mode: str) -> bool:
    """Does the installed asyncua's server offer this policy and mode (its SecurityPolicyType)?"""
    return hasattr(ua.SecurityPolicyType, f"{policy.replace('_', '')}_{mode}")


SECURED = [
    pytest.param(
        policy,
        mode,
        id=f"{policy}-{mode}",
        marks=pytest.mark.skipif(
            not server_supports(policy, mode), reason=f"asyncua's server has no {policy} {mode} endpoint"
        ),
    )
    for policy in ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
    for mode in ("Sign", "SignAndEncrypt")
]


@pytest.mark.parametrize(("policy", "mode"), SECURED)
def test_every_security_policy_and_mode_with_a_generated_client_certificate(
    opcua_simulator, tmp_path: Path, policy: str, mode: str
) -> None:
    # the secure-only simulator offers one endpoint per policy and mode: connecting proves that pair is used
    sim = opcua_simulator("--period", "0.1", "--cert-dir", str(tmp_path / "server"), "--secure-only")
    config = adapter_config(
        sim.endpoint,
        [{"name": "temperature", "node_id": "ns=2;s=Line2.Temperature"}],
        security_policy=policy,
        security_mode=mode,
        trust="first-use",
    )
    cert_path, key_path = tmp_path / "client" / "client-cert.der", tmp_path / "client" / "client-key.pem"
    certificate = ensure_client_certificate(cert_path, key_path, "urn:millgate:line2", "millgate line2", True)
    assert certificate.created and len(certificate.thumbprint) == 59 and (key_path.stat().st_mode & 0o777) == 0o600
    again = ensure_client_certificate(cert_path, key_path, "urn:millgate:line2", "millgate line2", True)
    assert not again.created and again.thumbprint == certificate.thumbprint

    async def scenario() -> None:
        async with Harness(config, certificate, TrustStore(tmp_path / "pki")) as h:
            await h.wait_for(lambda: len(h.readings["temperature"]) >= 2, what="values over the secured channel")
            assert h.latest("temperature").quality == Quality.GOOD  # type: ignore[union-attr]
        plain = Harness(adapter_config(sim.endpoint, [{"name": "temperature", "node_id": "ns=2;s=Line2.Temperature"}]))
        async with plain:
            await plain.wait_for(lambda: plain.session.health.state == "down", what="the unsecured attempt refused")

    asyncio.run(scenario())


def test_a_nan_or_infinity_from_the_server_is_a_bad_reading_with_the_reason(opcua_simulator) -> None:
    """It used to be published as {"value": null, "quality": "good"}: a failed measurement passed as fine."""
    sim = opcua_simulator("--period", "60")
    config = adapter_config(
        sim.endpoint,
        [
            {"name": "speed", "node_id": "ns=2;s=Line2.Speed", "sampling_ms": 20},
            {"name": "speed_polled", "node_id": "ns=2;s=Line2.Speed", "mode": "poll", "sampling_ms": 50},
        ],
    )

    async def scenario() -> None:
        async with Harness(config) as h:
            for value, reason in (
                (float("nan"), "not a finite number: the server sent Double NaN"),
                (1.5, None),
                (float("-inf"), "not a finite number: the server sent Double -Inf"),
            ):
                await write_server(sim.endpoint, "ns=2;s=Line2.Speed", ua.Variant(value, ua.VariantType.Double))
                for name in ("speed", "speed_polled"):

                    def arrived(n: str = name, v: float = value, why: str | None = reason) -> bool:
                        r = h.latest(n)
                        return r is not None and (r.reason == why if why else r.value == v)

                    await h.wait_for(arrived, what=f"{name} after writing {value}")
                    reading = h.latest(name)
                    assert reading is not None and reading.times is not None and reading.times.source_ms
                    if reason is None:
                        assert reading.quality == Quality.GOOD
                    else:
                        assert reading.quality == Quality.BAD and reading.value is None

    asyncio.run(scenario())
