"""Reads a config directory (gateway.toml + adapters/*.toml), validates it, and reports every problem
as `FILE: key.path: what is wrong`.

Field rules live in the models; this module adds what spans fields or files (names that must exist,
duplicates). It never starts anything.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway.adapter_config import ADAPTER_MODELS, AdapterConfig, ModbusAdapter
from gateway.config import RESERVED_IDENTITIES, GatewayConfig

GATEWAY_FILE = "gateway.toml"
ADAPTERS_DIR = "adapters"
REFUSED_VOLUME_ROOTS = ("/sys", "/proc", "/dev", "/var")


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message}"


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


def key_path(loc: Iterable[str | int]) -> str:
    """('functions', 0, 'timeout_s') -> 'functions[0].timeout_s'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing required key"
    message = str(error["msg"]).removeprefix("Value error, ")
    message = message[0].lower() + message[1:] if message else message
    value = error.get("input")
    if kind != "value_error" and not isinstance(value, (dict, list)):
        message += f" (got {value!r})"
    return message


def _validation_problems(file: str, exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[Problem]:
    return [Problem(file, key_path(prefix + tuple(e["loc"])), _describe(e)) for e in exc.errors()]


def _read_toml(path: Path, shown: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle), []
    except tomllib.TOMLDecodeError as exc:
        text = str(exc)
        where = re.search(r"\(at line (\d+), column (\d+)\)", text)
        message = re.sub(r"\s*\(at .*\)$", "", text)
        position = f"line {where.group(1)}, column {where.group(2)}" if where else "(syntax)"
        return None, [Problem(shown, position, f"TOML syntax error: {message}")]
    except UnicodeDecodeError as exc:
        return None, [Problem(shown, "(file)", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
    except OSError as exc:
        return None, [Problem(shown, "(file)", f"cannot read: {exc.strerror}")]


def _validate(model: type[BaseModel], raw: dict[str, Any], shown: str) -> tuple[Any, list[Problem]]:
    try:
        return model.model_validate(raw), []
    except ValidationError as exc:
        return None, _validation_problems(shown, exc)


def _load_adapter(path: Path, shown: str) -> tuple[AdapterConfig | None, list[Problem]]:
    raw, problems = _read_toml(path, shown)
    if raw is None:
        return None, problems
    raw.setdefault("name", path.stem)
    protocol = raw.get("protocol")
    if protocol is None:
        return None, [Problem(shown, "protocol", "missing required key (one of: modbus, opcua)")]
    model = ADAPTER_MODELS.get(protocol) if isinstance(protocol, str) else None
    if model is None:
        return None, [Problem(shown, "protocol", f"must be one of: modbus, opcua (got {protocol!r})")]
    return _validate(model, raw, shown)


def _duplicates(names: Sequence[str]) -> list[tuple[int, int]]:
    """(index, index of first occurrence) for each repeated name."""
    first: dict[str, int] = {}
    found = []
    for index, name in enumerate(names):
        if name in first:
            found.append((index, first[name]))
        else:
            first.setdefault(name, index)
    return found


def _gateway_cross_checks(
    cfg: GatewayConfig, adapters: dict[str, AdapterFile], config_dir: Path, shown: str
) -> list[Problem]:
    problems: list[Problem] = []

    def add(path: str, message: str) -> None:
        problems.append(Problem(shown, path, message))

    for table, items in (("functions", cfg.functions), ("resources", cfg.resources)):
        for index, first in _duplicates([item.name for item in items]):
            add(f"{table}[{index}].name", f"duplicate name {items[index].name!r} (also {table}[{first}])")

    resources = {r.name: r for r in cfg.resources}
    for index, resource in enumerate(cfg.resources):
        if resource.kind == "volume" and any(
            resource.path == root or resource.path.startswith(root + "/") for root in REFUSED_VOLUME_ROOTS
        ):
            add(f"resources[{index}].path", f"volumes under {', '.join(REFUSED_VOLUME_ROOTS)} are refused")
        if not resource.path.startswith("/"):
            add(f"resources[{index}].path", f"{resource.path!r} must be an absolute path")

    for index, function in enumerate(cfg.functions):
        code = Path(function.code)
        code = code if code.is_absolute() else config_dir / code
        if not code.exists():
            add(f"functions[{index}].code", f"{function.code!r} does not exist (looked at {code})")
        for grant_index, grant in enumerate(function.resources):
            if grant.name not in resources:
                add(
                    f"functions[{index}].resources[{grant_index}].name",
                    f"unknown resource {grant.name!r} (declare it in [[resources]])",
                )

    functions = {f.name for f in cfg.functions}
    known = {"function": functions, "adapter": set(adapters)}
    for index, sub in enumerate(cfg.subscriptions):
        for side in ("source", "target"):
            endpoint = getattr(sub, side)
            kind, _, name = endpoint.partition(":")
            if kind in known and name not in known[kind]:
                names = ", ".join(sorted(known[kind])) or "none configured"
                add(f"subscriptions[{index}].{side}", f"unknown {kind} {name!r} (known: {names})")
            if kind == "device" and name in RESERVED_IDENTITIES:
                add(f"subscriptions[{index}].{side}", f"{name!r} is reserved for a millgate component")
        if sub.source == sub.target:
            add(f"subscriptions[{index}]", f"source and target are both {sub.source!r}")
    for index, first in _duplicates([f"{s.source}|{s.target}|{s.topic}" for s in cfg.subscriptions]):
        add(f"subscriptions[{index}]", f"duplicate of subscriptions[{first}]")
    for index, first in _duplicates([f"{s.thing}|{s.name or ''}" for s in cfg.shadows]):
        add(f"shadows[{index}]", f"duplicate of shadows[{first}]")
    return problems


def _adapter_cross_checks(adapter: AdapterConfig, config_dir: Path, shown: str) -> list[Problem]:
    problems: list[Problem] = []
    if isinstance(adapter, ModbusAdapter):
        for index, first in _duplicates([d.name for d in adapter.devices]):
            problems.append(
                Problem(
                    shown,
                    f"devices[{index}].name",
                    f"duplicate device name {adapter.devices[index].name!r} (also devices[{first}])",
                )
            )
        for d_index, device in enumerate(adapter.devices):
            for index, first in _duplicates([t.name for t in device.tags]):
                problems.append(
                    Problem(
                        shown,
                        f"devices[{d_index}].tags[{index}].name",
                        f"duplicate tag name {device.tags[index].name!r} (also devices[{d_index}].tags[{first}])",
                    )
                )
            if (
                device.tags_csv
                and not (config_dir / ADAPTERS_DIR / device.tags_csv).exists()
                and not Path(device.tags_csv).is_absolute()
            ):
                problems.append(
                    Problem(
                        shown,
                        f"devices[{d_index}].tags_csv",
                        f"{device.tags_csv!r} does not exist next to the adapter file",
                    )
                )
    else:
        for index, first in _duplicates([n.name for n in adapter.nodes]):
            problems.append(
                Problem(
                    shown,
                    f"nodes[{index}].name",
                    f"duplicate node name {adapter.nodes[index].name!r} (also nodes[{first}])",
                )
            )
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
    for path in sorted((config_dir / ADAPTERS_DIR).glob("*.toml")):
        shown = str(path)
        adapter, found = _load_adapter(path, shown)
        problems += found
        if adapter is None:
            continue
        if adapter.name in adapter_names:
            problems.append(
                Problem(shown, "name", f"adapter name {adapter.name!r} is also used by {adapter_names[adapter.name]}")
            )
            continue
        adapter_names[adapter.name] = shown
        problems += _adapter_cross_checks(adapter, config_dir, shown)
        adapters[adapter.name] = AdapterFile(path, adapter)

    shown = str(gateway_path)
    raw, found = _read_toml(gateway_path, shown)
    problems += found
    gateway = None
    if raw is not None:
        gateway, found = _validate(GatewayConfig, raw, shown)
        problems += found
    if gateway is not None:
        problems += _gateway_cross_checks(gateway, adapters, config_dir, shown)

    if problems or gateway is None:
        raise ConfigInvalid(sorted(dict.fromkeys(problems), key=lambda p: (p.file != shown, p.file)))
    return LoadedConfig(config_dir, gateway, adapters)
