"""Which snapshots expiry removed: a few id ranges kept in the log's settings.

``settings["expired"]`` is a sorted list of inclusive ``[first, last]`` ranges. It rides
in every log entry (settings are carried forward by every commit), so a reader learns
from the head it already read whether a snapshot id is gone: no extra file, no listing.
Ranges keep it short: expiry removes runs of old snapshots, not scattered ids.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

KEY = "expired"


class ExpiredSet:
    """Membership test over the expired ranges of one log entry."""

    def __init__(self, ranges: Iterable[Iterable[int]] = ()):
        self.ranges = [(int(a), int(b)) for a, b in ranges]
        self._starts = [a for a, _ in self.ranges]

    @classmethod
    def of(cls, settings: dict[str, Any] | None) -> ExpiredSet:
        return cls((settings or {}).get(KEY) or ())

    def __contains__(self, sid: object) -> bool:
        if not isinstance(sid, int) or not self.ranges:
            return False
        i = bisect.bisect_right(self._starts, sid) - 1
        return i >= 0 and self.ranges[i][0] <= sid <= self.ranges[i][1]

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def count(self) -> int:
        return sum(b - a + 1 for a, b in self.ranges)

    def union(self, ids: Iterable[int]) -> list[list[int]]:
        """The ranges after adding ``ids``, merged, as stored in settings."""
        pts = sorted(set(ids))
        merged: list[list[int]] = []
        for a, b in sorted(self.ranges + [(p, p) for p in pts]):
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        return merged


def expired(head: Any) -> ExpiredSet:
    """The expired snapshot ids of a log entry (``Entry``)."""
    return ExpiredSet.of(head.settings)
