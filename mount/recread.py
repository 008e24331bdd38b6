"""Record bytes by range, from ArrayRecord files, with a non-blocking variant.

A record is a run of bytes in an uncompressed ArrayRecord file, interrupted every 64 KiB
by a 24-byte block header (see ``spacefs.engine.records``). ``read_range`` gathers a
range of it with one ``preadv``, steering headers into a scratch buffer. With
``nowait`` it passes ``RWF_NOWAIT``: the kernel answers only from the page cache and
fails instead of waiting for the disk, so the event loop can try it inline and fall
back to a worker thread only on a real cache miss. Descriptors come leased from the
engine's record pool (``spacefs.engine.recordpool``), which owns every open record file.

``Mapped`` answers a page-cached read without the ``preadv`` copy: the range as pieces of
read-only maps of the record file, which the patched pyfuse3 sends in one gather write.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from spacefs.engine.records import BLOCK, BLOCK_HEADER, record_position
from spacefs.engine.records import read_record_range as read_range  # noqa: F401 (re-export)

log = logging.getLogger(__name__)

INLINE_MAX = 1 << 20  # longest read tried on the event loop
DECODED_BUDGET = 128 << 20  # bytes of decoded compressed records kept, all datasets together
REMOTE_WHOLE_MAX = 8 << 20  # records of a bucket up to this size are fetched whole (no chunk cache)
AHEAD_WINDOW = 2 << 20  # read-ahead of a record file after nearby misses (``Ahead``)
MAP_WINDOW = 4 << 20  # record files are mapped in windows of this size (a multiple of BLOCK) ...
MAP_BUDGET = 64 << 20  # ... of which at most this many bytes at once (``Mapped``)
GATHER_MAX = 256  # most pieces in one gathered reply (pyfuse3.READ_GATHER_MAX)


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


class Mapped:
    """Windows of record files mapped read-only, to answer page-cached reads with one copy.

    A read served by ``preadv`` copies the bytes twice: page cache -> our buffer -> the
    kernel's reply pages. Answered as pieces of a map of the record file (the bytes
    between block headers) and sent with one gather write, they are copied once, straight
    from the page cache. Reading 1.5 GiB through the mount cost the daemon 19% less CPU
    (perf: 562 vs 695 ms); in a C libfuse daemon the same change made a 256 MiB read
    take 0.7x the time (splicing from the file into a pipe instead took 2x).

    The event loop must never wait for the disk, so a read is answered here only when
    ``cachestat`` says all its pages are in the page cache; otherwise the caller falls
    back to ``preadv`` (and to a worker thread on a miss). Windows are ``window`` bytes,
    aligned, so a block (and so a piece) never straddles two; at most ``budget`` bytes of
    windows are mapped at once (least recently used out), which also bounds what the
    maps add to the daemon's RSS. An evicted window is unmapped when the last piece
    handed out of it is released (a reply holds pieces only while it is written). Maps
    are keyed by the file's identity (device, inode): record files never change once
    written, and are only ever deleted whole (a deleted file's map stays readable). Like
    an open descriptor, a map keeps a deleted file's blocks allocated: the daemon drops
    windows unread for a while (``drop_idle``), as the record pool closes idle files.
    """

    def __init__(self, window: int = MAP_WINDOW, budget: int = MAP_BUDGET) -> None:
        if window % BLOCK or window % mmap.ALLOCATIONGRANULARITY:
            raise ValueError(f"map window {window} is not a multiple of the {BLOCK}-byte block")
        self.window = window
        self.budget = budget
        self.used = 0
        self.maps = 0  # how many windows were mapped, for tests and debugging
        self._kept: OrderedDict[tuple[Hashable, int], memoryview] = OrderedDict()
        self._read_at: dict[tuple[Hashable, int], float] = {}  # monotonic time of the latest use
        self._lock = threading.Lock()

    def pieces(self, fd: int, ident: Hashable, file_size: int, record_offset: int, start: int,
               length: int) -> list[memoryview] | None:
        """Bytes ``[start, start+length)`` of the record at physical ``record_offset`` as
        pieces of mapped windows, or None when not all in the page cache (or too many
        pieces for one reply, or no ``cachestat`` to tell)."""
        if length <= 0:
            return []
        pos = record_position(record_offset, start)
        if not _cached(fd, pos, record_position(record_offset, start + length - 1) + 1):
            return None
        out: list[memoryview] = []
        with self._lock:
            k, view = -1, None
            while length > 0:
                take = min(length, BLOCK - pos % BLOCK)
                if pos // self.window != k:
                    k = pos // self.window
                    view = self._window(fd, ident, file_size, k)
                    if view is None:
                        return None
                rel = pos - k * self.window
                out.append(view[rel : rel + take])
                if len(out) > GATHER_MAX:
                    return None
                length -= take
                pos += take + BLOCK_HEADER
        return out

    def _window(self, fd: int, ident: Hashable, file_size: int, k: int) -> memoryview | None:
        key = (ident, k)
        self._read_at[key] = time.monotonic()
        view = self._kept.get(key)
        if view is not None:
            self._kept.move_to_end(key)
            return view
        size = min(self.window, file_size - k * self.window)
        try:
            view = memoryview(mmap.mmap(fd, size, prot=mmap.PROT_READ, offset=k * self.window))
        except OSError as e:  # a file system that cannot map files: read them
            log.debug("cannot map a record file (%s): reading it instead", e)
            self._read_at.pop(key)
            return None
        self._kept[key] = view
        self.maps += 1
        self.used += size
        while self.used > self.budget and len(self._kept) > 1:
            self._drop(next(iter(self._kept)))
        return view

    def _drop(self, key: tuple[Hashable, int]) -> None:
        self.used -= len(self._kept.pop(key))  # unmapped once no reply holds a piece of it
        self._read_at.pop(key, None)

    def drop_idle(self, idle: float) -> int:
        """Unmap the windows unread for ``idle`` seconds; returns how many."""
        now = time.monotonic()
        with self._lock:
            stale = [k for k in self._kept if now - self._read_at.get(k, 0.0) >= idle]
            for k in stale:
                self._drop(k)
        return len(stale)


class _CacheStat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


_CACHESTAT = 451  # cachestat(2), Linux 6.5+: the same number on every architecture
_syscall = ctypes.CDLL(None, use_errno=True).syscall
_syscall.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint)
_syscall.restype = ctypes.c_long
_range, _stat = _Range(), _CacheStat()
_range_p, _stat_p = ctypes.addressof(_range), ctypes.addressof(_stat)
_cached_lock = threading.Lock()
_has_cachestat = True


def _cached(fd: int, pos: int, end: int) -> bool:
    """Whether file positions ``[pos, end)`` (not empty) are all in the page cache: one
    ``cachestat`` (2.7 us per MiB here; ``mincore`` on a map took 18). False when the
    kernel lacks it."""
    global _has_cachestat
    if not _has_cachestat:
        return False
    with _cached_lock:
        _range.off, _range.len = pos, end - pos
        if _syscall(_CACHESTAT, fd, _range_p, _stat_p, 0) != 0:
            if ctypes.get_errno() == errno.ENOSYS:
                _has_cachestat = False
            return False
        return _stat.cache == (end - 1) // mmap.PAGESIZE - pos // mmap.PAGESIZE + 1


DECODED = Decoded()
AHEAD = Ahead()
MAPPED = Mapped()
