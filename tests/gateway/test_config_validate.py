"""`millgate config validate` on broken config directories: each problem is one stderr line
`FILE: key.path: what is wrong`, and nothing is valid until every line is gone.

The expectations come from ../shared/DESIGN.md, "Configuration" (file layout, key names, "an error names
the file, the key path and what is wrong") and "Functions" (run_as never root, refused volume roots).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.ca import key_pem, self_signed
from gateway.cli import main
from gateway.cli_support import EXIT_INVALID, EXIT_OK, load_to_run, paths_for
from gateway.config_loader import ConfigInvalid, load_config
from gateway.demo_cloud import make_cloud_pki

REPO = Path(__file__).resolve().parents[2]
MILLGATE = Path(sys.executable).parent / "millgate"

GATEWAY = """
[gateway]
thing_name = "plant-a-gw1"
"""

FUNCTION = """
[[functions]]
name = "anomaly"
code = "functions/anomaly"
handler = "detector.function_handler"
run_as = "1001:1001"
"""

MODBUS = """
name = "line1"
protocol = "modbus"

[[devices]]
name = "press-01"
transport = "tcp"
host = "192.168.10.20"
port = 502

[[devices.tags]]
name = "temperature"
table = "holding"
address = 100
type = "float32"
"""

RTU = """
name = "{name}"
protocol = "modbus"

[[devices]]
name = "drive"
transport = "rtu"
port = "/dev/ttyMILLGATE0"
unit = {unit}

[[devices.tags]]
name = "speed"
table = "holding"
address = 0
type = "uint16"
"""

OPCUA = """
name = "line2"
protocol = "opcua"
endpoint = "opc.tcp://10.0.3.5:4840/"

[[nodes]]
name = "temperature"
node_id = "ns=2;s=Line2.Temperature"
"""


THING_CERT, THING_KEY = self_signed("plant-a-gw1", 30)
OTHER_CERT, OTHER_KEY = self_signed("someone-else", 30)
CA_PEM = OTHER_CERT.public_bytes(serialization.Encoding.PEM)
CERT_PEM = THING_CERT.public_bytes(serialization.Encoding.PEM)
CERT_DER = THING_CERT.public_bytes(serialization.Encoding.DER)
KEY_PEM = key_pem(THING_KEY)
KEY_DER = THING_KEY.private_bytes(
    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
ENCRYPTED_KEY_PEM = THING_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"secret")
)
CERTS = {"certs/ca.pem": CA_PEM, "certs/thing.pem.crt": CERT_PEM, "certs/thing.pem.key": KEY_PEM}

CLOUD = """
[cloud]
endpoint = "abc-ats.iot.eu-west-1.amazonaws.com"
ca_file = "certs/ca.pem"
cert_file = "certs/thing.pem.crt"
key_file = "certs/thing.pem.key"
"""

REGISTER_MAP = MODBUS.replace("[[devices.tags]]", 'tags_csv = "map.csv"\n\n[[devices.tags]]')


@dataclass(frozen=True)
class Broken:
    """A config directory with one problem, and the line validate must print for it."""

    gateway: str | None = GATEWAY
    adapters: dict[str, str] = field(default_factory=dict)
    code_dirs: tuple[str, ...] = ("functions/anomaly",)
    # more files by path in the config dir, written after the rest; a name with "key" in it gets mode 600
    files: dict[str, str | bytes] = field(default_factory=dict)
    file: str = "gateway.toml"  # relative to the config dir
    path: str = ""
    message: str = ""  # a part of what is wrong


def write_config(root: Path, case: Broken) -> Path:
    config = root / "etc"
    (config / "adapters").mkdir(parents=True)
    if case.gateway is not None:
        (config / "gateway.toml").write_text(case.gateway)
    for name, text in case.adapters.items():
        (config / "adapters" / f"{name}.toml").write_text(text)
    for relative in case.code_dirs:
        (config / relative).mkdir(parents=True)
        (config / relative / "detector.py").write_text("def function_handler(event, context):\n    return event\n")
    for relative, content in case.files.items():
        path = config / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        if "key" in path.name:
            path.chmod(0o600)
    return config


def validate(config: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run the verb in-process; return its stderr lines, asserting it refused the config."""
    with pytest.raises(SystemExit) as exited:
        main(["config", "validate", "--config", str(config)])
    assert exited.value.code == EXIT_INVALID
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.splitlines()


