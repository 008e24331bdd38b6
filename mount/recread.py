"""Record bytes by range, from ArrayRecord files, with a non-blocking variant.

A record is a run of bytes in an uncompressed ArrayRecord file, interrupted every 64 KiB
by a 24-byte block header (see ``spacefs.engine.records``). ``read_range`` (the engine's
``read_record_range``) gathers a range of it with one ``preadv``, steering headers into a scratch buffer. With
``nowait`` it passes ``RWF_NOWAIT``: the kernel answers only from the page cache and
fails instead of waiting for the disk, so the event loop can try it inline and fall
back to a worker thread only on a real cache miss.
"""

from __future__ import annotations

import os
import threading

from spacefs.engine.records import read_record_range as read_range  # noqa: F401 (re-export)

INLINE_MAX = 1 << 20  # longest read tried on the event loop


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
