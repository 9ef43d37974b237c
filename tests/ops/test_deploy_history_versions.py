"""The deployment history and a cloud job's record as another millgate version wrote them
(gateway/deploy_store.py, gateway/deploy_job.py): an OTA rollback puts an older millgate on files a newer
one wrote, with keys it does not know; a history missing a key it needs is a clear error naming the file,
never a traceback of `millgate run`."""

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


def test_a_job_record_a_newer_millgate_wrote_is_read_not_taken_for_absent(tmp_path: Path) -> None:
    # taken for absent, the core would start a second job for a request one is already running
    from gateway.deploy_job import Request, jobs_dir, read_job

    request = {"version": "1.2.0", "bucket": "fleet", "key": "pkg.deb", "sha256": "a" * 64, "region": "eu"}
    jobs_dir(tmp_path).mkdir(parents=True)
    record = {"kind": "package", "request": request, "spawned_at": 1.0, "pid": 42, "attempt": 2}
    (jobs_dir(tmp_path) / "package.json").write_text(json.dumps(record))
    found = read_job(tmp_path, "package")
    assert found is not None and found.pid == 42 and not found.done
    assert found.request == Request("1.2.0", "fleet", "pkg.deb", "a" * 64)