CASES = {
    "unknown-top-level-key": Broken(gateway="colour = 'red'\n" + GATEWAY, path="colour", message="unknown key"),
    "unknown-nested-key": Broken(
        gateway=GATEWAY + "\n[spool]\nmax_bytes = '1GB'\nretention_days = 3\n",
        path="spool.retention_days",
        message="unknown key",
    ),
    "unknown-key-in-adapter-tag": Broken(
        adapters={"line1": MODBUS + "unit_price = 3\n"},
        file="adapters/line1.toml",
        path="devices[0].tags[0].unit_price",
        message="unknown key",
    ),
    "string-for-int": Broken(
        gateway=GATEWAY + "\n[broker]\ntls_port = '8883'\n",
        path="broker.tls_port",
        message="valid integer (got '8883')",
    ),
    "int-for-string": Broken(
        gateway="[gateway]\nthing_name = 42\n", path="gateway.thing_name", message="valid string (got 42)"
    ),
    "missing-thing-name": Broken(
        gateway="[gateway]\nstate_dir = '/var/lib/millgate'\n",
        path="gateway.thing_name",
        message="missing required key",
    ),
    "missing-gateway-table": Broken(gateway="[broker]\ntls_port = 8883\n", path="gateway", message="missing"),
    "missing-handler": Broken(
        gateway=GATEWAY + FUNCTION.replace('handler = "detector.function_handler"\n', ""),
        path="functions[0].handler",
        message="missing required key",
    ),
    "duplicate-function-name": Broken(
        gateway=GATEWAY + FUNCTION + FUNCTION,
        path="functions[1].name",
        message="duplicate name 'anomaly' (also functions[0])",
    ),
    "duplicate-resource-name": Broken(
        gateway=GATEWAY + "[[resources]]\nname = 'tty'\nkind = 'device'\npath = '/dev/ttyUSB0'\n" * 2,
        path="resources[1].name",
        message="duplicate name 'tty' (also resources[0])",
    ),
    "duplicate-adapter-name-across-files": Broken(
        adapters={"a-line1": MODBUS, "b-line1": MODBUS},
        file="adapters/b-line1.toml",
        path="name",
        message="adapter name 'line1' is also used by",
    ),
    "duplicate-tag-name": Broken(
        adapters={"line1": MODBUS + "\n[[devices.tags]]\nname = 'temperature'\ntable = 'coil'\naddress = 3\n"},
        file="adapters/line1.toml",
        path="devices[0].tags[1].name",
        message="duplicate tag name 'temperature' (also devices[0].tags[0])",
    ),
    "duplicate-opcua-node-name": Broken(
        adapters={"line2": OPCUA + "\n[[nodes]]\nname = 'temperature'\nnode_id = 'ns=2;i=7'\n"},
        file="adapters/line2.toml",
        path="nodes[1].name",
        message="duplicate node name 'temperature'",
    ),
    "subscription-unknown-function": Broken(
        gateway=GATEWAY + FUNCTION + "[[subscriptions]]\nsource = 'cloud'\ntarget = 'function:anomalie'\ntopic = 'a'\n",
        path="subscriptions[0].target",
        message="unknown function 'anomalie' (known: anomaly)",
    ),
    "subscription-unknown-adapter": Broken(
        gateway=GATEWAY + "[[subscriptions]]\nsource = 'adapter:line9'\ntarget = 'cloud'\ntopic = 'line9/#'\n",
        adapters={"line1": MODBUS},
        path="subscriptions[0].source",
        message="unknown adapter 'line9' (known: line1)",
    ),
    "filter-hash-not-last": Broken(
        gateway=GATEWAY + "[[subscriptions]]\nsource = 'cloud'\ntarget = 'shadow'\ntopic = 'a/#/b'\n",
        path="subscriptions[0].topic",
        message="invalid MQTT topic filter: 'a/#/b': '#' must be a whole level and the last one",
    ),
    "filter-plus-inside-level": Broken(
        gateway=GATEWAY + "[[subscriptions]]\nsource = 'cloud'\ntarget = 'shadow'\ntopic = 'a+/b'\n",
        path="subscriptions[0].topic",
        message="invalid MQTT topic filter: 'a+/b': '+' must be a whole level",
    ),
    "tag-topic-with-wildcard": Broken(
        adapters={"line1": MODBUS + 'topic = "x/+/y"\n'},
        file="adapters/line1.toml",
        path="devices[0].tags[0].topic",
        message="invalid MQTT topic: 'x/+/y' is a filter",
    ),
    "toml-syntax-gateway": Broken(
        gateway="[gateway]\nthing_name = plant-a\n",
        path="line 2, column 14",
        message="TOML syntax error: Invalid value",
    ),
    "toml-syntax-adapter": Broken(
        adapters={"line1": 'name = "line1"\nprotocol = "modbus"\n[[devices]\n'},
        file="adapters/line1.toml",
        path="line 3, column 10",
        message="TOML syntax error",
    ),
    "toml-syntax-at-end-of-file": Broken(
        gateway='[gateway]\nthing_name = """plant-a-gw1\n',
        path="line 3, column 1",
        message="TOML syntax error: Unterminated string at the end of the file",
    ),
    "run-as-root": Broken(
        gateway=GATEWAY + FUNCTION.replace("1001:1001", "0:0"),
        path="functions[0].run_as",
        message="'0:0': functions never run as root",
    ),
    "run-as-not-numeric": Broken(
        gateway=GATEWAY + FUNCTION.replace("1001:1001", "millgate"),
        path="functions[0].run_as",
        message="is not 'uid:gid'",
    ),
    "handler-without-module": Broken(
        gateway=GATEWAY + FUNCTION.replace("detector.function_handler", "function_handler"),
        path="functions[0].handler",
        message="should match pattern",
    ),
    "handler-with-path": Broken(
        gateway=GATEWAY + FUNCTION.replace("detector.function_handler", "detector.py:handler"),
        path="functions[0].handler",
        message="(got 'detector.py:handler')",
    ),
    "function-code-missing": Broken(
        gateway=GATEWAY + FUNCTION,
        code_dirs=(),
        path="functions[0].code",
        message="'functions/anomaly' does not exist",
    ),
    "function-code-outside-the-config-dir": Broken(
        # `millgate run` deploys a copy of the config dir, where this path would no longer exist
        gateway=GATEWAY + FUNCTION.replace('code = "functions/anomaly"', 'code = "../elsewhere/anomaly"'),
        path="functions[0].code",
        message="'../elsewhere/anomaly' is outside the config directory",
    ),
    "unknown-protocol": Broken(
        adapters={"line3": 'name = "line3"\nprotocol = "profinet"\n'},
        file="adapters/line3.toml",
        path="protocol",
        message="must be one of: modbus, opcua (got 'profinet')",
    ),
    "modbus-address-beyond-range": Broken(
        adapters={"line1": MODBUS.replace("address = 100", "address = 70000")},
        file="adapters/line1.toml",
        path="devices[0].tags[0].address",
        message="less than or equal to 65535 (got 70000)",
    ),
    "modbus-registers-run-past-end": Broken(
        adapters={"line1": MODBUS.replace("address = 100", "address = 65535")},
        file="adapters/line1.toml",
        path="devices[0].tags[0]",
        message="address 65535 + 2 registers runs past 65535",
    ),
    "rtu-device-without-port": Broken(
        adapters={
            "line1": MODBUS.replace('transport = "tcp"\nhost = "192.168.10.20"\nport = 502', 'transport = "rtu"')
        },
        file="adapters/line1.toml",
        path="devices[0]",
        message="an rtu device needs 'port'",
    ),
    "modbus-port-neither-int-nor-str": Broken(
        adapters={"line1": MODBUS.replace("port = 502", "port = 502.5")},
        file="adapters/line1.toml",
        path="devices[0].port",
        message="input should be a valid integer or a valid string (got 502.5)",
    ),
    "modbus-writable-string-longer-than-one-write": Broken(
        adapters={"line1": MODBUS.replace('type = "float32"', 'type = "string"\nlength = 124\nwritable = true')},
        file="adapters/line1.toml",
        path="devices[0].tags[0]",
        message="a writable string of 124 registers cannot be written: one Modbus write (function 16) carries at most",
    ),
    "modbus-serial-port-in-two-adapter-files": Broken(
        adapters={"a-line": RTU.format(name="a-line", unit=1), "b-line": RTU.format(name="b-line", unit=2)},
        file="adapters/b-line.toml",
        path="devices[0].port",
        message="serial port '/dev/ttyMILLGATE0' is also used by ",  # ... <config>/adapters/a-line.toml devices[0]
    ),
    "modbus-duplicate-tag-topic": Broken(
        adapters={
            "line1": MODBUS
            + "\n[[devices.tags]]\nname = 'pressure'\ntable = 'holding'\naddress = 0\ntype = 'int16'\n"
            + "topic = 'line1/press-01/temperature'\n"
        },
        file="adapters/line1.toml",
        path="devices[0].tags[1].topic",
        message="topic 'line1/press-01/temperature' is also used by devices[0].tags[0]",
    ),
    "modbus-tag-topic-is-another-tags-set-topic": Broken(
        adapters={
            "line1": MODBUS
            + "\n[[devices.tags]]\nname = 'pressure'\ntable = 'holding'\naddress = 0\ntype = 'int16'\n"
            + "topic = 'line1/press-01/temperature/set'\n"
        },
        file="adapters/line1.toml",
        path="devices[0].tags[1].topic",
        message="topic 'line1/press-01/temperature/set' is also used by devices[0].tags[0]",
    ),
    "modbus-rtu-unit-0-is-broadcast": Broken(
        adapters={"line1": RTU.format(name="line1", unit=0)},
        file="adapters/line1.toml",
        path="devices[0].unit",
        message="unit 0 is the broadcast address on a serial line: no device answers it (use 1-247)",
    ),
    "modbus-rtu-unit-above-247": Broken(
        adapters={"line1": RTU.format(name="line1", unit=248)},
        file="adapters/line1.toml",
        path="devices[0].unit",
        message="unit 248 is reserved on a serial line: RTU units are 1-247",
    ),
    "modbus-tcp-unit-above-255": Broken(
        adapters={"line1": MODBUS.replace("port = 502", "port = 502\nunit = 256")},
        file="adapters/line1.toml",
        path="devices[0].unit",
        message="less than or equal to 255 (got 256)",
    ),
    "grant-unknown-resource": Broken(
        gateway=GATEWAY + FUNCTION + 'resources = [{ name = "serial-line9", access = "rw" }]\n',
        path="functions[0].resources[0].name",
        message="unknown resource 'serial-line9'",
    ),
    "environment-key-not-a-variable-name": Broken(
        gateway=GATEWAY + FUNCTION + 'environment = { "bad-key" = "1" }\n',
        path="functions[0].environment.bad-key",
        message="invalid key: string should match pattern",
    ),
    "volume-under-proc": Broken(
        gateway=GATEWAY + "[[resources]]\nname = 'procfs'\nkind = 'volume'\npath = '/proc/1'\n",
        path="resources[0].path",
        message="volumes under /sys, /proc, /dev, /var are refused",
    ),
    "volume-under-proc-spelled-oddly": Broken(
        gateway=GATEWAY + "[[resources]]\nname = 'procfs'\nkind = 'volume'\npath = '//tmp/../proc/1'\n",
        path="resources[0].path",
        message="volumes under /sys, /proc, /dev, /var are refused",
    ),
    # a function must never get the gateway's own files: its CA key, credentials, configs, logs
    "device-outside-dev": Broken(
        gateway=GATEWAY + "[[resources]]\nname = 'tty'\nkind = 'device'\npath = '/home/plant/ttyUSB0'\n",
        path="resources[0].path",
        message="a device must be a file under /dev/",
    ),
    "device-climbing-out-of-dev": Broken(
        gateway=GATEWAY + "[[resources]]\nname = 'tty'\nkind = 'device'\npath = '/dev/../var/lib/millgate/ca'\n",
        path="resources[0].path",
        message="a device must be a file under /dev/",
    ),
    "model-in-place-under-var": Broken(
        gateway=GATEWAY + "[[resources]]\nname = 'm'\nkind = 'model'\npath = '/var/lib/millgate'\n",
        path="resources[0].path",
        message="models under /sys, /proc, /dev, /var are refused",
    ),
    "model-in-place-in-system-config-dir": Broken(
        gateway=GATEWAY + "[[resources]]\nname = 'm'\nkind = 'model'\npath = '/etc/millgate/certs'\n",
        path="resources[0].path",
        message="lies in the config dir /etc/millgate",
    ),
    "volume-in-the-state-dir": Broken(
        gateway=GATEWAY + "state_dir = '/srv/mg/state'\n[[resources]]\nname = 'v'\nkind = 'volume'\n"
        "path = '/srv/mg/state/ca'\n",
        path="resources[0].path",
        message="lies in the gateway state dir /srv/mg/state",
    ),
    "volume-holding-the-log-dir": Broken(
        gateway=GATEWAY + "log_dir = '/srv/mg/logs'\n[[resources]]\nname = 'v'\nkind = 'volume'\npath = '/srv/'\n",
        path="resources[0].path",
        message="holds the gateway log dir /srv/mg/logs",
    ),
    "volume-holding-everything": Broken(
        gateway=GATEWAY + "[[resources]]\nname = 'v'\nkind = 'volume'\npath = '/'\n",
        path="resources[0].path",
        message="holds the config dir /etc/millgate",
    ),
    "state-dir-empty": Broken(gateway=GATEWAY + "state_dir = ''\n", path="gateway.state_dir", message="must be a path"),
    "device-named-like-a-component": Broken(
        gateway=GATEWAY + "[[subscriptions]]\nsource = 'cloud'\ntarget = 'device:function.anomaly'\ntopic = 'a'\n",
        path="subscriptions[0].target",
        message="'function.anomaly' is not a thing name",
    ),
    "device-named-core": Broken(
        gateway=GATEWAY + "[[subscriptions]]\nsource = 'device:core'\ntarget = 'cloud'\ntopic = 'a'\n",
        path="subscriptions[0].source",
        message="'core' is reserved for a millgate component",
    ),
    "subscription-to-itself": Broken(
        gateway=GATEWAY + "[[subscriptions]]\nsource = 'cloud'\ntarget = 'cloud'\ntopic = 'a'\n",
        path="subscriptions[0]",
        message="source and target are both 'cloud'",
    ),
    # AWS's shadowName: [$a-zA-Z0-9:_-]{1,64}; the shadow service refuses any other name at every request
    "shadow-name-with-a-dot": Broken(
        gateway=GATEWAY + "[[shadows]]\nthing = 'press-01'\nname = 'line.1'\n",
        path="shadows[0].name",
        message="a shadow name is 1 to 64 of A-Z a-z 0-9 $ : _ - (AWS IoT's shadowName) (got 'line.1')",
    ),
    "shadow-name-over-64": Broken(
        gateway=GATEWAY + f"[[shadows]]\nthing = 'press-01'\nname = '{'n' * 65}'\n",
        path="shadows[0].name",
        message="a shadow name is 1 to 64 of A-Z a-z 0-9 $ : _ - (AWS IoT's shadowName)",
    ),
    "handler-module-missing": Broken(
        gateway=GATEWAY + FUNCTION.replace("detector.function_handler", "detektor.function_handler"),
        path="functions[0].handler",
        message="no detektor.py (nor detektor/__init__.py) in 'functions/anomaly' for handler "
        "'detektor.function_handler'",
    ),
    "bulk-prefix-unknown-placeholder": Broken(
        gateway=GATEWAY + "[bulk]\nbucket = 'plant-data'\nprefix = '{thing}/{topic}/'\ntopics = ['plant/#']\n",
        path="bulk.prefix",
        message="unknown placeholder {topic} in '{thing}/{topic}/'; the placeholders are {thing} {yyyy}",
    ),
    "bulk-prefix-unbalanced-brace": Broken(
        gateway=GATEWAY + "[bulk]\nbucket = 'plant-data'\nprefix = '{thing/{yyyy}/'\ntopics = ['plant/#']\n",
        path="bulk.prefix",
        message="'{thing/{yyyy}/' is not a key template",
    ),
    # storage/spool.py matches a prefix with str.startswith: a wildcard in it never matches anything
    "spool-prefix-with-a-wildcard": Broken(
        gateway=GATEWAY + "[[spool.topics]]\nprefix = 'alerts/#'\npriority = 10\n",
        path="spool.topics[0].prefix",
        message="'alerts/#': a prefix is plain text matched at the start of a topic, not a topic filter; "
        "'+' and '#' never match (e.g. 'alerts/')",
    ),
    # gateway/component.py looks each program's own name up in `levels`: a misspelt one did nothing
    "log-level-for-no-program": Broken(
        gateway=GATEWAY + FUNCTION + "[logging]\nlevels = { cor = 'debug', fn-anomaly = 'debug' }\n",
        adapters={"line1": MODBUS},
        path="logging.levels.cor",
        message="no program is called 'cor' (programs: adapter-line1, core, fn-anomaly, logship, uplink)",
    ),
    # paho takes the endpoint as a host name to resolve: a URL never resolves, the uplink retries forever
    "cloud-endpoint-is-a-url": Broken(
        gateway=GATEWAY
        + CLOUD.replace('"abc-ats.iot.eu-west-1.amazonaws.com"', '"mqtts://abc-ats.iot.eu-west-1.amazonaws.com:8883"'),
        files=CERTS,
        path="cloud.endpoint",
        message="is a URL: endpoint is the host name only ('abc-ats.iot.eu-west-1.amazonaws.com'), the port goes in",
    ),
    "cloud-endpoint-with-a-port": Broken(
        gateway=GATEWAY + CLOUD.replace('amazonaws.com"', 'amazonaws.com:8883"'),
        files=CERTS,
        path="cloud.endpoint",
        message="'abc-ats.iot.eu-west-1.amazonaws.com:8883' has a port: endpoint is the host name only",
    ),
    "cloud-ca-file-missing": Broken(
        gateway=GATEWAY + CLOUD,
        files={k: v for k, v in CERTS.items() if k != "certs/ca.pem"},
        path="cloud.ca_file",
        message="'certs/ca.pem' does not exist (looked at ",  # <config>/certs/ca.pem: relative to the config dir
    ),
    "cloud-key-file-is-a-directory": Broken(
        gateway=GATEWAY + CLOUD.replace('key_file = "certs/thing.pem.key"', 'key_file = "certs"'),
        files=CERTS,
        path="cloud.key_file",
        message="'certs' is a directory, not a file",
    ),
    "cloud-cert-file-in-der": Broken(
        gateway=GATEWAY + CLOUD,
        files={**CERTS, "certs/thing.pem.crt": CERT_DER},
        path="cloud.cert_file",
        message="'certs/thing.pem.crt' is not PEM: it has no '-----BEGIN CERTIFICATE-----' block",
    ),
    "cloud-ca-file-is-a-key": Broken(
        gateway=GATEWAY + CLOUD.replace('ca_file = "certs/ca.pem"', 'ca_file = "certs/thing.pem.key"'),
        files=CERTS,
        path="cloud.ca_file",
        message="'certs/thing.pem.key' is not PEM: it has no '-----BEGIN CERTIFICATE-----' block",
    ),
    "cloud-key-encrypted": Broken(
        gateway=GATEWAY + CLOUD,
        files={**CERTS, "certs/thing.pem.key": ENCRYPTED_KEY_PEM},
        path="cloud.key_file",
        message="is an encrypted key: the uplink has no passphrase for it",
    ),
    "cloud-key-of-another-certificate": Broken(
        gateway=GATEWAY + CLOUD,
        files={**CERTS, "certs/thing.pem.key": key_pem(OTHER_KEY)},
        path="cloud.key_file",
        message="'certs/thing.pem.key' is not the key of cert_file 'certs/thing.pem.crt'",
    ),
    # the OPC-UA adapter looks for its files next to the adapter file, and exits at start without them
    "opcua-server-certificate-missing": Broken(
        adapters={"line2": OPCUA.replace("[[nodes]]", 'server_certificate = "server.der"\n\n[[nodes]]')},
        file="adapters/line2.toml",
        path="server_certificate",
        message="'server.der' does not exist (looked at ",  # <config>/adapters/server.der
    ),
    "opcua-client-certificate-missing": Broken(
        adapters={"line2": OPCUA.replace("[[nodes]]", 'certificate = "c.der"\nprivate_key = "c-key.pem"\n[[nodes]]')},
        files={"adapters/c-key.pem": KEY_PEM},
        file="adapters/line2.toml",
        path="certificate",
        message="'c.der' does not exist",
    ),
    # asyncua picks PEM or DER by the file's name (.pem or not), whatever is inside
    "opcua-pem-certificate-named-der": Broken(
        adapters={"line2": OPCUA.replace("[[nodes]]", 'server_certificate = "server.der"\n\n[[nodes]]')},
        files={"adapters/server.der": CERT_PEM},
        file="adapters/line2.toml",
        path="server_certificate",
        message="'server.der' is PEM, but asyncua reads a .pem file as PEM and any other as DER",
    ),
    "opcua-private-key-not-a-key": Broken(
        adapters={"line2": OPCUA.replace("[[nodes]]", 'certificate = "c.der"\nprivate_key = "c-key.der"\n[[nodes]]')},
        files={"adapters/c.der": CERT_DER, "adapters/c-key.der": CERT_DER},
        file="adapters/line2.toml",
        path="private_key",
        message="'c-key.der' is not a DER private key",
    ),
    "adapter-file-with-an-upper-case-suffix": Broken(
        files={"adapters/line1.TOML": MODBUS},
        file="adapters/line1.TOML",
        path="(file)",
        message="not read: an adapter file's name ends in lowercase .toml (rename it line1.toml)",
    ),
    "gateway-toml-not-utf8": Broken(
        gateway=None,
        files={"gateway.toml": b"[gateway]\n# caf\xe9\nthing_name = 'gw'\n"},
        path="line 2, column 6",
        message="not UTF-8 text: invalid continuation byte (byte 0xe9); save the file as UTF-8",
    ),
    "gateway-toml-in-utf16": Broken(
        gateway=None,
        files={"gateway.toml": GATEWAY.encode("utf-16")},
        path="line 1, column 1",
        message="it looks like UTF-16; save the file as UTF-8",
    ),
    "register-map-missing": Broken(
        adapters={"line1": REGISTER_MAP},
        file="adapters/line1.toml",
        path="devices[0].tags_csv",
        message="'map.csv' does not exist (looked at ",
    ),
    "register-map-row-names-the-value-and-the-device": Broken(
        adapters={"line1": REGISTER_MAP},
        files={"adapters/map.csv": "name,table,address,type\nspeed,holding,70000,uint16\n"},
        file="adapters/map.csv",
        path="row 2.address",
        message="less than or equal to 65535 (got '70000'); map of devices[0] 'press-01' in ",
    ),
    "register-map-type-with-a-nul-byte": Broken(
        adapters={"line1": REGISTER_MAP},
        files={"adapters/map.csv": "name,table,address,type\nspeed,holding,0,uint16\x00\n"},
        file="adapters/map.csv",
        path="row 2.type",
        message="(got 'uint16\\x00')",
    ),
    "register-map-row-with-more-cells-than-columns": Broken(
        adapters={"line1": REGISTER_MAP},
        files={"adapters/map.csv": "name,table,address,type,units\nspeed,holding,0,uint16,deg,C\n"},
        file="adapters/map.csv",
        path="row 2",
        message="more cells than the header has columns: ['C']",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_validate_reports_the_problem_on_one_line_naming_file_and_key(
    case: Broken, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, case)
    lines = validate(config, capsys)
    prefix = f"{config / case.file}: {case.path}: "
    assert len(lines) == 1, lines
    assert lines[0].startswith(prefix), lines
    assert case.message in lines[0].removeprefix(prefix), lines


def test_volume_inside_the_config_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, Broken())
    code = config / "functions" / "anomaly"
    resource = f"[[resources]]\nname = 'code'\nkind = 'volume'\npath = '{code}'\n"
    (config / "gateway.toml").write_text(GATEWAY + resource)
    lines = validate(config, capsys)
    assert lines == [
        f"{config / 'gateway.toml'}: resources[0].path: '{code}' lies in the gateway config dir {config}: "
        "functions never get the gateway's own files"
    ]


def test_validate_reports_missing_gateway_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, Broken(gateway=None, adapters={"line1": MODBUS}))
    assert validate(config, capsys) == [f"{config / 'gateway.toml'}: (file): missing: every gateway needs gateway.toml"]


