"""Reads a config directory (gateway.toml + adapters/*.toml), validates it, and reports every problem
as `FILE: key.path: what is wrong`.

Field rules live in the models; this module adds what spans fields or files in gateway.toml (names
that must exist, duplicates, resource paths, the cloud's certificate files) and runs
gateway/adapter_checks.py for each adapter file. What spans entries is checked on every entry that
validated even when others did not, so one bad key hides nothing else. It never starts anything.
"""

from __future__ import annotations

import os
import re
import tomllib
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway.acl import CORE, UPLINK, adapter_component, function_component
from gateway.adapter_checks import modbus_adapter_checks, opcua_adapter_checks
from gateway.adapter_config import ADAPTER_MODELS, AdapterConfig, ModbusAdapter
from gateway.aws_names import THING_NAME_PATTERN
from gateway.config import (
    ENDPOINT_PATTERN,
    LENIENT,
    RESERVED_IDENTITIES,
    Function,
    GatewayConfig,
    GatewaySection,
    Resource,
    ShadowSync,
    Subscription,
)
from gateway.config_files import CLOUD_FILES, cloud_file_checks, config_path
from gateway.config_problems import (
    DICT_KEY_MARKER,
    Entries,
    NotUtf8,
    Problem,
    config_text,
    describe_error,
    duplicate_names,
    duplicates,
    valid_or_none,
)
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
        return function_code_path(code, self.config_dir)


def function_code_path(code: str, config_dir: Path) -> Path:
    """Where a function's `code` is: a relative path is in the config dir."""
    path = Path(code)
    return path if path.is_absolute() else config_dir / path


BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


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


def _validation_problems(file: str, exc: ValidationError, raw: Any = None) -> list[Problem]:
    """One problem per key path: a value that fits no member of a union is one problem, not one per member."""
    grouped: dict[str, list[str]] = {}
    union: set[str] = set()
    for error in exc.errors():
        loc, dropped = _file_loc(error["loc"], raw) if raw is not None else (tuple(error["loc"]), False)
        path = key_path(loc)
        grouped.setdefault(path, []).append(describe_error(error))
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
    text = ""
    try:
        text = config_text(path.read_bytes())
        return tomllib.loads(text), []
    except tomllib.TOMLDecodeError as exc:
        return None, [_syntax_problem(shown, str(exc), text)]
    except NotUtf8 as exc:
        return None, [Problem(shown, exc.where, exc.message)]
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


def _load_adapter(
    path: Path, shown: str, serial_lines: dict[str, tuple[str, int, str]], strict: bool
) -> tuple[AdapterConfig | None, str, list[Problem]]:
    """The adapter (None if invalid), the name it goes by, and its problems: its fields', then those
    across its entries (and its serial lines against `serial_lines`) on whatever of it validated."""
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
    if model is ModbusAdapter:
        problems += modbus_adapter_checks(adapter, raw, name, path.parent, shown, serial_lines)
    else:
        problems += opcua_adapter_checks(adapter, raw, name, path.parent, shown, strict)
    return adapter, name, problems


def _adapter_files(config_dir: Path) -> tuple[list[Path] | None, list[Problem]]:
    """adapters/*.toml (None when the directory cannot be listed), and the files there that look meant
    as adapter files but would be passed over."""
    directory = config_dir / ADAPTERS_DIR
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [], []
    except NotADirectoryError:
        return None, [Problem(str(directory), "(directory)", "not a directory: adapter files go in adapters/*.toml")]
    except OSError as exc:
        return None, [Problem(str(directory), "(directory)", f"cannot read: {exc.strerror}")]
    problems = []
    for name in names:
        stem, suffix = os.path.splitext(name)
        if suffix.lower() == ".toml" and suffix != ".toml":
            message = f"not read: an adapter file's name ends in lowercase .toml (rename it {stem}.toml)"
            problems.append(Problem(str(directory / name), "(file)", message))
    return [directory / name for name in names if name.endswith(".toml")], problems


