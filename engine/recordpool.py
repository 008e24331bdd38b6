"""The one owner of open record files: descriptors, memory maps and ArrayRecord readers.

Every read of an ArrayRecord file in the process (engine reads, diffs, views and their
Ray tasks, random access, the FUSE mount) borrows its handle from ``POOL``. Why one pool:

- **Bounded.** The pool never holds more descriptors than ``POOL.cap``, derived from the
  soft ``RLIMIT_NOFILE`` (raised towards the hard limit where allowed): a fraction of it,
  so sockets, Parquet reads and the caller's own files keep their room. A long-lived
  process (the mount, a training job) reaches a plateau instead of EMFILE.
- **Leased.** A reader holds a lease on a handle while it reads; eviction takes a handle
  out of the LRU at once but closes its descriptor only when the last lease is returned,
  so no thread ever ``pread``s a descriptor that another thread closed (or, worse, that
  the kernel already reused for another file).
- **Owned.** Objects that read (``Storage``, ``RandomAccessDataSource``, the mount's
  datasets) ``attach`` to their dataset directory; when the last one detaches (by
  ``close()`` or garbage collection), the idle handles of that directory are closed.
- **Fork-safe.** A child process drops every inherited handle (closing its copies of the
  descriptors and maps) before it runs any code, so no worker reads through state it
  shares with its parent.

A mapping costs one descriptor of the budget (CPython's ``mmap`` keeps a ``dup`` of the
file's descriptor), an ArrayRecord reader (compressed files only) one as well.
"""

from __future__ import annotations

import errno
import mmap
import os
import resource
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from array_record.python.array_record_module import ArrayRecordReader

# Wanted soft limit: enough for a wide catalog, far below the hard limits of most systems.
WANT_NOFILE = 8192
# Part of the soft limit the pool may use, and what it always leaves to everything else.
SHARE = 0.5
MARGIN = 64
MIN_CAP, MAX_CAP = 8, 4096