def test_validate_reports_missing_config_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert validate(missing, capsys) == [f"{missing}: (directory): config directory does not exist"]


def test_validate_reports_every_problem_across_files_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = (
        "colour = 'red'\n"
        + GATEWAY
        + FUNCTION.replace("1001:1001", "0:0")
        + FUNCTION
        + "[[subscriptions]]\nsource = 'adapter:line9'\ntarget = 'function:ghost'\ntopic = 'a/#/b'\n"
    )
    adapters = {
        "line1": MODBUS.replace("address = 100", "address = 70000"),
        "line2": OPCUA.replace('protocol = "opcua"', 'protocol = "profinet"'),
    }
    config = write_config(tmp_path, Broken(gateway=gateway, adapters=adapters))
    lines = validate(config, capsys)
    gw, line1, line2 = config / "gateway.toml", config / "adapters/line1.toml", config / "adapters/line2.toml"
    # field errors first, then what spans entries, checked on the entries that validated and on the
    # names every entry gives: one run shows everything (the README promises every problem is printed)
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [str(gw), "functions[0].run_as"],
        [str(gw), "subscriptions[0].topic"],
        [str(gw), "colour"],
        [str(gw), "functions[1].name"],
        [str(gw), "subscriptions[0].source"],
        [str(gw), "subscriptions[0].target"],
        [str(line1), "devices[0].tags[0].address"],
        [str(line2), "protocol"],
    ]
    # line1 and line2 are broken but still known by name, so the unknown one is named alone
    assert "unknown adapter 'line9' (known: line1, line2)" in lines[4]
    assert "unknown function 'ghost' (known: anomaly)" in lines[5]


