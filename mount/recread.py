"""Record bytes by range, from ArrayRecord files, with a non-blocking variant.

A record is a run of bytes in an uncompressed ArrayRecord file, interrupted every 64 KiB
by a 24-byte block header (see ``spacefs.engine.records``). ``read_range`` gathers a
range of it with one ``preadv``, steering headers into a scratch buffer. With
``nowait`` it passes ``RWF_NOWAIT``: the kernel answers only from the page cache and
fails instead of waiting for the disk, so the event loop can try it inline and fall
back to a worker thread only on a real cache miss. Descriptors come leased from the
engine's record pool (``spacefs.engine.recordpool``), which owns every open record file.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from spacefs.engine.records import read_record_range as read_range  # noqa: F401 (re-export)

INLINE_MAX = 1 << 20  # longest read tried on the event loop
DECODED_BUDGET = 128 << 20  # bytes of decoded compressed records kept, all datasets together
REMOTE_WHOLE_MAX = 8 << 20  # records of a bucket up to this size are fetched whole (no chunk cache)
AHEAD_WINDOW = 2 << 20  # read-ahead of a record file after nearby misses (``Ahead``)


class Ahead:
    """Read-ahead across records for readers walking forward through a record file.

    A training epoch over ``files/`` reads whole small records in path order, which is
    rarely the file's order: ImageFolder reads ``class_00/`` first, every tenth record
    when rows were written class by class in turn. The kernel's read-ahead sees random
    reads and fetches each record alone, so a cold epoch missed the page cache on about
    one record in four, and each miss cost a worker-thread hop and a disk wait. Here a
    whole-record read that missed (a blocking read in a worker thread) and lies at most
    ``window`` bytes past the previous miss in the same file asks the kernel to read the
    next ``window`` bytes (``POSIX_FADV_WILLNEED``, asynchronous): a reader moving
    forward, even by strides, then finds what follows in the page cache. A shuffled
    reader's misses are rarely that close together, so it reads only what it asks for.
    """

    def __init__(self, window: int = AHEAD_WINDOW, files: int = 256) -> None:
        self.window = window
        self.files = files
        self.hints = 0  # how many read-aheads were asked for, for tests and debugging
        self._last: OrderedDict[Hashable, int] = OrderedDict()  # file -> end of its latest miss
        self._lock = threading.Lock()

    def missed(self, key: Hashable, fd: int, pos: int, end: int) -> None:
        """A blocking read of file positions ``[pos, end)`` of file ``key`` (open as ``fd``)."""
        with self._lock:
            prev = self._last.pop(key, None)
            self._last[key] = end
            while len(self._last) > self.files:
                self._last.popitem(last=False)
            if prev is None or not prev <= pos < prev + self.window:
                return
            self.hints += 1
        try:
            os.posix_fadvise(fd, end, self.window, os.POSIX_FADV_WILLNEED)
        except OSError:  # a hint only
            pass


class Decoded:
    """Records of compressed files, decoded whole and kept (least recently used out,
    within ``budget`` bytes); also records of a bucket fetched whole (``REMOTE_WHOLE_MAX``).

    A compressed ArrayRecord chunk can only be decoded whole, so serving a record in
    1 MiB pieces used to decode it once per piece: quadratic in its size. Record files
    never change, so a decoded record stays valid; a per-key lock makes concurrent
    readers of one record (the kernel's read-ahead, our prefetch) wait for one decode.
    """

    def __init__(self, budget: int = DECODED_BUDGET) -> None:
        self.budget = budget
        self.used = 0
        self.decodes = 0  # how many records were decoded, for tests and debugging
        self._kept: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._busy: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable) -> bytes | None:
        """The decoded record, if kept; never blocks on a decode."""
        with self._lock:
            data = self._kept.get(key)
            if data is not None:
                self._kept.move_to_end(key)
            return data

    def fetch(self, key: Hashable, decode: Callable[[], bytes]) -> bytes:
        """The decoded record, decoding it (once, however many ask at once) if not kept."""
        data = self.get(key)
        if data is not None:
            return data
        with self._lock:
            lock = self._busy.setdefault(key, threading.Lock())
        with lock:
            data = self.get(key)
            if data is not None:
                return data
            data = decode()
            with self._lock:
                self.decodes += 1
                self._busy.pop(key, None)
                if len(data) <= self.budget:
                    self._kept[key] = data
                    self.used += len(data)
                    while self.used > self.budget:
                        self.used -= len(self._kept.popitem(last=False)[1])
            return data


DECODED = Decoded()
AHEAD = Ahead()