def derive_cap(raise_soft: bool = True) -> int:
    """The pool's descriptor budget from ``RLIMIT_NOFILE``: half the soft limit minus a
    margin, within [MIN_CAP, MAX_CAP]. With ``raise_soft``, the soft limit is first raised
    towards ``WANT_NOFILE`` (never above the hard limit) as s3ql and most servers do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if raise_soft and soft != resource.RLIM_INFINITY and soft < WANT_NOFILE:
        target = WANT_NOFILE if hard == resource.RLIM_INFINITY else min(hard, WANT_NOFILE)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    if soft == resource.RLIM_INFINITY:
        return MAX_CAP
    return max(MIN_CAP, min(MAX_CAP, int(soft * SHARE) - MARGIN))


class RecordHandle:
    """An open record file. Use it only while holding a lease (``RecordPool.lease``)."""

    __slots__ = ("key", "path", "root", "fd", "size", "ident", "_map", "_reader", "leases", "evicted", "used")

    def __init__(self, root: str, rel: str):
        self.key = (root, rel)
        self.path = os.path.join(root, rel)
        self.root = root
        self.fd = -1
        self.size = 0
        self.ident: tuple[int, int] = (0, 0)
        self._map: mmap.mmap | None = None
        self._reader: ArrayRecordReader | None = None
        self.leases = 0
        self.evicted = False
        self.used = 0.0  # monotonic time of the last lease's end

    @property
    def cost(self) -> int:
        return (self.fd >= 0) + (self._map is not None) + (self._reader is not None)

    def read_range(self, start: int, length: int) -> bytes:
        """``length`` bytes at ``start``: the same call as a bucket's ``RangeReader``."""
        return os.pread(self.fd, length, start)

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return [os.pread(self.fd, length, start) for start, length in ranges]

    def _close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class RecordPool:
    """Process-wide, bounded, leased handles of record files, keyed by (dataset root,
    relative path): the root is absolute (``Storage.location``).

    Record files are immutable and named by a fresh UUID, so a path names one file for
    the life of a dataset; a dataset removed and re-created at the same place is covered
    by ``evict_root`` (called when its last owner detaches) and by the (device, inode)
    identity each handle keeps (``RecordHandle.ident``).
    """

    def __init__(self, cap: int | None = None):
        self._cap = cap
        self._handles: OrderedDict[tuple[str, str], RecordHandle] = OrderedDict()
        self._cost = 0  # descriptors held by handles in ``_handles``
        self._doomed = 0  # descriptors held by evicted handles still leased
        self._owners: dict[str, int] = {}
        self._lock = threading.Lock()
        # Detaches not applied yet (see ``detach``): appended without the lock.
        self._detached: deque[str] = deque()
        # The lock as every method takes it: queued detaches applied before release.
        self._locked = _Locked(self)

    @property
    def cap(self) -> int:
        if self._cap is None:
            self._cap = derive_cap()
        return self._cap

    @cap.setter
    def cap(self, value: int) -> None:
        with self._locked:
            self._cap = max(1, int(value))
            self._trim(())

    # -- owners ----------------------------------------------------------------
    def attach(self, root: str) -> str:
        """Note one more owner reading the dataset at ``root``; returns the key to detach."""
        root = os.path.abspath(root)
        with self._locked:
            self._owners[root] = self._owners.get(root, 0) + 1
        return root

    def detach(self, root: str) -> None:
        """One owner of ``root`` is done; the last one closes the directory's idle handles.

        Never waits for the pool's lock: owners detach from ``weakref.finalize``, which
        the garbage collector may run inside any allocation, including one made while
        this very thread holds the lock (a lease opening a file): waiting there is a
        deadlock (seen once in CI). So the detach is queued, and applied now if the lock
        is free, else by whoever holds it, before it lets go (``_locked``).
        """
        self._detached.append(root)
        self._drain_if_free()

    def _apply_detaches(self) -> None:
        """Apply queued detaches; the lock is held."""
        while self._detached:
            root = self._detached.popleft()
            n = self._owners.get(root, 0) - 1
            if n > 0:
                self._owners[root] = n
                continue
            self._owners.pop(root, None)
            self._evict_where(lambda h, r=root: h.root == r)

    def _drain_if_free(self) -> None:
        # Looped: a detach queued just after a holder's last look is applied by its own
        # caller, which then finds the lock free.
        while self._detached and self._lock.acquire(blocking=False):
            try:
                self._apply_detaches()
            finally:
                self._lock.release()

    def evict_root(self, root: str) -> None:
        """Close the handles of files under ``root`` now (leased ones when returned)."""
        root = os.path.abspath(root)
        with self._locked:
            self._evict_where(lambda h: h.root == root)

    # -- leases ----------------------------------------------------------------
    def lease(self, root: str, rel: str) -> RecordHandle:
        """The open handle of ``root/rel``, leased: call ``release`` when done with it."""
        h = self.try_lease(root, rel)  # the common case: open already, one dict look-up
        return h if h is not None else self.lease_many(root, (rel,))[0]

    def lease_many(self, root: str, rels: Sequence[str]) -> list[RecordHandle]:
        """Handles of all ``rels`` at once (the LRU never evicts one of them to make room
        for another: they are all leased before any eviction)."""
        out: list[RecordHandle] = []
        with self._locked:
            try:
                for rel in rels:
                    key = (root, rel)
                    h = self._handles.get(key)
                    if h is None:
                        h = RecordHandle(root, rel)
                        fd = self._open(h.path)
                        st = os.fstat(fd)
                        h.fd, h.size, h.ident = fd, st.st_size, (st.st_dev, st.st_ino)
                        self._handles[key] = h
                        self._cost += 1
                    else:
                        self._handles.move_to_end(key)
                    h.leases += 1
                    out.append(h)
            except BaseException:
                for h in out:
                    self._release(h)
                raise
            self._trim(out)
        return out

    def try_lease(self, root: str, rel: str) -> RecordHandle | None:
        """The handle of ``root/rel`` leased if it is open already, else None: no system
        call, so an event loop may ask."""
        with self._locked:
            h = self._handles.get((root, rel))
            if h is not None:
                self._handles.move_to_end(h.key)
                h.leases += 1
            return h

    def release(self, handles: RecordHandle | Sequence[RecordHandle]) -> None:
        with self._locked:
            if isinstance(handles, RecordHandle):
                self._release(handles)
                return
            for h in handles:
                self._release(h)

    @contextmanager
    def leased(self, root: str, rels: Sequence[str]) -> Iterator[list[RecordHandle]]:
        hs = self.lease_many(root, rels)
        try:
            yield hs
        finally:
            self.release(hs)

    def mapping(self, h: RecordHandle) -> mmap.mmap | None:
        """A read-only map of a leased handle's file (None when empty); cached with it."""
        if h._map is None and h.size:
            with self._locked:
                if h._map is None and not h.evicted:
                    h._map = mmap.mmap(h.fd, h.size, prot=mmap.PROT_READ)
                    self._cost += 1
                    self._trim((h,))
                elif h._map is None:  # evicted meanwhile: map for this lease's owner only
                    h._map = mmap.mmap(h.fd, h.size, prot=mmap.PROT_READ)
                    self._doomed += 1
        return h._map

    def reader(self, h: RecordHandle) -> ArrayRecordReader:
        """An ArrayRecord reader of a leased handle's file (compressed files)."""
        if h._reader is None:
            with self._locked:
                if h._reader is None:
                    h._reader = ArrayRecordReader(h.path, "readahead_buffer_size:0")
                    if h.evicted:
                        self._doomed += 1
                    else:
                        self._cost += 1
                        self._trim((h,))
        return h._reader

    def close_idle(self, older_than: float) -> int:
        """Close the handles no one leased for ``older_than`` seconds; returns how many.
        A long-running server calls this now and then, so the files of versions nobody
        reads any more do not stay open until the budget pushes them out."""
        cutoff = time.monotonic() - older_than
        with self._locked:
            idle = [h for h in self._handles.values() if h.leases == 0 and h.used < cutoff]
            for h in idle:
                self._evict(h)
        return len(idle)

    # -- state -----------------------------------------------------------------
    def open_count(self) -> int:
        """Descriptors the pool holds now (in the LRU plus evicted but still leased)."""
        with self._locked:
            return self._cost + self._doomed

    def __len__(self) -> int:
        return len(self._handles)

    def close(self) -> None:
        """Close every handle (leased ones when their lease ends). The pool stays usable."""
        with self._locked:
            self._evict_where(lambda h: True)

    # -- internals (lock held) ----------------------------------------------------
    def _open(self, path: str) -> int:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                raise
        # Out of descriptors (the rest of the process used more than its share): give
        # back the idle half of the pool and try once more.
        idle = [h for h in self._handles.values() if h.leases == 0]
        for h in idle[: max(1, len(idle) // 2)]:
            self._evict(h)
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def _release(self, h: RecordHandle) -> None:
        h.leases -= 1
        h.used = time.monotonic()
        if h.leases == 0 and h.evicted:
            self._doomed -= h.cost
            h._close()

    def _evict(self, h: RecordHandle) -> None:
        del self._handles[h.key]
        self._cost -= h.cost
        h.evicted = True
        if h.leases == 0:
            h._close()
        else:
            self._doomed += h.cost

    def _evict_where(self, pred) -> None:
        for h in [h for h in self._handles.values() if pred(h)]:
            self._evict(h)

    def _trim(self, keep: Sequence[RecordHandle]) -> None:
        """Evict least recently used handles until the budget holds. Handles in ``keep``
        (just leased together) stay; the budget may be exceeded by them alone."""
        if self._cost <= self.cap:
            return
        pinned = {id(h) for h in keep}
        for h in list(self._handles.values()):
            if self._cost <= self._cap:
                break
            if id(h) not in pinned:
                self._evict(h)

    def _after_fork(self) -> None:
        """In a child: forget every inherited handle (its descriptors and maps are the
        child's copies; closing them leaves the parent's alone). Readers are dropped
        unclosed: their threads did not survive the fork."""
        self._lock = threading.Lock()
        self._detached.clear()
        for h in self._handles.values():
            if h._reader is not None:
                _ABANDONED.append(h._reader)  # never destroyed: its destructor could block
            h._reader = None
            h.evicted = True
            if h._map is not None:
                h._map.close()
                h._map = None
            if h.fd >= 0:
                os.close(h.fd)
                h.fd = -1
        self._handles.clear()
        self._owners.clear()
        self._cost = self._doomed = 0


class _Locked:
    """``RecordPool._locked``: the pool's lock, applying queued detaches before it is
    released. A class, not a generator (the lease of an open file is on
    every FUSE read: 0.8 us with the bare lock, 3 us through ``contextlib``)."""

    __slots__ = ("pool",)

    def __init__(self, pool: RecordPool):
        self.pool = pool

    def __enter__(self) -> None:
        self.pool._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        pool = self.pool
        try:
            if pool._detached:
                pool._apply_detaches()
        finally:
            pool._lock.release()
        if pool._detached:
            pool._drain_if_free()


_ABANDONED: list[ArrayRecordReader] = []
POOL = RecordPool()
os.register_at_fork(after_in_child=POOL._after_fork)


def iter_file_records(path: str) -> Iterator[bytes]:
    """All records of an ArrayRecord file, in order (for ingesting foreign files). The
    file is opened outside the pool (read once, start to end) and closed when the
    iteration ends or is abandoned."""
    reader = ArrayRecordReader(path)
    try:
        n = reader.num_records()
        step = 1024
        for start in range(0, n, step):
            yield from reader.read(start, min(n, start + step))
    finally:
        reader.close()