def test_a_field_error_does_not_hide_the_checks_across_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = (
        GATEWAY
        + "[broker]\ntls_port = '18883'\n"
        + FUNCTION
        + FUNCTION.replace('code = "functions/anomaly"', 'code = "functions/missing"')
    )
    config = write_config(tmp_path, Broken(gateway=gateway))
    assert [line.split(": ", 2)[1] for line in validate(config, capsys)] == [
        "broker.tls_port",
        "functions[1].name",
        "functions[1].code",
    ]

    gateway = GATEWAY + "[gateway.extra]\n" + FUNCTION + "[[subscriptions]]\nsource = 'cloud'\ntarget = 'function:x'\n"
    config = write_config(tmp_path / "typo", Broken(gateway=gateway + "topic = 'a'\n"))
    assert [line.split(": ", 2)[1] for line in validate(config, capsys)] == [
        "gateway.extra",
        "subscriptions[0].target",
    ]

    line1 = MODBUS.replace("address = 100", "address = 70000") + (
        "\n[[devices.tags]]\nname = 'temperature'\ntable = 'coil'\naddress = 3\n"
        "\n[[devices.tags]]\nname = 'pressure'\ntable = 'holding'\naddress = 10\ntype = 'int32'\n"
        "\n[[devices.tags]]\nname = 'flow'\ntable = 'holding'\naddress = 11\ntype = 'int16'\n"
    )
    config = write_config(tmp_path / "adapter", Broken(adapters={"line1": line1}))
    lines = validate(config, capsys)
    assert [line.split(": ", 2)[1] for line in lines] == [
        "devices[0].tags[0].address",
        "devices[0].tags[1].name",
        "devices[0].tags[3]",
    ]
    assert "duplicate tag name 'temperature' (also devices[0].tags[0])" in lines[1]
    assert "overlaps tag 'pressure'" in lines[2]


