"""Reads a config directory (gateway.toml + adapters/*.toml), validates it, and reports every problem
as `FILE: key.path: what is wrong`.

Field rules live in the models; this module adds what spans fields or files in gateway.toml (names
that must exist, duplicates, resource paths) and runs gateway/adapter_checks.py for each adapter file.
It never starts anything.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway.adapter_checks import adapter_cross_checks, serial_line_checks
from gateway.adapter_config import ADAPTER_MODELS, AdapterConfig, ModbusAdapter
from gateway.aws_names import THING_NAME_PATTERN
from gateway.config import RESERVED_IDENTITIES, GatewayConfig
from gateway.config_problems import Problem, duplicate_names, duplicates
from gateway.resource_paths import destination_refusal, protected_dirs, refusal, shared_destinations

GATEWAY_FILE = "gateway.toml"
ADAPTERS_DIR = "adapters"


class ConfigInvalid(Exception):
    """The config directory has problems; nothing may start on it."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class AdapterFile:
    path: Path
    config: AdapterConfig


@dataclass(frozen=True)
class LoadedConfig:
    config_dir: Path
    gateway: GatewayConfig
    adapters: dict[str, AdapterFile] = field(default_factory=dict)

    def function_code_path(self, code: str) -> Path:
        path = Path(code)
        return path if path.is_absolute() else self.config_dir / path


BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
DICT_KEY_MARKER = "[key]"  # pydantic's last location part for an error in a dict key, not in its value


