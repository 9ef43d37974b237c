"""The device registry (devices.json) as another millgate version wrote it: keys of a record this
version does not know are written back as they were when it changes the file (an OTA rollback runs an
older millgate on a newer one's registry; the upgrade after it must find what the newer one recorded)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from gateway.device_registry import load_records, revoke, save_records


def test_keys_this_version_does_not_know_survive_a_revocation(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    record = {
        "thing": "press-01",
        "serial": "1a",
        "not_before": "2026-01-01T00:00:00+00:00",
        "not_after": "2027-01-01T00:00:00+00:00",
        "ca_serial": "2b",
        "revoked_at": None,
        "from_csr": True,
        "attested_by": "tpm",  # what a newer millgate might record
    }
    path.write_text(json.dumps({"devices": [record, {**record, "thing": "press-02", "serial": "1c"}]}))
    records, count = revoke(load_records(path), "press-02", 0x2B, datetime(2026, 6, 1, tzinfo=UTC))
    assert count == 1
    save_records(path, records, None)
    saved = json.loads(path.read_text())["devices"]
    assert [d["attested_by"] for d in saved] == ["tpm", "tpm"]
    assert saved[0] == record
    assert saved[1]["revoked_at"] == "2026-06-01T00:00:00+00:00" and saved[1]["from_csr"] is True