def test_an_invalid_entry_still_gives_its_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What failed is reported once: a function with a bad field is not also unknown to its subscription,
    nor an adapter file with a bad tag to its, nor a device with a bad key to its duplicate."""
    gateway = (
        GATEWAY
        + FUNCTION.replace('run_as = "1001:1001"', 'run_as = "1001:1001"\ntimeout_s = -3')
        + "[[subscriptions]]\nsource = 'adapter:line1'\ntarget = 'function:anomaly'\ntopic = 'line1/#'\n"
    )
    line1 = MODBUS.replace("port = 502", "port = 502\nunit = 300") + MODBUS.split("\n", 3)[3]
    config = write_config(tmp_path, Broken(gateway=gateway, adapters={"line1": line1}))
    lines = validate(config, capsys)
    assert [line.split(": ", 2)[1] for line in lines] == [
        "functions[0].timeout_s",
        "devices[0].unit",
        "devices[1].name",
    ]


def test_an_unreadable_adapters_directory_is_one_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gateway = GATEWAY + "[[subscriptions]]\nsource = 'adapter:line1'\ntarget = 'cloud'\ntopic = 'line1/#'\n"
    config = write_config(tmp_path, Broken(gateway=gateway + "[logging]\nlevels = { adapter-line1 = 'debug' }\n"))
    (config / "adapters").rmdir()
    (config / "adapters").write_text("line1.toml was meant to be in here\n")
    # which adapters exist is unknown, so the subscription and the log level are not also reported
    assert validate(config, capsys) == [
        f"{config / 'adapters'}: (directory): not a directory: adapter files go in adapters/*.toml"
    ]


def test_invalid_adapter_file_is_not_also_an_unknown_adapter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = GATEWAY + "[[subscriptions]]\nsource = 'adapter:line1'\ntarget = 'cloud'\ntopic = 'line1/#'\n"
    adapters = {"line1": MODBUS.replace("address = 100", "address = 70000")}
    config = write_config(tmp_path, Broken(gateway=gateway, adapters=adapters))
    lines = validate(config, capsys)
    assert len(lines) == 1
    assert lines[0].startswith(f"{config / 'adapters/line1.toml'}: devices[0].tags[0].address: ")


def test_duplicate_adapter_file_is_still_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    second = MODBUS + "\n[[devices.tags]]\nname = 'temperature'\ntable = 'coil'\naddress = 3\n"
    config = write_config(tmp_path, Broken(adapters={"a": MODBUS, "b": second}))
    lines = validate(config, capsys)
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [str(config / "adapters/b.toml"), "name"],
        [str(config / "adapters/b.toml"), "devices[0].tags[1].name"],
    ]


def test_demo_config_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `make demo` makes the stand-in cloud's certificates in etc/demo/certs (not in git) before it starts
    config = tmp_path / "demo"
    shutil.copytree(REPO / "etc" / "demo", config, ignore=shutil.ignore_patterns("certs"))
    make_cloud_pki(config / "certs", "demo-gw")
    assert main(["config", "validate", "--config", str(config)]) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "valid" in captured.out


def test_full_design_example_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The gateway.toml and adapter files shown in ../shared/DESIGN.md, "Configuration", validate as they are."""
    gateway = """
[gateway]
thing_name = "plant-a-gw1"
state_dir = "/var/lib/millgate"
log_dir = "/var/log/millgate"

[broker]
tls_port = 8883
server_cert_days = 7

[discovery]
port = 8443
addresses = []

[cloud]
endpoint = "example-ats.iot.ap-northeast-1.amazonaws.com"
port = 8883
ca_file = "/etc/millgate/certs/AmazonRootCA1.pem"
cert_file = "/etc/millgate/certs/thing.pem.crt"
key_file = "/etc/millgate/certs/thing.pem.key"

[spool]
max_bytes = "1GB"
policy = "drop-oldest"

[logging]
level = "info"
max_bytes_per_component = "25MB"

[[resources]]
name = "serial-line1"
kind = "device"
path = "/dev/ttyUSB0"
group_owner = true

[[functions]]
name = "anomaly"
code = "functions/anomaly"
handler = "detector.function_handler"
lifecycle = "on-demand"
run_as = "1001:1001"
timeout_s = 3
memory_mb = 64
max_concurrency = 4
environment = { THRESHOLD = "3.5" }
resources = [{ name = "serial-line1", access = "rw" }]

[[subscriptions]]
source = "adapter:line1"
target = "function:anomaly"
topic = "line1/+/temperature"

[[shadows]]
thing = "press-01"
sync = "both"
"""
    line1 = MODBUS.replace('type = "float32"', 'type = "float32"\nscale = 0.1\ndeadband = 0.5\nwritable = false')
    # as on a gateway, the certificate files it names are there (validate reads them)
    certs = {"AmazonRootCA1.pem": CA_PEM, "thing.pem.crt": CERT_PEM, "thing.pem.key": KEY_PEM}
    files = {f"certs/{name}": content for name, content in certs.items()}
    gateway = gateway.replace("/etc/millgate/certs/", "certs/")
    config = write_config(tmp_path, Broken(gateway=gateway, adapters={"line1": line1, "line2": OPCUA}, files=files))
    assert main(["config", "validate", "--config", str(config)]) == EXIT_OK
    assert "(1 functions, 2 adapters, 1 subscriptions)" in capsys.readouterr().out


