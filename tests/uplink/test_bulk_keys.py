"""Bulk object keys: every placeholder the config accepts in `[bulk] prefix` is filled at upload
(a placeholder the config let through but the uploader did not know raised KeyError at the first
upload), and the rest of the key names the thing, the time and the batch."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gateway.config import BULK_PREFIX_PLACEHOLDERS
from gateway.uplink.bulk_upload import object_key, prefix_values
from storage.bulk import Batch


def test_every_accepted_placeholder_is_filled_in_the_key() -> None:
    assert set(prefix_values("gw", datetime.now(UTC))) == set(BULK_PREFIX_PLACEHOLDERS)
    prefix = "/".join(f"{{{name}}}" for name in BULK_PREFIX_PLACEHOLDERS) + "/"
    first = datetime(2024, 3, 7, 5, 9, 11, tzinfo=UTC).timestamp()
    key = object_key(prefix, "plant-a-gw1", Batch(12, Path("unused"), first, first + 60, 10, 100))
    assert key == "plant-a-gw1/2024/03/07/05/2024-03-07/plant-a-gw1-20240307T050911Z-00000012.jsonl.gz"
