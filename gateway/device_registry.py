"""The record of every device certificate the group CA issued (thing, serial, validity, which CA,
revocation), kept as JSON beside the CA so `millgate device list|revoke` and the CRL agree.

It stores and looks up records; it signs nothing and never touches the broker.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path

from gateway.atomic_file import write_atomic


class RegistryCorrupt(RuntimeError):
    pass


@dataclass(frozen=True)
class DeviceCert:
    thing: str
    serial: int
    not_before: datetime
    not_after: datetime
    ca_serial: int
    revoked_at: datetime | None = None
    # signed from the device's own CSR: the device keeps its key, so only it can ask for a new one
    # (registries written before this was recorded read as generated keys)
    from_csr: bool = False
    # keys of a record this millgate does not know (a newer one wrote them; an OTA rollback runs this
    # one on its file): written back as they were, so a later upgrade finds them still there
    unknown: dict[str, object] = field(default_factory=dict, compare=False, repr=False)

    def state(self, ca_serial: int, now: datetime) -> str:
        """valid | revoked | expired | not-yet-valid | old-ca (issued by a CA rotated away)."""
        if self.ca_serial != ca_serial:
            return "old-ca"
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.not_after:
            return "expired"
        if now < self.not_before:
            return "not-yet-valid"
        return "valid"

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data = {**data.pop("unknown"), **data}
        for key in ("not_before", "not_after", "revoked_at"):
            data[key] = data[key].isoformat() if data[key] is not None else None
        data["serial"] = f"{self.serial:x}"
        data["ca_serial"] = f"{self.ca_serial:x}"
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> DeviceCert:
        revoked = data.get("revoked_at")
        return cls(
            thing=str(data["thing"]),
            serial=int(str(data["serial"]), 16),
            not_before=datetime.fromisoformat(str(data["not_before"])),
            not_after=datetime.fromisoformat(str(data["not_after"])),
            ca_serial=int(str(data["ca_serial"]), 16),
            revoked_at=datetime.fromisoformat(str(revoked)) if revoked else None,
            from_csr=data.get("from_csr") is True,
            unknown={key: value for key, value in data.items() if key not in _KNOWN_KEYS},
        )


_KNOWN_KEYS = frozenset(f.name for f in fields(DeviceCert))


def revoked_things(records: list[DeviceCert], ca_serial: int) -> frozenset[str]:
    """Things whose every certificate from the current CA is revoked: they lose their broker grants."""
    current = [r for r in records if r.ca_serial == ca_serial]
    return frozenset(
        thing
        for thing in {r.thing for r in current}
        if all(r.revoked_at is not None for r in current if r.thing == thing)
    )


def load_records(path: Path) -> list[DeviceCert]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise RegistryCorrupt(f"{path}: not valid JSON ({exc}); restore it from a backup") from exc
    try:
        return [DeviceCert.from_json(item) for item in data["devices"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise RegistryCorrupt(f"{path}: unexpected content ({exc!r}); restore it from a backup") from exc


def save_records(path: Path, records: list[DeviceCert], owner: tuple[int, int] | None) -> None:
    text = json.dumps({"devices": [r.as_json() for r in records]}, indent=1)
    write_atomic(path, text + "\n", 0o600, owner)


def revoke(records: list[DeviceCert], thing: str, ca_serial: int, now: datetime) -> tuple[list[DeviceCert], int]:
    """Every unrevoked certificate of `thing` from the current CA marked revoked; and how many."""
    count = 0
    updated = []
    for record in records:
        if record.thing == thing and record.ca_serial == ca_serial and record.revoked_at is None:
            record = replace(record, revoked_at=now)
            count += 1
        updated.append(record)
    return updated, count


def latest_unrevoked(records: list[DeviceCert]) -> list[DeviceCert]:
    """Each thing's most recent certificate (the registry appends), for the things whose most recent
    one is not revoked: the devices still enrolled, whatever CA issued them."""
    latest = {record.thing: record for record in records}
    return [record for record in latest.values() if record.revoked_at is None]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise changes to the registry (two operators enrolling devices at once)."""
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
