"""Decides whether a new reading of a tag is worth publishing: always on a quality change (or a new
reason for a bad or uncertain one), on every poll if the tag asks for it, otherwise when the value
moved past the absolute or percent deadband.

It keeps only the last published reading per tag; it never publishes anything itself.
"""

from __future__ import annotations

import math

from adapters.base.tag import Point, Quality, TagValue


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def exceeds_deadband(point: Point, last: object, new: object) -> bool:
    """Whether `new` differs enough from the last published `last` (numbers: past the deadband; else: !=).

    The percent deadband is relative to the last published value (there is no configured range), so
    from zero any change counts; with both deadbands set, the value must pass both.
    """
    if not (_is_number(last) and _is_number(new)):
        return new != last
    if not (_finite(last) and _finite(new)):
        # NaN != NaN and inf - inf is NaN: without this an unchanged NaN would publish on every poll
        return not (last == new or (_nan(last) and _nan(new)))
    delta = abs(new - last)  # type: ignore[operator]
    if delta == 0:
        return False
    if point.deadband and delta <= point.deadband:
        return False
    return not (point.deadband_percent and delta <= abs(last) * point.deadband_percent / 100)  # type: ignore[arg-type]


class ChangeFilter:
    def __init__(self) -> None:
        self._last: dict[str, TagValue] = {}

    def admit(self, point: Point, reading: TagValue) -> bool:
        """True if `reading` should be published; it then becomes the reference for the next decision."""
        last = self._last.get(point.key)
        publish = (
            last is None
            or point.every_poll
            or last.quality != reading.quality
            or (reading.quality != Quality.GOOD and last.reason != reading.reason)
            or (reading.quality != Quality.BAD and exceeds_deadband(point, last.value, reading.value))
        )
        if publish:
            self._last[point.key] = reading
        return publish

    def last(self, point: Point) -> TagValue | None:
        return self._last.get(point.key)
