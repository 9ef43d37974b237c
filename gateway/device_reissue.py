"""Re-issuing the enrolled devices after a CA rotation (`millgate ca rotate --reissue-devices DIR`):
each thing whose latest certificate is not revoked gets a new key and certificate from the current CA
in DIR/<thing>/, laid out as `millgate device add THING --out DIR/<thing>` writes them.

A device that enrolled with its own CSR keeps its key, so it cannot be re-issued here: it is named
for the operator, who needs a new CSR from it. This module signs and writes; it prints nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway import device_registry
from gateway.ca import CaError, GroupCa, issue_device_cert, load_ca, record_device, write_device_files
from gateway.paths import GatewayPaths


@dataclass
class Reissued:
    issued: dict[str, list[Path]] = field(default_factory=dict)  # thing -> files written
    need_csr: list[str] = field(default_factory=list)  # things enrolled from a CSR
    failed: dict[str, str] = field(default_factory=dict)  # thing -> why


def prepare_out_dir(out: Path) -> None:
    """DIR exists and is writable, checked before a rotation makes every device certificate useless."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".millgate-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"{out}: cannot write the re-issued device files there: {exc.strerror}") from exc


def reissue_devices(paths: GatewayPaths, out: Path, days: int, owner: tuple[int, int] | None) -> Reissued:
    """New certificates from the current CA for every enrolled thing not already holding one."""
    ca: GroupCa = load_ca(paths)
    found = Reissued()
    for record in device_registry.latest_unrevoked(device_registry.load_records(paths.device_registry)):
        if record.ca_serial == ca.serial:
            continue  # already issued by this CA
        if record.from_csr:
            found.need_csr.append(record.thing)
            continue
        try:
            issued = issue_device_cert(ca, record.thing, days)
            found.issued[record.thing] = write_device_files(issued, ca, out / record.thing)
            record_device(paths, issued, ca, owner)
        except OSError as exc:
            found.failed[record.thing] = f"{out / record.thing}: {exc.strerror or exc}"
        except CaError as exc:
            found.failed[record.thing] = str(exc)
    return found
