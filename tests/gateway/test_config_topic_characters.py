"""`millgate config validate` on topics holding control characters or edge whitespace: a subscription's
topic is written into the broker's generated ACL file one grant per line, so a newline in it would add
grants of its own; each is refused with one line naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.cli_support import EXIT_INVALID

GATEWAY = """
[gateway]
thing_name = "plant-a-gw1"

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


def _validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], gateway: str, adapters: dict[str, str] | None = None
) -> list[str]:
    """Run the verb in-process on a config dir; its stderr lines, each without the config dir's prefix."""
    config = tmp_path / "etc"
    (config / "adapters").mkdir(parents=True)
    (config / "functions" / "anomaly").mkdir(parents=True)
    (config / "functions" / "anomaly" / "detector.py").write_text("def function_handler(e, c):\n    return e\n")
    (config / "gateway.toml").write_text(gateway)
    for name, text in (adapters or {}).items():
        (config / "adapters" / f"{name}.toml").write_text(text)
    with pytest.raises(SystemExit) as exited:
        main(["config", "validate", "--config", str(config)])
    assert exited.value.code == EXIT_INVALID
    return [line.removeprefix(f"{config}/") for line in capsys.readouterr().err.splitlines()]


def _subscription(topic_toml: str) -> str:
    return GATEWAY + f"[[subscriptions]]\nsource = 'function:anomaly'\ntarget = 'cloud'\ntopic = {topic_toml}\n"


@pytest.mark.parametrize(
    ("topic_toml", "why"),
    [
        (
            '"line1/x\\ntopic readwrite line2/secret"',
            "'line1/x\\ntopic readwrite line2/secret' holds the control character U+000A at 7",
        ),
        ('"line1/\\u0085x"', "'line1/\\x85x' holds the control character U+0085 at 6"),
        ('"line1/\\u001b[31m"', "'line1/\\x1b[31m' holds the control character U+001B at 6"),
        ('"line1/temp "', "'line1/temp ' begins or ends with whitespace"),
        ('"\\tline1/#"', "'\\tline1/#' holds the control character U+0009 at 0"),
    ],
    ids=["newline", "next-line", "escape", "trailing-space", "leading-tab"],
)
def test_subscription_topic_with_a_control_character_or_edge_whitespace_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], topic_toml: str, why: str
) -> None:
    lines = _validate(tmp_path, capsys, _subscription(topic_toml))
    assert lines == [f"gateway.toml: subscriptions[0].topic: invalid MQTT topic filter: {why}"]


def test_tag_topic_with_a_control_character_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adapter = MODBUS + 'topic = "line1/press-01/temp\\r"\n'
    lines = _validate(tmp_path, capsys, GATEWAY, {"line1": adapter})
    assert lines == [
        "adapters/line1.toml: devices[0].tags[0].topic: invalid MQTT topic: "
        "'line1/press-01/temp\\r' holds the control character U+000D at 19"
    ]