@dataclass(frozen=True)
class GatewayParts:
    """What of gateway.toml the checks across entries can use: the [gateway] table if it validated, and
    each array of tables entry by entry (the whole model's, when that validated)."""

    section: GatewaySection | None
    functions: Entries[Function]
    resources: Entries[Resource]
    subscriptions: Entries[Subscription]
    shadows: Entries[ShadowSync]

    @classmethod
    def of(cls, cfg: GatewayConfig) -> GatewayParts:
        return cls(
            cfg.gateway,
            Entries.of(cfg.functions),
            Entries.of(cfg.resources),
            Entries.of(cfg.subscriptions),
            Entries.of(cfg.shadows),
        )

    @classmethod
    def check(cls, raw: dict[str, Any]) -> GatewayParts:
        return cls(
            valid_or_none(GatewaySection, raw.get("gateway")),
            Entries.check(Function, raw.get("functions")),
            Entries.check(Resource, raw.get("resources")),
            Entries.check(Subscription, raw.get("subscriptions")),
            Entries.check(ShadowSync, raw.get("shadows")),
        )


def _gateway_cross_checks(
    parts: GatewayParts, raw: dict[str, Any], adapters: set[str] | None, config_dir: Path, shown: str, strict: bool
) -> list[Problem]:
    """`adapters`: the names the adapter files claim, None when adapters/ could not be listed."""
    problems: list[Problem] = []

    def add(path: str, message: str) -> None:
        problems.append(Problem(shown, path, message))

    problems += duplicate_names(shown, "functions", parts.functions.names or [])
    problems += duplicate_names(shown, "resources", parts.resources.names or [])

    resources = {r.name: r for r in parts.resources.valid.values()}
    section = parts.section
    state, logs = (section.state_dir, section.log_dir) if section else (None, None)
    protected = protected_dirs(
        config_dir, state and config_path(state, config_dir), logs and config_path(logs, config_dir)
    )
    for index, resource in parts.resources.valid.items():
        refused = refusal(resource, protected)
        if refused:
            add(f"resources[{index}].path", refused)
        refused = destination_refusal(resource, protected)
        if refused:
            add(f"resources[{index}].destination", refused)

    declared = parts.resources.known
    for index, function in parts.functions.valid.items():
        code_path = function_code_path(function.code, config_dir)
        code_problem = _function_code_problem(function.code, code_path)
        if code_problem:
            add(f"functions[{index}].code", code_problem)
        elif strict:
            missing = _missing_handler_module(function.code, code_path, function.handler)
            if missing:
                add(f"functions[{index}].handler", missing)
        for grant_index, grant in enumerate(function.resources):
            if declared is not None and grant.name not in declared:
                add(
                    f"functions[{index}].resources[{grant_index}].name",
                    f"unknown resource {grant.name!r} (declare it in [[resources]])",
                )
        for grant_index, shared in shared_destinations([g.name for g in function.resources], resources):
            add(f"functions[{index}].resources[{grant_index}].name", shared)
        if section is not None and function.uid in section.component_uid_range:
            add(
                f"functions[{index}].run_as",
                f"uid {function.uid} is one of [gateway] component_uids ({section.component_uids}), "
                "which millgate's own components run as; give the function another uid",
            )

    problems += _endpoint_checks(raw.get("subscriptions"), parts.functions.known, adapters, shown)
    subscriptions = {i: f"{s.source}|{s.target}|{s.topic}" for i, s in parts.subscriptions.valid.items()}
    problems += _duplicate_entries(shown, "subscriptions", subscriptions)
    shadows = {i: f"{s.thing}|{s.name or ''}" for i, s in parts.shadows.valid.items()}
    problems += _duplicate_entries(shown, "shadows", shadows)
    if strict:
        problems += _log_level_checks(raw.get("logging"), parts.functions.known, adapters, shown)
        problems += cloud_file_checks(raw.get("cloud"), config_dir, shown)
    return problems


