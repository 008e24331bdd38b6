"""One least-recently-used cache bounded by the bytes its entries hold, not by their count.

The mount keeps two kinds of entries in it (``pieces``): *pieces*, the work done once per
immutable index file, and *views*, a snapshot's cheap combination of its pieces. A view
holds its pieces, so it pins them: a pinned piece is never evicted (its memory could not
be freed while the view lives) and is unpinned when the last view holding it goes.
Every byte the cache keeps alive is therefore counted once, in ``nbytes``, and
``nbytes <= bound`` holds after every ``put``, but for one case: the entry just put (with
what it pins) is never evicted by its own ``put``, so a view larger than the whole bound
stays until the next one comes (else every request for it would build it again).

Builds are serialised per key (striped locks of the cache's own, never taken while the
cache lock is held), so a piece shared by many snapshots is built once however many
threads ask for it at the same time.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

LOCK_STRIPES = 64


def bound_from_env(default_mib: float = 256) -> int:
    """The cache bound in bytes: ``SPACEFS_VIEW_CACHE_MIB`` (MiB, may be fractional)."""
    raw = os.environ.get("SPACEFS_VIEW_CACHE_MIB", "")
    try:
        mib = float(raw) if raw else default_mib
    except ValueError:
        raise ValueError(f"SPACEFS_VIEW_CACHE_MIB must be a number of MiB, got {raw!r}") from None
    if mib <= 0:
        raise ValueError(f"SPACEFS_VIEW_CACHE_MIB must be positive, got {raw!r}")
    return int(mib * 2**20)


@dataclass(slots=True)
class _Entry:
    value: Any
    nbytes: int
    deps: tuple[Hashable, ...] = ()  # keys this entry pins
    pins: int = 0  # entries that pin this one


class MemLRU:
    """Entries by key, the least recently used evicted first once ``nbytes`` passes ``bound``."""

    def __init__(self, bound: int):
        self.bound = bound
        self.nbytes = 0
        self.peak = 0  # the most bytes ever held after a put (for tests and diagnostics)
        self._d: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._build_locks = [threading.Lock() for _ in range(LOCK_STRIPES)]

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: Hashable) -> Any | None:
        """The value under ``key`` (now the most recently used), or None."""
        with self._lock:
            e = self._d.get(key)
            if e is None:
                return None
            self._d.move_to_end(key)
            return e.value

    def get_or_build(self, key: Hashable, build: Callable[[], tuple[Any, int]]) -> Any:
        """The value under ``key``, built by ``build() -> (value, nbytes)`` if missing
        (once, whatever the number of threads asking)."""
        v = self.get(key)
        if v is not None:
            return v
        with self._build_locks[hash(key) % LOCK_STRIPES]:
            v = self.get(key)
            if v is None:
                v, nbytes = build()
                self.put(key, v, nbytes)
        return v

    def put(self, key: Hashable, value: Any, nbytes: int,
            deps: Sequence[tuple[Hashable, Any, int]] = ()) -> None:
        """Keep ``value`` (``nbytes`` of its own) under ``key``, replacing what was there.
        ``deps`` are the ``(key, value, nbytes)`` entries it holds: kept (again, if they
        were evicted meanwhile) and pinned while it stays."""
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
                self._unpin(old)
            for dkey, dval, dbytes in deps:
                d = self._d.get(dkey)
                if d is None:
                    d = self._d[dkey] = _Entry(dval, dbytes)
                    self.nbytes += dbytes
                d.pins += 1
            self._d[key] = _Entry(value, nbytes, tuple(k for k, _, _ in deps), old.pins if old else 0)
            self.nbytes += nbytes
            self._evict(key)
            self.peak = max(self.peak, self.nbytes)

    def _unpin(self, e: _Entry) -> None:
        for k in e.deps:
            d = self._d.get(k)
            if d is not None:
                d.pins -= 1

    def _evict(self, keep: Hashable) -> None:
        # Oldest first; a pinned entry is moved to the newest end (whatever pins it is
        # itself unpinned, so the walk reaches it and frees it).
        skipped = 0
        while self.nbytes > self.bound and self._d and skipped <= len(self._d):
            key, e = next(iter(self._d.items()))
            if e.pins or key == keep:
                self._d.move_to_end(key)
                skipped += 1
                continue
            del self._d[key]
            self.nbytes -= e.nbytes
            self._unpin(e)
            skipped = 0

    def drop(self, pred: Callable[[Hashable], bool]) -> None:
        """Forget every entry whose key matches ``pred`` (those pinning others first)."""
        with self._lock:
            for pinners in (True, False):
                for key in [k for k, e in self._d.items() if pred(k) and bool(e.deps) == pinners and not e.pins]:
                    e = self._d.pop(key)
                    self.nbytes -= e.nbytes
                    self._unpin(e)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._d), "bytes": self.nbytes, "bound": self.bound, "peak": self.peak}