def run_millgate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MILLGATE), "config", "validate", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def test_console_script_exits_2_with_problem_lines(tmp_path: Path) -> None:
    gateway = GATEWAY + FUNCTION.replace("1001:1001", "0:0") + "[broker]\ntls_port = '8883'\n"
    config = write_config(tmp_path, Broken(gateway=gateway))
    result = run_millgate(config)
    assert result.returncode == EXIT_INVALID
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [str(config / "gateway.toml"), "broker.tls_port"],
        [str(config / "gateway.toml"), "functions[0].run_as"],
    ]


def test_console_script_reports_toml_syntax_error_position(tmp_path: Path) -> None:
    config = write_config(tmp_path, Broken(adapters={"line1": MODBUS.replace("port = 502", "port = = 502")}))
    result = run_millgate(config)
    assert result.returncode == EXIT_INVALID
    assert result.stderr.startswith(f"{config / 'adapters/line1.toml'}: line 9, column 8: TOML syntax error: ")


def test_a_byte_order_mark_is_not_a_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Notepad and Excel put one before UTF-8 text; TOML does not allow it, the register map reader skips it
    bom = b"\xef\xbb\xbf"
    files = {"gateway.toml": bom + GATEWAY.encode(), "adapters/line1.toml": bom + MODBUS.encode()}
    config = write_config(tmp_path, Broken(gateway=None, files=files))
    assert main(["config", "validate", "--config", str(config)]) == EXIT_OK
    assert "(0 functions, 1 adapters, 0 subscriptions)" in capsys.readouterr().out


