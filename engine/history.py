"""The snapshot graph: parents (two for a merge), merge bases, ancestry.

A snapshot's ``parent`` is the head it was committed on; a merge snapshot also names
``merge_parent``, the source snapshot it brought in. Parents always have smaller ids
than their children (ids count commits), so walking in decreasing id order visits a
node only after every explored child: that makes the newest common ancestor the first
node both walks reach.
"""

from __future__ import annotations

import heapq

from .storage import Storage


def parents(storage: Storage, sid: int) -> list[int]:
    snap = storage.snapshot(sid)
    return [p for p in (snap.get("parent"), snap.get("merge_parent")) if p is not None]


def merge_base(storage: Storage, a: int, b: int) -> int | None:
    """The newest snapshot that is an ancestor of both (each is its own ancestor).

    Cost follows the history since the two diverged, not the whole log.
    """
    if a == b:
        return a
    seen: dict[int, int] = {a: 1, b: 2}
    heap = sorted([-a, -b])
    while heap:
        sid = -heapq.heappop(heap)
        flags = seen[sid]
        if flags == 3:
            return sid
        for p in parents(storage, sid):
            old = seen.get(p)
            seen[p] = (old or 0) | flags
            if old is None:
                heapq.heappush(heap, -p)
    return None


def is_ancestor(storage: Storage, a: int, b: int) -> bool:
    """True when ``a`` is ``b`` or one of its ancestors (through either parent)."""
    return a <= b and merge_base(storage, a, b) == a
