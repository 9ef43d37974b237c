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
    assert any(p.endswith("map.csv: row 3.address: Input should be less than or equal to 65535") for p in found), found
    assert any("map.csv: row 4.type:" in p for p in found), found
    found = problems(short_tmp, HEAD + 'tags_csv = "map.csv"\n', {"map.csv": "name,tabel\nx,holding\n"})
    assert any("map.csv: (header): unknown column(s) tabel" in p for p in found), found


def test_csv_tags_that_overlap_toml_tags_inconsistently_are_refused(short_tmp: Path) -> None:
    csv_text = "name,table,address,type\nwide,holding,0,int32\n"
    found = problems(short_tmp, HEAD + 'tags_csv = "map.csv"\n' + tag("narrow", 1, "int16"), {"map.csv": csv_text})
    assert any("tags_csv" in p and "row 2" in p and "overlaps" in p for p in found), found
