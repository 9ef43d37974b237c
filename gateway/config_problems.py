"""A config problem (`FILE: key.path: what is wrong`) and the duplicate finder every cross-file check
uses; shared by gateway/config_loader.py and gateway/adapter_checks.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message}"


def duplicates(names: Sequence[str]) -> list[tuple[int, int]]:
    """(index, index of first occurrence) for each repeated name."""
    first: dict[str, int] = {}
    found = []
    for index, name in enumerate(names):
        if name in first:
            found.append((index, first[name]))
        else:
            first.setdefault(name, index)
    return found


def duplicate_names(file: str, table: str, names: Sequence[str], noun: str = "") -> list[Problem]:
    """One problem per repeated name in `table` (`table[i].name: duplicate <noun> name ...`)."""
    what = f"duplicate {noun} name" if noun else "duplicate name"
    return [
        Problem(file, f"{table}[{index}].name", f"{what} {names[index]!r} (also {table}[{first}])")
        for index, first in duplicates(names)
    ]
