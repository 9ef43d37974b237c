"""The deployment history as another millgate version wrote it (gateway/deploy_store.py): an OTA rollback
puts an older millgate on a history file a newer one wrote, with keys it does not know; a file missing a
key it needs is a clear error naming the file, never a traceback of `millgate run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.deploy_store import DeploymentStore, DeployStoreError, HistoryEntry

ENTRY = {"number": 3, "version": "abc", "time": "2026-11-25T10:00:00Z", "source": "/etc/millgate", "by": "run"}


def test_keys_a_newer_millgate_added_are_left_out_and_the_rest_is_kept(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path, keep=3)
    store.root.mkdir(parents=True, exist_ok=True)
    store.history_file.write_text(json.dumps([{**ENTRY, "result": "succeeded", "health": {"core": "ok"}}]))
    assert store.history() == [HistoryEntry(**ENTRY, result="succeeded")]
    store.record(HistoryEntry(4, "def", "2026-11-25T11:00:00Z", "/etc/millgate", "deploy", "running"))
    assert [e.number for e in store.history()] == [3, 4]


def test_an_entry_missing_a_key_is_an_error_naming_the_file(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path, keep=3)
    store.root.mkdir(parents=True, exist_ok=True)
    store.history_file.write_text(json.dumps([ENTRY]))  # no "result"
    with pytest.raises(DeployStoreError, match=str(store.history_file)):
        store.history()
