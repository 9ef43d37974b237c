"""Validation of Modbus adapter files and their register map CSVs: every bad input names the file and
the key (or CSV row) and says what is wrong; nothing starts on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config_loader import ConfigInvalid, load_config

HEAD = """
name = "line1"
protocol = "modbus"

[[devices]]
name = "press"
transport = "tcp"
host = "127.0.0.1"
"""


def problems(short_tmp: Path, adapter: str, files: dict[str, str] | None = None) -> list[str]:
    (short_tmp / "adapters").mkdir(exist_ok=True)
    (short_tmp / "gateway.toml").write_text('[gateway]\nthing_name = "gw"\n')
    (short_tmp / "adapters" / "line1.toml").write_text(adapter)
    for name, text in (files or {}).items():
        (short_tmp / "adapters" / name).write_text(text)
    try:
        load_config(short_tmp)
    except ConfigInvalid as exc:
        return [str(p) for p in exc.problems]
    return []


def tag(name: str, address: int, type_: str, extra: str = "") -> str:
    return f'\n[[devices.tags]]\nname = "{name}"\ntable = "holding"\naddress = {address}\ntype = "{type_}"\n{extra}\n'


def test_a_valid_adapter_with_aliases_and_bits_sharing_registers_loads(short_tmp: Path) -> None:
    adapter = HEAD + tag("raw", 10, "uint16") + tag("flag", 10, "bool", "bit = 3") + tag("alias", 10, "uint16")
    assert problems(short_tmp, adapter) == []


@pytest.mark.parametrize(
    ("tags", "where", "message"),
    [
        (tag("t", 1, "float16"), "devices[0].tags[0].type", "float16"),
        (tag("t", 65535, "float32"), "devices[0].tags[0]", "runs past 65535"),
        (tag("s", 0, "string", "length = 200"), "devices[0].tags[0].length", "less than or equal to 125"),
        (tag("a", 10, "float32") + tag("b", 11, "int16"), "devices[0].tags[1]", "overlaps tag 'a'"),
        (tag("a", 10, "float32") + tag("b", 11, "bool", "bit = 2"), "devices[0].tags[1]", "lies inside float32"),
        (tag("a", 1, "int16") + tag("a", 2, "int16"), "devices[0].tags[1].name", "duplicate tag name"),
        (tag("t", 1, "uint16", "writable = true\ntable2 = 1"), "devices[0].tags[0].table2", "unknown key"),
    ],
)
def test_bad_tags_are_refused_with_file_and_key(short_tmp: Path, tags: str, where: str, message: str) -> None:
    found = problems(short_tmp, HEAD + tags)
    assert any(f"line1.toml: {where}: " in p and message in p for p in found), found


def test_a_device_limit_below_a_tags_width_is_refused(short_tmp: Path) -> None:
    found = problems(short_tmp, HEAD + "max_registers_per_read = 2\n" + tag("f", 0, "float64"))
    assert any("devices[0].tags[0].type" in p and "max_registers_per_read = 2" in p for p in found), found


def test_two_devices_with_one_unit_on_one_bus_are_refused(short_tmp: Path) -> None:
    adapter = HEAD + tag("a", 0, "int16") + HEAD.split("\n", 4)[4].replace("press", "press2") + tag("a", 0, "int16")
    found = problems(short_tmp, adapter)
    assert any("devices[1].unit" in p and "unit 1 on tcp://127.0.0.1:502 is also devices[0]" in p for p in found)


def test_register_map_csv_loads_and_bad_rows_name_the_row_and_column(short_tmp: Path) -> None:
    good = "name,table,address,type,scale,writable,units\nspeed,holding,0,float32,0.1,true,rpm\nrun,coil,4,,,yes,\n"
    assert problems(short_tmp, HEAD + 'tags_csv = "map.csv"\n', {"map.csv": good}) == []
    bad = "name,table,address,type\nok,holding,0,int16\nbad,holding,70000,int16\nworse,holding,1,int128\n"
    found = problems(short_tmp, HEAD + 'tags_csv = "map.csv"\n', {"map.csv": bad})
    too_far = "map.csv: row 3.address: input should be less than or equal to 65535 (got '70000')"
    assert any(too_far in p for p in found), found
    assert any("map.csv: row 4.type:" in p for p in found), found
    found = problems(short_tmp, HEAD + 'tags_csv = "map.csv"\n', {"map.csv": "name,tabel\nx,holding\n"})
    assert any("map.csv: (header): unknown column(s) tabel" in p for p in found), found


def test_csv_tags_that_overlap_toml_tags_inconsistently_are_refused(short_tmp: Path) -> None:
    csv_text = "name,table,address,type\nwide,holding,0,int32\n"
    found = problems(short_tmp, HEAD + 'tags_csv = "map.csv"\n' + tag("narrow", 1, "int16"), {"map.csv": csv_text})
    assert any("tags_csv" in p and "row 2" in p and "overlaps" in p for p in found), found


def rtu(name: str, port: str, unit: int = 1, device: str = "drive") -> str:
    return f"""
name = "{name}"
protocol = "modbus"

