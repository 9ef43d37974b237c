"""Server certificate trust against the simulator on its secured endpoints (a real asyncua server in
its own process): first contact with an unknown server is refused and its certificate recorded in the
adapter's rejected/ folder until `millgate opcua trust accept` moves it to trusted/; `trust = "first-use"`
trusts the first server seen and still refuses a different certificate afterwards (a replaced or
impostor server)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from adapters.base.tag import Quality
from adapters.opcua.certificate import ensure_client_certificate
from adapters.opcua.session import State
from adapters.opcua.trust import TrustStore, pki_dir
from tests.adapters.opcua.conftest import Harness, adapter_config
from tests.adapters.opcua.test_opcua_cli import config_dir
from tests.fixtures.gateway import run_cli

NODES = [{"name": "temperature", "node_id": "ns=2;s=Line2.Temperature"}]


def server_thumbprint(cert_dir: Path) -> str:
    cert = x509.load_der_x509_certificate((cert_dir / "server-cert.der").read_bytes())
    return cert.fingerprint(hashes.SHA1()).hex(":").upper()


def client_certificate(tmp_path: Path):  # type: ignore[no-untyped-def]
    base = tmp_path / "client"
    return ensure_client_certificate(
        base / "client-cert.der", base / "client-key.pem", "urn:millgate:line2", "millgate line2", True
    )


def rejected_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event=server-certificate-rejected" in r.getMessage()]


def test_unknown_server_is_refused_and_recorded_until_the_operator_accepts_it(
    opcua_simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="adapters.opcua.session")
    server_dir = tmp_path / "server"
    sim = opcua_simulator("--period", "0.1", "--cert-dir", str(server_dir), "--secure-only")
    config = adapter_config(sim.endpoint, NODES, security_policy="Basic256Sha256", security_mode="SignAndEncrypt")
    assert config.trust == "explicit"  # the default refuses an unknown server
    config_path, state = config_dir(tmp_path), tmp_path / "state"
    store = TrustStore(pki_dir(state, "line2"))
    thumbprint = server_thumbprint(server_dir)

    async def scenario() -> None:
        async with Harness(config, client_certificate(tmp_path), store) as h:
            await h.wait_for(lambda: "is not trusted" in (h.session.health.reason or ""), what="the refusal")
            reason = h.session.health.reason or ""
            assert thumbprint in reason and f"millgate opcua trust accept line2 {thumbprint}" in reason
            bad = h.latest("temperature")
            assert bad is not None and bad.quality == Quality.BAD and thumbprint in (bad.reason or "")
            # it keeps retrying (with backoff) but reports the certificate once
            attempts = h.session.generation
            await h.wait_for(lambda: h.session.generation >= attempts + 4, what="two more attempts")
            assert h.session.state == State.LOST and not store.trusted()
            [saved] = store.rejected()
            assert saved.thumbprint == thumbprint and saved.path.name == thumbprint.replace(":", "") + ".der"
            assert saved.path.read_bytes() == (server_dir / "server-cert.der").read_bytes()
            [logged] = rejected_logs(caplog)
            assert sim.endpoint in logged and "CN=millgate simulator" in logged and thumbprint in logged
            assert f"millgate opcua trust accept line2 {thumbprint}" in logged

            listed = await asyncio.to_thread(run_cli, "opcua", "trust", "list", config=config_path, state=state)
            assert listed.returncode == 0, listed.stderr
            [row] = [line for line in listed.stdout.splitlines() if line.startswith("line2")]
            assert row.split()[:3] == ["line2", "rejected", thumbprint] and "CN=millgate simulator" in row

            accepted = await asyncio.to_thread(
                run_cli, "opcua", "trust", "accept", "line2", thumbprint.lower(), config=config_path, state=state
            )
            assert accepted.returncode == 0, accepted.stderr
            assert accepted.stdout.startswith(f"accepted  line2  {thumbprint}")
            await h.wait_for(
                lambda: h.latest("temperature").quality == Quality.GOOD,  # type: ignore[union-attr]
                what="values once the server is trusted",
            )
            assert [c.thumbprint for c in store.trusted()] == [thumbprint] and not store.rejected()

    asyncio.run(scenario())


@pytest.mark.slow
def test_first_use_trusts_the_first_server_and_refuses_a_changed_certificate(
    opcua_simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="adapters.opcua.session")
    first_dir, second_dir = tmp_path / "server-a", tmp_path / "server-b"
    sim = opcua_simulator("--period", "0.1", "--cert-dir", str(first_dir), "--secure-only")
    config = adapter_config(
        sim.endpoint, NODES, security_policy="Basic256Sha256", security_mode="Sign", trust="first-use"
    )
    store = TrustStore(pki_dir(tmp_path / "state", "line2"))
    first = server_thumbprint(first_dir)

    async def scenario() -> None:
        async with Harness(config, client_certificate(tmp_path), store) as h:
            await h.wait_for(
                lambda: h.latest("temperature") and h.latest("temperature").quality == Quality.GOOD,  # type: ignore[union-attr]
                what="values from the first server seen",
            )
            assert [c.thumbprint for c in store.trusted()] == [first] and not store.rejected()

            # the same address now answers with another certificate: refused, not re-learnt
            await asyncio.to_thread(sim.stop)
            replaced = opcua_simulator("--period", "0.1", "--cert-dir", str(second_dir), "--secure-only", port=sim.port)
            second = server_thumbprint(second_dir)
            assert second != first
            await h.wait_for(lambda: "is not trusted" in (h.session.health.reason or ""), timeout_s=15, what="refusal")
            assert second in (h.session.health.reason or "") and h.latest("temperature").quality == Quality.BAD  # type: ignore[union-attr]
            assert [c.thumbprint for c in store.trusted()] == [first]
            assert [c.thumbprint for c in store.rejected()] == [second]
            assert len(rejected_logs(caplog)) == 1
            replaced.stop()

    asyncio.run(scenario())