def _duplicate_entries(shown: str, table: str, keys: dict[int, str]) -> list[Problem]:
    """`keys`: what makes an entry the same as another, by the entry's index in the file."""
    indexes = list(keys)
    return [
        Problem(shown, f"{table}[{indexes[position]}]", f"duplicate of {table}[{indexes[first]}]")
        for position, first in duplicates(list(keys.values()))
    ]


def _missing_handler_module(code: str, path: Path, handler: str) -> str | None:
    """Why the handler's module is not in the code (a dir or a zip), or None when it is."""
    module = handler.rpartition(".")[0].replace(".", "/")
    wanted = (f"{module}.py", f"{module}/__init__.py")
    try:
        if path.is_dir():
            present = any((path / name).is_file() for name in wanted)
        else:
            with zipfile.ZipFile(path) as archive:
                present = any(name in archive.namelist() for name in wanted)
    except (OSError, zipfile.BadZipFile) as exc:
        return f"cannot look for {wanted[0]} in {code!r}: {exc}"
    if present:
        return None
    return f"no {wanted[0]} (nor {wanted[1]}) in {code!r} for handler {handler!r}"


def _function_code_problem(code: str, path: Path) -> str | None:
    if not Path(code).is_absolute() and os.path.normpath(code).startswith(".."):
        return (
            f"{code!r} is outside the config directory, which is all a deployment copies; "
            "move the code inside it or give an absolute path"
        )
    try:
        is_dir = path.is_dir()
        exists = is_dir or path.exists()
    except OSError as exc:  # a directory on the way that this user may not search
        return f"{code!r} cannot be looked at: {exc.strerror} (looked at {path})"
    if not exists:
        return f"{code!r} does not exist (looked at {path})"
    if not is_dir and path.suffix != ".zip":
        return f"{code!r} is neither a directory nor a .zip file"
    return None


def _endpoint_checks(raw: Any, functions: set[str] | None, adapters: set[str] | None, shown: str) -> list[Problem]:
    """The names each subscription's source and target give, wherever the rest of it is wrong too."""
    problems: list[Problem] = []
    known = {"function": functions, "adapter": adapters}
    thing = re.compile(THING_NAME_PATTERN)
    for index, sub in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(sub, dict):
            continue
        sides = {s: sub.get(s) for s in ("source", "target")}
        for side, endpoint in sides.items():
            if not isinstance(endpoint, str) or not re.fullmatch(ENDPOINT_PATTERN, endpoint):
                continue
            where = f"subscriptions[{index}].{side}"
            kind, _, name = endpoint.partition(":")
            names = known.get(kind)
            if names is not None and name not in names:
                listed = ", ".join(sorted(names)) or "none configured"
                problems.append(Problem(shown, where, f"unknown {kind} {name!r} (known: {listed})"))
            if kind == "device" and name in RESERVED_IDENTITIES:
                problems.append(Problem(shown, where, f"{name!r} is reserved for a millgate component"))
            elif kind == "device" and not thing.match(name):
                # a device's broker identity is its thing name; 'function.x' would be a function's identity
                message = f"{name!r} is not a thing name (letters, digits, ':', '_', '-'; at most 128)"
                problems.append(Problem(shown, where, message))
        if isinstance(sides["source"], str) and sides["source"] == sides["target"]:
            message = f"source and target are both {sides['source']!r}"
            problems.append(Problem(shown, f"subscriptions[{index}]", message))
    return problems