[[devices]]
name = "{device}"
transport = "rtu"
port = "{port}"
unit = {unit}
""" + tag("speed", 0, "uint16")


def test_unit_ids_modbus_tcp_devices_use_load_and_rtu_keeps_to_1_to_247(short_tmp: Path) -> None:
    for unit in (0, 1, 247, 255):
        assert problems(short_tmp, HEAD + f"unit = {unit}\n" + tag("a", 0, "int16")) == [], unit
    assert problems(short_tmp, rtu("line1", "/dev/ttyMILLGATE0", 247)) == []
    for unit, message in ((0, "broadcast address"), (248, "reserved on a serial line"), (255, "reserved")):
        found = problems(short_tmp, rtu("line1", "/dev/ttyMILLGATE0", unit))
        assert any("line1.toml: devices[0].unit: " in p and message in p for p in found), found


def test_a_writable_string_may_take_one_write_of_123_registers_not_more(short_tmp: Path) -> None:
    assert problems(short_tmp, HEAD + tag("s", 0, "string", "length = 123\nwritable = true")) == []
    assert problems(short_tmp, HEAD + tag("s", 0, "string", "length = 125")) == []  # read-only: one read
    found = problems(short_tmp, HEAD + tag("s", 0, "string", "length = 124\nwritable = true"))
    assert any("devices[0].tags[0]: " in p and "at most 123" in p for p in found), found


def test_one_serial_line_in_two_adapter_files_is_refused_naming_both_even_through_a_symlink(short_tmp: Path) -> None:
    tty = short_tmp / "ttyUSB0"
    tty.touch()
    (short_tmp / "by-id").mkdir()
    link = short_tmp / "by-id" / "usb-FTDI_RS485-if00"
    link.symlink_to(tty)
    # line1.toml (the first file) names the link, line2.toml the device it points to
    found = problems(short_tmp, rtu("line1", str(link)), {"line2.toml": rtu("line2", str(tty), unit=2)})
    [problem] = found
    assert problem.startswith(f"{short_tmp}/adapters/line2.toml: devices[0].port: serial port '{tty}' ")
    assert f"is also used by {short_tmp}/adapters/line1.toml devices[0].port '{link}', both {tty}" in problem
    (short_tmp / "adapters" / "line2.toml").unlink()
    # two spellings of one line in one file would make two buses (two masters) on it
    two = rtu("line1", str(link)) + rtu("x", str(tty), unit=2, device="drive2").split("\n", 4)[4]
    [problem] = problems(short_tmp, two)
    assert f"line1.toml: devices[1].port: '{tty}' is the serial line of devices[0].port '{link}'" in problem
    # different lines, and one line shared by the devices of one file, are fine
    other = short_tmp / "ttyUSB1"
    assert problems(short_tmp, rtu("line1", str(tty)), {"line2.toml": rtu("line2", str(other))}) == []
    (short_tmp / "adapters" / "line2.toml").unlink()
    assert problems(short_tmp, rtu("line1", str(tty)) + rtu("x", str(tty), 2, "drive2").split("\n", 4)[4]) == []


def test_two_tags_publishing_on_one_topic_are_refused_across_devices_and_csv_rows(short_tmp: Path) -> None:
    second = HEAD.split("\n", 4)[4].replace("press", "press2")
    adapter = HEAD + tag("t", 0, "int16") + second + tag("u", 0, "int16", 'topic = "line1/press/t"')
    found = problems(short_tmp, adapter)
    assert any("devices[1].tags[0].topic: topic 'line1/press/t' is also used by devices[0].tags[0]" in p for p in found)
    csv_text = "name,table,address,type,topic\nfrom_csv,holding,5,int16,plant/t\n"
    adapter = HEAD + 'tags_csv = "map.csv"\n' + tag("t", 0, "int16", 'topic = "plant/t"')
    found = problems(short_tmp, adapter, {"map.csv": csv_text})
    assert any("row 2.topic: topic 'plant/t' is also used by devices[0].tags[0]" in p for p in found), found
    # a duplicate name is one problem, not also a duplicate topic
    found = problems(short_tmp, HEAD + tag("t", 0, "int16") + tag("t", 2, "int16"))
    assert len(found) == 1 and "duplicate tag name" in found[0], found


@pytest.mark.parametrize(
    ("extra", "key"),
    [("scale = nan", "scale"), ("offset = inf", "offset"), ("offset = -inf", "offset"), ("deadband = inf", "deadband")],
)
def test_a_number_that_is_not_finite_is_refused_with_file_and_key(short_tmp: Path, extra: str, key: str) -> None:
    # TOML has nan and inf; scale = nan turned every reading into NaN, deadband = inf published nothing again
    found = problems(short_tmp, HEAD + tag("t", 0, "float32", extra))
    where = f"line1.toml: devices[0].tags[0].{key}: "
    assert any(where in p and "should be a finite number" in p for p in found), found


def test_a_number_that_is_not_finite_in_a_register_map_is_refused_naming_the_row(short_tmp: Path) -> None:
    csv_text = "name,table,address,type,scale,offset,deadband\na,holding,0,int16,nan,,\nb,holding,1,int16,,-inf,\n"
    csv_text += "c,holding,2,int16,,,Infinity\n"
    found = problems(short_tmp, HEAD + 'tags_csv = "map.csv"\n', {"map.csv": csv_text})
    for where in ("row 2.scale", "row 3.offset", "row 4.deadband"):
        assert any(f"map.csv: {where}: " in p and "should be a finite number" in p for p in found), (where, found)