def key_path(loc: Iterable[str | int]) -> str:
    """('functions', 0, 'timeout_s') -> 'functions[0].timeout_s'; keys TOML would quote are quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if BARE_KEY.match(part) else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
            out += f".{name}" if out else name
    return out or "(top level)"


def _file_loc(loc: Sequence[str | int], raw: Any) -> tuple[tuple[str | int, ...], bool]:
    """The part of a pydantic location that names keys and indexes in the file, and whether it named
    more: a union member ('int', 'str', a model name) or the dict-key marker, which no operator wrote."""
    out: list[str | int] = []
    node = raw
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(node, dict) and isinstance(part, str) and part != DICT_KEY_MARKER and (part in node or last):
            out.append(part)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int):
            out.append(part)
            node = node[part] if 0 <= part < len(node) else None
    return tuple(out), len(out) != len(loc)


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing required key"
    if kind == "is_instance_of" and error.get("ctx", {}).get("class") == "Path":
        return f"must be a path, a non-empty string (got {error.get('input')!r})"
    message = str(error["msg"]).removeprefix("Value error, ")
    message = message[0].lower() + message[1:] if message else message
    value = error.get("input")
    if kind != "value_error" and not isinstance(value, (dict, list)):
        message += f" (got {value!r})"
    if error["loc"][-1:] == (DICT_KEY_MARKER,):
        message = f"invalid key: {message}"
    return message


def _validation_problems(file: str, exc: ValidationError, raw: Any = None) -> list[Problem]:
    """One problem per key path: a value that fits no member of a union is one problem, not one per member."""
    grouped: dict[str, list[str]] = {}
    union: set[str] = set()
    for error in exc.errors():
        loc, dropped = _file_loc(error["loc"], raw) if raw is not None else (tuple(error["loc"]), False)
        path = key_path(loc)
        grouped.setdefault(path, []).append(_describe(error))
        if dropped and error["loc"][-1:] != (DICT_KEY_MARKER,):
            union.add(path)
    problems = []
    for path, messages in grouped.items():
        if path in union and len(messages) > 1:
            problems.append(Problem(file, path, _either(messages)))
        else:
            problems.extend(Problem(file, path, message) for message in messages)
    return problems


def _either(messages: list[str]) -> str:
    """'input should be a valid integer (got 3.5)' + '... a valid string (got 3.5)' -> one sentence."""
    got = re.search(r" \(got .*\)$", messages[0])
    suffix = got.group(0) if got and all(m.endswith(got.group(0)) for m in messages) else ""
    bodies = [m.removesuffix(suffix) if suffix else m for m in messages]
    lead = "input should be "
    if all(b.startswith(lead) for b in bodies):
        return lead + " or ".join(b.removeprefix(lead) for b in bodies) + suffix
    return " or ".join(bodies) + suffix


def _read_toml(path: Path, shown: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    try:
        text = path.read_bytes().decode("utf-8")
        return tomllib.loads(text), []
    except tomllib.TOMLDecodeError as exc:
        return None, [_syntax_problem(shown, str(exc), text)]
    except UnicodeDecodeError as exc:
        return None, [Problem(shown, "(file)", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
    except OSError as exc:
        return None, [Problem(shown, "(file)", f"cannot read: {exc.strerror}")]


def _syntax_problem(shown: str, error: str, text: str) -> Problem:
    """tomllib says '(at line L, column C)' or '(at end of document)'; either way the operator gets a line."""
    where = re.search(r"\(at line (\d+), column (\d+)\)$", error)
    message = re.sub(r"\s*\(at [^()]*\)$", "", error)
    if where:
        position = f"line {where.group(1)}, column {where.group(2)}"
    else:
        end = len(text)
        line = text.count("\n", 0, end) + 1
        column = end - text.rfind("\n", 0, end)
        position = f"line {line}, column {column}"
        if error.endswith("(at end of document)"):
            message += " at the end of the file"
    return Problem(shown, position, f"TOML syntax error: {message}")


def _validate(model: type[BaseModel], raw: dict[str, Any], shown: str) -> tuple[Any, list[Problem]]:
    try:
        return model.model_validate(raw), []
    except ValidationError as exc:
        return None, _validation_problems(shown, exc, raw)


def _adapter_name(raw: dict[str, Any] | None, path: Path) -> str:
    """The name an adapter file claims, even when the file is invalid (so it is not also 'unknown')."""
    name = raw.get("name") if raw is not None else None
    return name if isinstance(name, str) else path.stem


def _load_adapter(path: Path, shown: str) -> tuple[AdapterConfig | None, str, list[Problem]]:
    """The adapter (None if invalid), the name it goes by, and its problems."""
    raw, problems = _read_toml(path, shown)
    name = _adapter_name(raw, path)
    if raw is None:
        return None, name, problems
    raw.setdefault("name", path.stem)
    protocol = raw.get("protocol")
    if protocol is None:
        return None, name, [Problem(shown, "protocol", "missing required key (one of: modbus, opcua)")]
    model = ADAPTER_MODELS.get(protocol) if isinstance(protocol, str) else None
    if model is None:
        return None, name, [Problem(shown, "protocol", f"must be one of: modbus, opcua (got {protocol!r})")]
    adapter, problems = _validate(model, raw, shown)
    return adapter, name, problems


def _gateway_cross_checks(cfg: GatewayConfig, adapters: Iterable[str], config_dir: Path, shown: str) -> list[Problem]:
    problems: list[Problem] = []

    def add(path: str, message: str) -> None:
        problems.append(Problem(shown, path, message))

    for table, items in (("functions", cfg.functions), ("resources", cfg.resources)):
        problems += duplicate_names(shown, table, [item.name for item in items])

    resources = {r.name: r for r in cfg.resources}
    protected = protected_dirs(config_dir, cfg.gateway.state_dir, cfg.gateway.log_dir)
    for index, resource in enumerate(cfg.resources):
        refused = refusal(resource, protected)
        if refused:
            add(f"resources[{index}].path", refused)
        refused = destination_refusal(resource, protected)
        if refused:
            add(f"resources[{index}].destination", refused)

    for index, function in enumerate(cfg.functions):
        code = Path(function.code)
        code = code if code.is_absolute() else config_dir / code
        if not Path(function.code).is_absolute() and os.path.normpath(function.code).startswith(".."):
            add(
                f"functions[{index}].code",
                f"{function.code!r} is outside the config directory, which is all a deployment copies; "
                "move the code inside it or give an absolute path",
            )
        elif not code.exists():
            add(f"functions[{index}].code", f"{function.code!r} does not exist (looked at {code})")
        elif not code.is_dir() and code.suffix != ".zip":
            add(f"functions[{index}].code", f"{function.code!r} is neither a directory nor a .zip file")
        for grant_index, grant in enumerate(function.resources):
            if grant.name not in resources:
                add(
                    f"functions[{index}].resources[{grant_index}].name",
                    f"unknown resource {grant.name!r} (declare it in [[resources]])",
                )
        for grant_index, shared in shared_destinations([g.name for g in function.resources], resources):
            add(f"functions[{index}].resources[{grant_index}].name", shared)
        if function.uid in cfg.gateway.component_uid_range:
            add(
                f"functions[{index}].run_as",
                f"uid {function.uid} is one of [gateway] component_uids ({cfg.gateway.component_uids}), "
                "which millgate's own components run as; give the function another uid",
            )

    functions = {f.name for f in cfg.functions}
    known = {"function": functions, "adapter": set(adapters)}
    thing = re.compile(THING_NAME_PATTERN)
    for index, sub in enumerate(cfg.subscriptions):
        for side in ("source", "target"):
            endpoint = getattr(sub, side)
            kind, _, name = endpoint.partition(":")
            if kind in known and name not in known[kind]:
                names = ", ".join(sorted(known[kind])) or "none configured"
                add(f"subscriptions[{index}].{side}", f"unknown {kind} {name!r} (known: {names})")
            if kind == "device" and name in RESERVED_IDENTITIES:
                add(f"subscriptions[{index}].{side}", f"{name!r} is reserved for a millgate component")
            elif kind == "device" and not thing.match(name):
                # a device's broker identity is its thing name; 'function.x' would be a function's identity
                add(
                    f"subscriptions[{index}].{side}",
                    f"{name!r} is not a thing name (letters, digits, ':', '_', '-'; at most 128)",
                )
        if sub.source == sub.target:
            add(f"subscriptions[{index}]", f"source and target are both {sub.source!r}")
    for index, first in duplicates([f"{s.source}|{s.target}|{s.topic}" for s in cfg.subscriptions]):
        add(f"subscriptions[{index}]", f"duplicate of subscriptions[{first}]")
    for index, first in duplicates([f"{s.thing}|{s.name or ''}" for s in cfg.shadows]):
        add(f"shadows[{index}]", f"duplicate of shadows[{first}]")
    return problems


def load_config(config_dir: Path) -> LoadedConfig:
    """Load and validate everything under `config_dir`; raise ConfigInvalid listing every problem."""
    gateway_path = config_dir / GATEWAY_FILE
    if not config_dir.is_dir():
        raise ConfigInvalid([Problem(str(config_dir), "(directory)", "config directory does not exist")])
    if not gateway_path.is_file():
        raise ConfigInvalid([Problem(str(gateway_path), "(file)", "missing: every gateway needs gateway.toml")])

    problems: list[Problem] = []
    adapters: dict[str, AdapterFile] = {}
    adapter_names: dict[str, str] = {}
    serial_lines: dict[str, tuple[str, int, str]] = {}
    for path in sorted((config_dir / ADAPTERS_DIR).glob("*.toml")):
        shown = str(path)
        adapter, name, found = _load_adapter(path, shown)
        problems += found
        if isinstance(adapter, ModbusAdapter):
            problems += serial_line_checks(adapter, shown, serial_lines)
        if name in adapter_names:
            problems.append(Problem(shown, "name", f"adapter name {name!r} is also used by {adapter_names[name]}"))
            if adapter is not None:
                problems += adapter_cross_checks(adapter, config_dir / ADAPTERS_DIR, shown)
            continue
        # an invalid file still claims its name: subscriptions to it are not also reported as unknown
        adapter_names[name] = shown
        if adapter is None:
            continue
        problems += adapter_cross_checks(adapter, config_dir / ADAPTERS_DIR, shown)
        adapters[adapter.name] = AdapterFile(path, adapter)

    shown = str(gateway_path)
    raw, found = _read_toml(gateway_path, shown)
    problems += found
    gateway = None
    if raw is not None:
        gateway, found = _validate(GatewayConfig, raw, shown)
        problems += found
    if gateway is not None:
        problems += _gateway_cross_checks(gateway, adapter_names, config_dir, shown)

    if problems or gateway is None:
        raise ConfigInvalid(sorted(dict.fromkeys(problems), key=lambda p: (p.file != shown, p.file)))
    return LoadedConfig(config_dir, _with_absolute_cloud_files(gateway, config_dir), adapters)


def _with_absolute_cloud_files(gateway: GatewayConfig, config_dir: Path) -> GatewayConfig:
    """Relative certificate paths mean relative to the config dir, whatever a process's cwd."""
    cloud = gateway.cloud
    if cloud is None:
        return gateway
    absolute = {
        key: path if path.is_absolute() else (config_dir / path).absolute()
        for key, path in (("ca_file", cloud.ca_file), ("cert_file", cloud.cert_file), ("key_file", cloud.key_file))
    }
    return gateway.model_copy(update={"cloud": cloud.model_copy(update=absolute)})
