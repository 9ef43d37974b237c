"""What every check of gateway.toml and the adapter files shares: a problem (`FILE: key.path: what is
wrong`), how a field error reads, config text decoding, arrays of tables taken entry by entry, duplicate
names, and reading a file the config names. Used by gateway/config_loader.py and gateway/adapter_*.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

DICT_KEY_MARKER = "[key]"  # pydantic's last location part for an error in a dict key, not in its value
BYTE_ORDER_MARK = "\ufeff"


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message}"


def describe_error(error: Any) -> str:
    """One pydantic error as a config problem reads: lower case, with the value it got."""
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


class NotUtf8(ValueError):
    """Config text that is not UTF-8: `where` is 'line L, column C' of the first bad byte."""

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")


def config_text(data: bytes) -> str:
    """A config file's bytes as text, without the byte-order mark Windows editors put first. Raises NotUtf8."""
    try:
        return data.decode("utf-8").removeprefix(BYTE_ORDER_MARK)
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        before = data[line_start : exc.start].decode("utf-8").removeprefix(BYTE_ORDER_MARK)
        hint = "it looks like UTF-16; " if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        byte = data[exc.start]
        raise NotUtf8(
            f"line {line}, column {len(before) + 1}",
            f"not UTF-8 text: {exc.reason} (byte 0x{byte:02x}); {hint}save the file as UTF-8",
        ) from None


def duplicates(names: Sequence[str | None]) -> list[tuple[int, int]]:
    """(index, index of first occurrence) for each repeated name; None (no name) repeats nothing."""
    first: dict[str, int] = {}
    found = []
    for index, name in enumerate(names):
        if name is None:
            continue
        if name in first:
            found.append((index, first[name]))
        else:
            first.setdefault(name, index)
    return found


def duplicate_names(file: str, table: str, names: Sequence[str | None], noun: str = "") -> list[Problem]:
    """One problem per repeated name in `table` (`table[i].name: duplicate <noun> name ...`)."""
    what = f"duplicate {noun} name" if noun else "duplicate name"
    return [
        Problem(file, f"{table}[{index}].name", f"{what} {names[index]!r} (also {table}[{first}])")
        for index, first in duplicates(names)
    ]


Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True)
class Entries(Generic[Model]):
    """An array of tables taken entry by entry, so that one bad entry does not hide the checks of the
    others: the entries that validated (by their index in the file) and every entry's `name` as written
    (None where it is not a string). `names` is None when the array itself is not an array of tables."""

    valid: dict[int, Model]
    names: list[str | None] | None

    @classmethod
    def of(cls, models: Sequence[Model]) -> Entries[Model]:
        return cls(dict(enumerate(models)), [getattr(m, "name", None) for m in models])

    @classmethod
    def check(cls, model: type[Model], raw: Any) -> Entries[Model]:
        """Validate each entry of `raw` alone (absent: none); the problems were reported with the whole file."""
        if raw is None:
            return cls({}, [])
        if not isinstance(raw, list):
            return cls({}, None)
        checked = {index: valid_or_none(model, entry) for index, entry in enumerate(raw)}
        valid = {index: entry for index, entry in checked.items() if entry is not None}
        names = [e.get("name") if isinstance(e, dict) and isinstance(e.get("name"), str) else None for e in raw]
        return cls(valid, names)

    @property
    def known(self) -> set[str] | None:
        """Every name the array gives, or None when some entry has none: then a reference to an unknown
        name may be a reference to that entry, and is not reported."""
        if self.names is None or None in self.names:
            return None
        return {name for name in self.names if name is not None}


def valid_or_none(model: type[Model], raw: Any) -> Model | None:
    try:
        return model.model_validate(raw)
    except ValidationError:
        return None
