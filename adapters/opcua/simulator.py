"""A simulated OPC-UA server for the demo, the tests and the benchmark (`python -m adapters.opcua.simulator
--port 14840`): an asyncua server whose Line2 object has changing variables, writable ones of several
types and a method, an alarm event (Line2AlarmType, emitted by Line2 every --event-period seconds and
by its RaiseAlarm method), optionally with secured endpoints (Basic256Sha256, Aes128_Sha256_RsaOaep,
Aes256_Sha256_RsaPss; Sign and SignAndEncrypt), N extra variables for load, and with --control, test
hooks that fail clients from the server side (Simulator.DropSubscriptions, CloseSubscribedSessions).

It is a stand-in for plant equipment; the adapter never imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import math
import signal
from pathlib import Path
from typing import Any, cast

from asyncua import Server, ua
from asyncua.common.methods import uamethod
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

NAMESPACE = "urn:millgate:simulator"
SERVER_URI = "urn:millgate:simulator:server"
log = logging.getLogger("adapters.opcua.simulator")

# name: (variant type, initial value, writable); node ids are ns=2;s=Line2.<name>
VARIABLES: dict[str, tuple[ua.VariantType, Any, bool]] = {
    "Temperature": (ua.VariantType.Double, 21.0, False),
    "Counter": (ua.VariantType.UInt32, 0, False),
    "Pressure": (ua.VariantType.Float, 1.0, False),
    "Setpoint": (ua.VariantType.Int16, 100, True),
    "Speed": (ua.VariantType.Double, 0.0, True),
    "Mode": (ua.VariantType.String, "auto", True),
    "Running": (ua.VariantType.Boolean, True, True),
    "Limits": (ua.VariantType.Int32, [0, 100], True),
}


# with --cert-dir: every policy asyncua's server and client both implement, in both modes
SECURED_POLICIES = [
    getattr(ua.SecurityPolicyType, f"{policy}_{mode}")
    for policy in ("Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")
    for mode in ("Sign", "SignAndEncrypt")
    if hasattr(ua.SecurityPolicyType, f"{policy}_{mode}")
]
ALARM_TYPE = "Line2AlarmType"  # ns=2;s=Line2AlarmType, a BaseEventType with a Temperature property
ALARM_SEVERITIES = (100, 500, 900)  # cycled by the periodic alarm


def node_id(name: str, ns: int = 2) -> str:
    return f"ns={ns};s=Line2.{name}"


class Simulator:
    def __init__(
        self, port: int, period_s: float = 0.5, items: int = 0, host: str = "127.0.0.1", event_period_s: float = 0.0
    ):
        self.port = port
        self.period_s = period_s
        self.event_period_s = event_period_s
        self.alarms = 0
        self.alarm: Any = None  # the EventGenerator of Line2AlarmType, emitted by Line2
        self.items = items
        self.host = host
        self.server = Server()
        self.ns = 2
        self.tick = 0
        self.variables: dict[str, Any] = {}
        self.bench: list[ua.NodeId] = []

    async def setup(self, cert_dir: Path | None = None, secure_only: bool = False, control: bool = False) -> None:
        server = self.server
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}/")
        server.set_server_name("millgate OPC-UA simulator")
        policies = [ua.SecurityPolicyType.NoSecurity] if not secure_only else []
        if cert_dir is not None:
            await server.set_application_uri(SERVER_URI)
            cert, key = cert_dir / "server-cert.der", cert_dir / "server-key.pem"
            await setup_self_signed_certificate(
                key,
                cert,
                SERVER_URI,
                self.host,
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
                {"commonName": "millgate simulator"},
            )
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            policies += SECURED_POLICIES
        server.set_security_policy(policies)
        self.ns = await server.register_namespace(NAMESPACE)
        line = await server.nodes.objects.add_object(self._id("Line2"), ua.QualifiedName("Line2", self.ns))
        for name, (vtype, initial, writable) in VARIABLES.items():
            variant = ua.Variant(initial, vtype, is_array=isinstance(initial, list))
            var = await line.add_variable(self._id(f"Line2.{name}"), ua.QualifiedName(name, self.ns), variant)
            if isinstance(initial, list):
                await var.write_value_rank(1)
            if writable:
                await var.set_writable()
            self.variables[name] = var
        await line.add_method(
            self._id("Line2.SetCounter"),
            ua.QualifiedName("SetCounter", self.ns),
            self._set_counter,
            [ua.VariantType.UInt32],
            [ua.VariantType.UInt32],
        )
        alarm_type = await server.get_node(ua.ObjectIds.BaseEventType).add_object_type(
            self._id(ALARM_TYPE), ua.QualifiedName(ALARM_TYPE, self.ns)
        )
        await alarm_type.add_property(
            self._id(f"{ALARM_TYPE}.Temperature"),
            ua.QualifiedName("Temperature", self.ns),
            ua.Variant(0.0, ua.VariantType.Double),
        )
        self.alarm = await server.get_event_generator(alarm_type, line.nodeid)
        await line.add_method(
            self._id("Line2.RaiseAlarm"),
            ua.QualifiedName("RaiseAlarm", self.ns),
            self._raise_alarm,
            [ua.VariantType.String, ua.VariantType.UInt16],
            [],
        )
        if control:
            await self._add_control()
        if self.items:
            bench = await server.nodes.objects.add_object(self._id("Bench"), ua.QualifiedName("Bench", self.ns))
            for index in range(self.items):
                var = await bench.add_variable(self._id(f"Bench.{index}"), f"{self.ns}:B{index}", 0.0)
                self.bench.append(var.nodeid)

    async def _add_control(self) -> None:
        """Test hooks on a Simulator object (ns=2;s=Simulator), to fail a client's session or
        subscriptions from the server side while its connection stays up."""
        control = await self.server.nodes.objects.add_object(
            self._id("Simulator"), ua.QualifiedName("Simulator", self.ns)
        )
        await control.add_method(
            self._id("Simulator.DropSubscriptions"),
            ua.QualifiedName("DropSubscriptions", self.ns),
            self._drop_subscriptions,
            [],
            [ua.VariantType.UInt32],
        )
        await control.add_method(
            self._id("Simulator.CloseSubscribedSessions"),
            ua.QualifiedName("CloseSubscribedSessions", self.ns),
            self._close_subscribed_sessions,
            [],
            [ua.VariantType.UInt32],
        )

    @uamethod
    async def _drop_subscriptions(self, parent: ua.NodeId) -> int:
        """Delete every subscription server-side, as a server that restarts its subscription engine or
        lets one expire does; the sessions stay. Returns how many."""
        service = self.server.iserver.subscription_service
        ids = list(service.subscriptions)
        await service.delete_subscriptions(ids)
        return len(ids)

    @uamethod
    async def _close_subscribed_sessions(self, parent: ua.NodeId) -> int:
        """Close, server-side, every session that owns a subscription (not the caller's, which has
        none); their connections stay open and every later request gets a session error."""
        owners = {sub.session_id for sub in self.server.iserver.subscription_service.subscriptions.values()}
        # asyncua has no public list of sessions; the simulator is a test stand-in, so it reaches in
        sessions = [s for s in self.server.iserver._external_sessions.values() if s.session_id in owners]
        for session in sessions:
            await session.close_session(delete_subs=True)
        return len(sessions)

    def _id(self, name: str) -> ua.NodeId:
        return ua.NodeId(ua.String(name), ua.Int16(self.ns))

    @uamethod
    async def _set_counter(self, parent: ua.NodeId, value: int) -> int:
        previous = await self.variables["Counter"].read_value()
        await self.variables["Counter"].write_value(ua.Variant(value, ua.VariantType.UInt32))
        return int(previous)

    @uamethod
    async def _raise_alarm(self, parent: ua.NodeId, message: str, severity: int) -> None:
        await self.raise_alarm(message, severity)

    async def raise_alarm(self, message: str, severity: int) -> None:
        """Emit one Line2AlarmType event from Line2 with the current temperature."""
        self.alarms += 1
        self.alarm.event.Severity = severity
        self.alarm.event.Temperature = float(await self.variables["Temperature"].read_value())
        await self.alarm.trigger(message=message)

    async def step(self) -> None:
        """Advance the simulated line one tick: temperature and pressure drift, the counter counts."""
        self.tick += 1
        now = cast(ua.DateTime, dt.datetime.now(dt.UTC))
        temperature = 21.0 + 4.0 * math.sin(self.tick / 5)
        counter = await self.variables["Counter"].read_value()
        values = {
            "Temperature": ua.Variant(round(temperature, 3), ua.VariantType.Double),
            "Counter": ua.Variant((counter + 1) % 2**32, ua.VariantType.UInt32),
            "Pressure": ua.Variant(1.0 + (self.tick % 10) / 100, ua.VariantType.Float),
        }
        for name, variant in values.items():
            await self.server.write_attribute_value(
                self.variables[name].nodeid, ua.DataValue(variant, SourceTimestamp=now, ServerTimestamp=now)
            )
        for index, nodeid in enumerate(self.bench):
            await self.server.write_attribute_value(
                nodeid, ua.DataValue(ua.Variant(float(self.tick + index), ua.VariantType.Double), SourceTimestamp=now)
            )

    async def run(self, stop: asyncio.Event) -> None:
        async with self.server:
            log.info("event=serving endpoint=opc.tcp://%s:%d/ namespace=%s", self.host, self.port, NAMESPACE)
            loop = asyncio.get_running_loop()
            next_alarm = loop.time() + self.event_period_s
            while not stop.is_set():
                await self.step()
                if self.event_period_s and loop.time() >= next_alarm:
                    next_alarm += self.event_period_s
                    severity = ALARM_SEVERITIES[self.alarms % len(ALARM_SEVERITIES)]
                    await self.raise_alarm(f"temperature alarm {self.alarms + 1}", severity)
                try:
                    async with asyncio.timeout(self.period_s):
                        await stop.wait()
                except TimeoutError:
                    pass


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m adapters.opcua.simulator", description=__doc__)
    parser.add_argument("--port", type=int, default=14840)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--period", type=float, default=0.5, help="seconds between value changes")
    parser.add_argument(
        "--event-period", type=float, default=5.0, help="seconds between Line2AlarmType events (0: only RaiseAlarm)"
    )
    parser.add_argument("--items", type=int, default=0, help="extra Double variables Bench.0..N-1 (load tests)")
    parser.add_argument(
        "--cert-dir", type=Path, default=None, help="serve the secured policies too, with a cert made here"
    )
    parser.add_argument("--secure-only", action="store_true", help="with --cert-dir: no unsecured endpoint")
    parser.add_argument(
        "--control", action="store_true", help="test hooks: Simulator.DropSubscriptions, CloseSubscribedSessions"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    sim = Simulator(args.port, args.period, args.items, args.host, args.event_period)
    if args.cert_dir is not None:
        args.cert_dir.mkdir(parents=True, exist_ok=True)
    await sim.setup(args.cert_dir, args.secure_only, args.control)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await sim.run(stop)


if __name__ == "__main__":
    asyncio.run(main())