def _log_level_checks(raw: Any, functions: set[str] | None, adapters: set[str] | None, shown: str) -> list[Problem]:
    """[logging] levels names programs (gateway/component.py looks its own name up): a key that is no
    program of this config would silently do nothing. Not judged while the functions or adapters are unknown."""
    levels = raw.get("levels") if isinstance(raw, dict) else None
    if not isinstance(levels, dict) or functions is None or adapters is None:
        return []
    from gateway.supervisor_config import LOGSHIP  # here: supervisor_config imports this module

    programs = {CORE, UPLINK, LOGSHIP}
    programs |= {adapter_component(name) for name in adapters} | {function_component(name) for name in functions}
    listed = ", ".join(sorted(programs))
    return [
        Problem(shown, key_path(("logging", "levels", key)), f"no program is called {key!r} (programs: {listed})")
        for key in levels
        if key not in programs
    ]


def load_config(config_dir: Path, *, strict: bool = False) -> LoadedConfig:
    """Load and validate everything under `config_dir`; raise ConfigInvalid listing every problem.

    `strict` adds what a running gateway survives (config.LENIENT's rules: a setting that would only
    never take effect) and the certificate and key files the config names ([cloud], OPC-UA adapters)
    as they are on this host: for `config validate`, `check` and a deployment to this gateway. Not for
    `millgate run` and the components (a config deployed before a rule was added must still start,
    and a missing cloud key stop only the uplink's link, which says so) nor for `bundle build` on a
    workstation, where the gateway's files are not."""
    lenient = LENIENT.set(not strict)
    try:
        return _load_config(config_dir, strict)
    finally:
        LENIENT.reset(lenient)


def _load_config(config_dir: Path, strict: bool) -> LoadedConfig:
    gateway_path = config_dir / GATEWAY_FILE
    if not config_dir.is_dir():
        raise ConfigInvalid([Problem(str(config_dir), "(directory)", "config directory does not exist")])
    if not gateway_path.is_file():
        raise ConfigInvalid([Problem(str(gateway_path), "(file)", "missing: every gateway needs gateway.toml")])

    adapter_paths, problems = _adapter_files(config_dir)
    adapters: dict[str, AdapterFile] = {}
    adapter_names: dict[str, str] = {}
    serial_lines: dict[str, tuple[str, int, str]] = {}
    for path in adapter_paths or []:
        shown = str(path)
        adapter, name, found = _load_adapter(path, shown, serial_lines, strict)
        if name in adapter_names:
            problems.append(Problem(shown, "name", f"adapter name {name!r} is also used by {adapter_names[name]}"))
            problems += found
            continue
        problems += found
        # an invalid file still claims its name: subscriptions to it are not also reported as unknown
        adapter_names[name] = shown
        if adapter is not None:
            adapters[adapter.name] = AdapterFile(path, adapter)

    shown = str(gateway_path)
    raw, found = _read_toml(gateway_path, shown)
    problems += found
    gateway = None
    if raw is not None:
        gateway, found = _validate(GatewayConfig, raw, shown)
        problems += found
        parts = GatewayParts.of(gateway) if gateway is not None else GatewayParts.check(raw)
        known_adapters = set(adapter_names) if adapter_paths is not None else None
        problems += _gateway_cross_checks(parts, raw, known_adapters, config_dir, shown, strict)

    if problems or gateway is None:
        raise ConfigInvalid(sorted(dict.fromkeys(problems), key=lambda p: (p.file != shown, p.file)))
    return LoadedConfig(config_dir, _with_absolute_paths(gateway, config_dir), adapters)


def _with_absolute_paths(gateway: GatewayConfig, config_dir: Path) -> GatewayConfig:
    """The state and log dirs and the certificate files, relative to the config dir when relative."""
    section = gateway.gateway
    dirs = {key: config_path(value, config_dir) for key in ("state_dir", "log_dir") if (value := getattr(section, key))}
    update: dict[str, Any] = {"gateway": section.model_copy(update=dirs)}
    cloud = gateway.cloud
    if cloud is not None:
        files = {key: config_path(getattr(cloud, key), config_dir) for key in CLOUD_FILES}
        update["cloud"] = cloud.model_copy(update=files)
    return gateway.model_copy(update=update)
