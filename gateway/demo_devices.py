"""`make demo`'s device act: enrols a demo device with the group CA, connects it to the broker over
mutual TLS, then shows a self-signed impostor being refused.

Demo only: it prints to the terminal and is never imported by a production gateway process.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import paho.mqtt.client as paho
from cryptography.hazmat.primitives import serialization

from gateway.ca import (
    file_owner,
    issue_device_cert,
    key_pem,
    load_ca,
    record_device,
    self_signed,
    write_device_files,
)
from gateway.paths import GatewayPaths

CONNECT_TIMEOUT_S = 5.0


def _try_connect(port: int, thing: str, cert: Path, key: Path, ca: Path) -> str:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=thing, protocol=paho.MQTTv5)
    client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
    done = threading.Event()
    outcome: list[str] = []

    def answered(what: str) -> None:
        outcome.append(what)
        done.set()

    client.on_connect = lambda _c, _u, _f, reason, _p: answered(f"connected ({reason})")
    client.on_disconnect = lambda _c, _u, _f, reason, _p: answered(f"refused, connection closed ({reason})")
    try:
        client.connect("127.0.0.1", port)
        client.loop_start()
        if not done.wait(CONNECT_TIMEOUT_S):
            outcome.append("no answer")
    except (OSError, ssl.SSLError) as exc:
        outcome.append(f"TLS refused: {exc}")
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome[0]


def _self_signed(thing: str, out: Path) -> tuple[Path, Path]:
    cert, key = self_signed(thing, days=1)
    cert_path, key_path = out / f"{thing}.self-signed.cert.pem", out / f"{thing}.self-signed.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


def show_device_tls(paths: GatewayPaths, tls_port: int, thing: str = "demo-sensor") -> None:
    """Issue `thing` a certificate, connect it over TLS, and show an impostor refused."""
    out = paths.state_dir / "demo-devices"
    ca = load_ca(paths)
    issued = issue_device_cert(ca, thing, days=1)
    record_device(paths, issued, ca, file_owner())
    write_device_files(issued, ca, out)
    print(f"demo: issued {thing} a certificate from the group CA ({out}/{thing}.cert.pem)", flush=True)
    cert, key, trust = out / f"{thing}.cert.pem", out / f"{thing}.key.pem", out / "group-ca.pem"
    print(
        f"demo: {thing} connects on port {tls_port} over mutual TLS: {_try_connect(tls_port, thing, cert, key, trust)}"
    )
    fake_cert, fake_key = _self_signed("impostor", out)
    outcome = _try_connect(tls_port, "impostor", fake_cert, fake_key, trust)
    print(f"demo: a self-signed 'impostor' tries the same: {outcome}", flush=True)
