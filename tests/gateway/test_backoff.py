"""The one retry delay every reconnect loop uses (gateway/backoff.py)."""

from __future__ import annotations

from gateway.backoff import Backoff


def test_delays_double_from_the_initial_up_to_the_cap_with_jitter() -> None:
    backoff = Backoff(initial_s=1, cap_s=8)
    ceilings = [1, 2, 4, 8, 8]
    for ceiling in ceilings:
        assert ceiling / 2 <= backoff.next_delay() <= ceiling
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 1


def test_a_link_down_for_days_keeps_getting_the_cap_instead_of_overflowing() -> None:
    # an attempt a minute for two weeks: 2**1024 overflowed a float at attempt 1024 (about 14 hours)
    backoff = Backoff(initial_s=1, cap_s=60)
    delays = [backoff.next_delay() for _ in range(20_000)]
    assert backoff.attempts == 20_000
    assert all(30 <= delay <= 60 for delay in delays[10:])
