"""Writes what `millgate import greengrass-v1` mapped: gateway.toml, the functions' code and the notes
on what did not map, validated before anything is written and written whole or not at all."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config_loader import ConfigInvalid, load_config
from gateway.greengrass.export import Export, ImportFailed

if TYPE_CHECKING:
    from gateway.greengrass_import import Plan

NOTES_FILE = "GREENGRASS-IMPORT.md"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = []
        for char in value:
            if char in '"\\':
                escaped.append("\\" + char)
            elif ord(char) < 0x20 or ord(char) == 0x7F:
                escaped.append(f"\\u{ord(char):04x}")
            else:
                escaped.append(char)
        return '"' + "".join(escaped) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def render_gateway_toml(plan: Plan, source: Path) -> str:
    lines = [
        f"# Imported from the Greengrass v1 group export in {source} by `millgate import greengrass-v1`.",
        f"# What did not map, and why: {NOTES_FILE}.",
        "",
        "[gateway]",
        f"thing_name = {_toml_value(plan.thing_name)}",
        "",
    ]
    discovery = []
    if plan.group_id:
        discovery.append(f"group_id = {_toml_value(plan.group_id)}  # devices keep discovering this group")
    if plan.group_name:
        discovery.append(f"group_name = {_toml_value(plan.group_name)}  # AWS_GREENGRASS_GROUP_NAME")
    if discovery:
        lines += ["[discovery]", *discovery, ""]
    if plan.logging:
        lines += ["[logging]", *(f"{k} = {_toml_value(v)}" for k, v in plan.logging.items()), ""]
    for table, items in (
        ("resources", plan.resources),
        ("functions", plan.functions),
        ("subscriptions", plan.subscriptions),
        ("shadows", plan.shadows),
    ):
        for item in items:
            lines.append(f"[[{table}]]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in item.items()]
            lines.append("")
    return "\n".join(lines)


def render_notes(plan: Plan, export: Export) -> str:
    group = export.group_name or export.group_id or str(export.directory)
    lines = [f"# Greengrass v1 group {group}: import notes", ""]
    lines += ["## Devices", ""]
    if plan.devices:
        lines.append("Device certificates are re-issued by this gateway's group CA:")
        lines += ["", *(f"    millgate device add {d}" for d in plan.devices)]
    else:
        lines.append("The group has no devices.")
    lines += ["", "## Not mapped, or mapped with a change", ""]
    lines += [f"- {n}" for n in plan.notes] or ["Everything mapped."]
    return "\n".join(lines) + "\n"


def write_config(plan: Plan, export: Export, out: Path) -> None:
    """Write the config dir whole, after it validates; `out` must not exist yet (or be empty)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ImportFailed(f"{out}: already exists and is not empty; choose a new --out directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (staging / "functions").mkdir()
        for name, code in plan.code.items():
            if code.is_file():
                shutil.copyfile(code, staging / "functions" / f"{name}.zip")
            else:
                shutil.copytree(code, staging / "functions" / name)
        (staging / "gateway.toml").write_text(render_gateway_toml(plan, export.directory), encoding="utf-8")
        (staging / NOTES_FILE).write_text(render_notes(plan, export), encoding="utf-8")
        try:
            load_config(staging)
        except ConfigInvalid as exc:
            shown = str(exc).replace(str(staging), str(out))
            raise ImportFailed(
                f"the imported config does not validate (a millgate bug; please report it):\n{shown}"
            ) from None
        os.chmod(staging, 0o755)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