def test_a_register_map_address_may_be_hex(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # device manuals print register addresses in hex, and a TOML adapter file may write 0x200 too
    register_map = "name,table,address,type\nspeed,holding,0x200,uint16\nload,holding,0X1f,uint16\n"
    config = write_config(tmp_path, Broken(adapters={"line1": REGISTER_MAP}, files={"adapters/map.csv": register_map}))
    assert main(["config", "validate", "--config", str(config)]) == EXIT_OK
    capsys.readouterr()
    (config / "adapters/map.csv").write_text(register_map.replace("0X1f,uint16", "512,int32"))
    lines = validate(config, capsys)
    assert len(lines) == 1 and "holding 512-513 (int32) overlaps tag 'speed' at 512-512 (uint16)" in lines[0], lines


def test_a_register_map_shared_by_two_devices_is_reported_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    second = REGISTER_MAP.split("\n", 3)[3].replace("press-01", "press-02").replace("192.168.10.20", "192.168.10.21")
    config = write_config(
        tmp_path,
        Broken(
            adapters={"line1": REGISTER_MAP + second},
            files={"adapters/map.csv": "name,table,address,type\nspeed,holding,0,uint17\n"},
        ),
    )
    assert validate(config, capsys) == [
        f"{config / 'adapters/map.csv'}: row 2.type: input should be 'int16', 'uint16', 'int32', 'uint32', 'int64', "
        f"'float32', 'float64', 'string' or 'bool' (got 'uint17'); map of devices[0] 'press-01' in "
        f"{config / 'adapters/line1.toml'}"
    ]


def test_an_opcua_private_key_others_may_read_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # adapters/opcua/certificate.py refuses it at start, and supervisord restarts the adapter into it again
    adapter = OPCUA.replace("[[nodes]]", 'certificate = "pki/c.der"\nprivate_key = "pki/c-key.pem"\n[[nodes]]')
    files = {"adapters/pki/c.der": CERT_DER, "adapters/pki/c-key.pem": KEY_PEM}
    config = write_config(tmp_path, Broken(adapters={"line2": adapter}, files=files))
    assert main(["config", "validate", "--config", str(config)]) == EXIT_OK
    capsys.readouterr()
    (config / "adapters/pki/c-key.pem").chmod(0o640)
    assert validate(config, capsys) == [
        f"{config / 'adapters/line2.toml'}: private_key: 'pki/c-key.pem' is readable by others (mode 640): "
        "the adapter refuses it; chmod 600 it"
    ]


NOBODY = 65534


def run_as_nobody(config: Path) -> subprocess.CompletedProcess[str]:
    """`millgate config validate` as an operator's account that may not read everything root may."""
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", str(MILLGATE)]
    argv += ["config", "validate", "--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")


@pytest.fixture
def nobody_config(short_tmp: Path) -> Path:
    """A config dir in a directory nobody may search, validated first as nobody."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to validate as an unprivileged user")
    config = write_config(short_tmp, Broken(gateway=GATEWAY + FUNCTION + CLOUD, files=CERTS))
    result = run_as_nobody(config)
    if result.returncode != EXIT_OK:
        pytest.skip(f"the millgate console script cannot validate as nobody here: {result.stderr}")
    return config


def test_a_directory_this_user_may_not_search_is_a_problem_not_a_traceback(nobody_config: Path) -> None:
    (nobody_config / "functions").chmod(0o700)
    (nobody_config / "adapters").chmod(0o700)
    result = run_as_nobody(nobody_config)
    assert result.returncode == EXIT_INVALID and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{nobody_config / 'gateway.toml'}: functions[0].code: 'functions/anomaly' cannot be looked at: "
        f"Permission denied (looked at {nobody_config / 'functions/anomaly'})",
        f"{nobody_config / 'adapters'}: (directory): cannot read: Permission denied",
    ]


def test_a_cloud_key_only_the_uplink_may_read_is_not_judged_by_another_user(nobody_config: Path) -> None:
    # on a gateway the key is the uplink's alone (an ACL for its uid): the operator's account cannot
    # tell whether it is good, root can
    key = nobody_config / "certs/thing.pem.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_uid == 0
    key.write_bytes(ENCRYPTED_KEY_PEM)
    assert run_as_nobody(nobody_config).returncode == EXIT_OK
    assert "is an encrypted key" in run_millgate(nobody_config).stderr
    # what any account can see is still judged: a key that is not there
    key.unlink()
    result = run_as_nobody(nobody_config)
    assert result.returncode == EXIT_INVALID
    assert result.stderr.startswith(f"{nobody_config / 'gateway.toml'}: cloud.key_file: 'certs/thing.pem.key' does not")


def test_relative_state_and_log_dirs_are_relative_to_the_config_dir_whatever_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, Broken(gateway=GATEWAY + "state_dir = 'state'\nlog_dir = '../logs'\n"))
    monkeypatch.chdir("/")
    loaded = load_config(config)
    assert loaded.gateway.gateway.state_dir == config / "state"
    assert loaded.gateway.gateway.log_dir == config / "../logs"
    paths = paths_for(argparse.Namespace(config=config, state=None), loaded)
    assert (paths.state_dir, paths.log_dir) == (config / "state", (config / "../logs").absolute())


def test_rules_a_running_gateway_survives_refuse_a_deployment_but_not_a_start(tmp_path: Path) -> None:
    # a config deployed before millgate refused these (a spool prefix that is a filter, a level for no
    # program, a shadow name the shadow service refuses, a URL as endpoint) still starts after an upgrade:
    # `millgate run` warns; `config validate` and `deploy` refuse it
    cloud = "[cloud]\nendpoint = 'mqtts://example.com:8883'\nca_file = 'c'\ncert_file = 'c'\nkey_file = 'k'\n"
    lenient_only = (
        "[logging]\nlevels = { cor = 'debug' }\n[[spool.topics]]\nprefix = 'alerts/#'\n"
        "[[shadows]]\nthing = 'press-01'\nname = 'line.1'\n" + cloud
    )
    config = write_config(tmp_path, Broken(gateway=GATEWAY + lenient_only))
    loaded = load_config(config)
    assert loaded.gateway.spool.topics[0].prefix == "alerts/#"
    _loaded, warned = load_to_run(argparse.Namespace(config=config))
    problems = sorted(f"{p.path}: {p.message}" for p in warned)
    assert [p.split(":")[0] for p in problems] == [
        "cloud.ca_file",
        "cloud.cert_file",
        "cloud.endpoint",
        "cloud.key_file",
        "logging.levels.cor",
        "shadows[0].name",
        "spool.topics[0].prefix",
    ], problems
    with pytest.raises(ConfigInvalid):
        load_config(config, strict=True)
