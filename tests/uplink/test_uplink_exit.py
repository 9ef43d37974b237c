"""What the uplink's exit status tells supervisord after a storage failure (supervisor_config.py gives the
uplink exitcodes=0,3): a damaged file stops it for good, untouched, for the operator; anything else (a
write lock held past its 10 s wait, a disk still full after the spool freed what it could) restarts it,
and the broker redelivers what had not been stored."""

from __future__ import annotations

import logging

import pytest

from gateway.uplink.__main__ import EXIT_RETRY, EXIT_STORAGE, storage_failure_status
from storage.spool import SpoolCorrupt, SpoolUnwritable


def test_a_damaged_spool_stops_the_uplink_and_any_other_storage_failure_restarts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        assert storage_failure_status(SpoolCorrupt("spool /s/spool.db is damaged")) == EXIT_STORAGE
        assert storage_failure_status(SpoolUnwritable("spool /s/spool.db: database is locked")) == EXIT_RETRY
    assert "event=spool-unusable spool /s/spool.db is damaged" in caplog.text
    assert "event=spool-write-failed spool /s/spool.db: database is locked; the uplink restarts" in caplog.text
    assert EXIT_RETRY != 0 and EXIT_STORAGE == 3
