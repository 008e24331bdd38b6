"""Record bytes by range, from ArrayRecord files, with a non-blocking variant.

A record is a run of bytes in an uncompressed ArrayRecord file, interrupted every 64 KiB
by a 24-byte block header (see ``spacefs.engine.records``). ``read_range`` gathers a
range of it with one ``preadv``, steering headers into a scratch buffer. With
``nowait`` it passes ``RWF_NOWAIT``: the kernel answers only from the page cache and
fails instead of waiting for the disk, so the event loop can try it inline and fall
back to a worker thread only on a real cache miss.
"""

from __future__ import annotations

import os
import threading

from spacefs.engine.records import BLOCK_HEADER, _logical, _phys, gather_iovecs

INLINE_MAX = 1 << 20  # longest read tried on the event loop
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


def read_range(fd: int, record_offset: int, start: int, length: int, nowait: bool = False) -> bytearray | None:
    """Bytes ``[start, start+length)`` of the record at physical ``record_offset``;
    None when ``nowait`` and the bytes are not all in the page cache."""
    if length <= 0:
        return bytearray()
    if nowait and not _NOWAIT:
        return None
    pos = _phys(_logical(record_offset) + start)
    out = bytearray(length)
    iov, end = gather_iovecs(memoryview(out), pos, memoryview(bytearray(BLOCK_HEADER)))
    want = end - pos
    got = 0
    while got < want:
        rest = _skip(iov, got)
        try:
            n = os.preadv(fd, rest, pos + got, _NOWAIT if nowait else 0)
        except BlockingIOError:
            return None
        if n == 0:
            raise OSError(f"short read of a record: {got} of {want} bytes")
        if nowait and got + n < want:
            return None  # partly cached: let a worker thread read it whole
        got += n
    return out  # no copy: callers hand out memoryview slices of it


def _skip(iov: list, n: int) -> list:
    if n == 0:
        return iov
    out = []
    for b in iov:
        size = len(b)
        if n >= size:
            n -= size
            continue
        out.append(memoryview(b)[n:])
        n = 0
    return out


class RecordFiles:
    """Descriptors of one dataset's record files, opened in worker threads and used from
    the loop. They are never closed while the mount lives (a close could race a read on
    the loop); past ``max_open`` files, callers use their own short-lived reads."""

    def __init__(self, root: str, max_open: int = 2048):
        self.root = root
        self.max_open = max_open
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, rel: str) -> int | None:
        return self._fds.get(rel)

    def open(self, rel: str) -> int | None:
        fd = self._fds.get(rel)
        if fd is not None:
            return fd
        with self._lock:
            fd = self._fds.get(rel)
            if fd is None and len(self._fds) < self.max_open:
                fd = os.open(os.path.join(self.root, rel), os.O_RDONLY | os.O_CLOEXEC)
                self._fds[rel] = fd
            return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
