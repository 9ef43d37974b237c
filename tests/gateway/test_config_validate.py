"""`millgate config validate` on broken config directories: each problem is one stderr line
`FILE: key.path: what is wrong`, and nothing is valid until every line is gone.

The expectations come from ../shared/DESIGN.md, "Configuration" (file layout, key names, "an error names
the file, the key path and what is wrong") and "Functions" (run_as never root, refused volume roots).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.cli_support import EXIT_INVALID, EXIT_OK

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


@dataclass(frozen=True)
class Broken:
    """A config directory with one problem, and the line validate must print for it."""

    gateway: str | None = GATEWAY
    adapters: dict[str, str] = field(default_factory=dict)
    code_dirs: tuple[str, ...] = ("functions/anomaly",)
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
    # field errors stop the cross-file checks on gateway.toml, so those come in a second run
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [str(gw), "functions[0].run_as"],
        [str(gw), "subscriptions[0].topic"],
        [str(gw), "colour"],
        [str(line1), "devices[0].tags[0].address"],
        [str(line2), "protocol"],
    ]

    (config / "gateway.toml").write_text(
        gateway.replace("colour = 'red'\n", "").replace("0:0", "1001:1001").replace("a/#/b", "a/#")
    )
    lines = validate(config, capsys)
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [str(gw), "functions[1].name"],
        [str(gw), "subscriptions[0].source"],
        [str(gw), "subscriptions[0].target"],
        [str(line1), "devices[0].tags[0].address"],
        [str(line2), "protocol"],
    ]
    # line1 and line2 are broken but still known by name, so the unknown one is named alone
    assert "unknown adapter 'line9' (known: line1, line2)" in lines[1]


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


def test_demo_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate", "--config", str(REPO / "etc" / "demo")]) == EXIT_OK
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
    config = write_config(tmp_path, Broken(gateway=gateway, adapters={"line1": line1, "line2": OPCUA}))
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
