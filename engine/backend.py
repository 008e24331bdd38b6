"""Where a dataset's bytes live: the seam between the engine and a storage system.

Every piece of metadata I/O goes through a ``Backend``: reading a file whole, creating
one only if it does not exist (the commit point of the log), overwriting a hint, listing,
and checking existence; record files are read by range. ``LocalBackend`` serves a local
(or network-mounted POSIX) directory. An object store needs no change of the engine's
logic, only another backend:

- ``put_if_absent``  -> a conditional PUT (``If-None-Match: *``): the store refuses the
  second writer of a log entry exactly as ``link(2)`` does here;
- ``read_bytes`` / ``exists`` / ``list`` -> GET / HEAD / LIST;
- ``read_range`` -> a ranged GET; ``local_path`` returns None, which tells record readers
  to read by range instead of through the process's pool of open files
  (``recordpool.POOL``, local files only) and index readers to open the file through a
  ``pyarrow.fs`` filesystem (``arrow_filesystem``).

Paths passed to a backend are dataset-relative (``format.py`` names them).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, runtime_checkable

from .errors import UserInputError
from .recordpool import POOL, RecordHandle


@runtime_checkable
class Backend(Protocol):
    """The operations the engine needs from a storage system, on dataset-relative paths."""

    root: str

    def read_bytes(self, rel: str) -> bytes:
        """The whole file; FileNotFoundError if it does not exist."""
        ...

    def put_if_absent(self, rel: str, data: bytes, *, sync: bool = False,
                      before_publish: Callable[[], None] | None = None) -> bool:
        """Create ``rel`` holding ``data`` atomically, only if it does not exist; False if
        it does (another writer won). ``before_publish`` runs once the bytes are staged,
        right before the atomic step (crash tests stop there)."""
        ...

    def put(self, rel: str, data: bytes) -> None:
        """Create or replace ``rel`` atomically (readers see the old or the new bytes)."""
        ...

    def copy_if_absent(self, src: str, dst: str) -> bool:
        """Make ``dst`` hold the bytes of ``src`` unless it exists (a snapshot's entry)."""
        ...

    def exists(self, rel: str) -> bool: ...

    def list(self, prefix: str) -> list[str]:
        """Names directly under the directory ``prefix`` (hidden ones included)."""
        ...

    def read_range(self, rel: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer at the end of the file)."""
        ...

    def local_path(self, rel: str) -> str | None:
        """A path the OS can open, or None when the bytes are not in a local file system."""
        ...

    def open_record(self, rel: str) -> AbstractContextManager[Any]:
        """A record file held open for a while (``with``): a leased pool handle here, a
        ranged-GET reader for an object store."""
        ...


class LocalBackend:
    """A dataset in a local directory. ``put_if_absent`` stages the bytes in a hidden
    temporary file and publishes them with ``link(2)``, which fails if the name exists:
    atomic on every POSIX file system, NFS included."""

    TMP_PREFIX = ".tmp-"  # staged files; vacuum removes abandoned ones

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def read_bytes(self, rel: str) -> bytes:
        with open(self._abs(rel), "rb") as f:
            return f.read()

    def _stage(self, rel: str, data: bytes, sync: bool) -> str:
        tmp = os.path.join(os.path.dirname(self._abs(rel)), f"{self.TMP_PREFIX}{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def put_if_absent(self, rel: str, data: bytes, *, sync: bool = False,
                      before_publish: Callable[[], None] | None = None) -> bool:
        tmp = self._stage(rel, data, sync)
        try:
            if before_publish is not None:
                before_publish()
            os.link(tmp, self._abs(rel))
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def put(self, rel: str, data: bytes) -> None:
        os.replace(self._stage(rel, data, False), self._abs(rel))

    def copy_if_absent(self, src: str, dst: str) -> bool:
        try:
            os.link(self._abs(src), self._abs(dst))  # a hard link: no bytes copied
        except FileExistsError:
            return False
        return True

    def exists(self, rel: str) -> bool:
        return os.path.exists(self._abs(rel))

    def list(self, prefix: str) -> list[str]:
        return os.listdir(self._abs(prefix))

    def read_range(self, rel: str, offset: int, length: int) -> bytes:
        fd = os.open(self._abs(rel), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def local_path(self, rel: str) -> str | None:
        return self._abs(rel)

    @contextmanager
    def open_record(self, rel: str) -> Iterator[RecordHandle]:
        """A leased handle of the record file from the process's pool (``recordpool``);
        ``records.RecordReader`` leases many at once from the same pool."""
        h = POOL.lease(self.root, rel)
        try:
            yield h
        finally:
            POOL.release(h)


def backend_for(location: str) -> Backend:
    """The backend serving ``location``: a directory today; URLs name future backends."""
    if "://" in str(location):
        scheme = str(location).split("://", 1)[0]
        raise UserInputError(f"{location}: no storage backend for {scheme}:// yet (only local directories)")
    return LocalBackend(str(location))
