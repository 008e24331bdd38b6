"""Where a dataset's bytes live: the seam between the engine and a storage system.

Every piece of metadata I/O goes through a ``Backend``: reading a file whole, creating
one only if it does not exist (the commit point of the log), overwriting a hint, listing,
and checking existence; record files are read by range. Paths passed to a backend are
dataset-relative and ``/``-separated, the strings the metadata stores (``format.py``
names them), so one layout works object for object on a directory or in a bucket.

Two backends implement the one protocol: ``LocalBackend`` (here) serves a local or
network-mounted POSIX directory; ``objstore.S3Backend`` serves ``s3://bucket/prefix``.
The engine's logic does not change between them:

- ``put_if_absent``  -> ``link(2)`` here, a conditional PUT (``If-None-Match: *``) on a
  bucket: either way the store refuses the second writer of a log entry;
- ``read_bytes`` / ``exists`` / ``list`` -> read / stat / listdir, or GET / HEAD / LIST;
- ``read_range`` / ``read_ranges`` -> ``pread`` or ranged GETs; ``local_path`` returns
  None on a bucket, which tells record readers to read by range instead of through the
  process's pool of open files (``recordpool.POOL``, local files only) and index readers
  to open the file through a ``pyarrow.fs`` filesystem;
- ``put_file``, ``list_paths``, ``delete``, ``stat``: what copying a dataset, finding a
  log head with one LIST, and caching chunks by etag need.

``backend_for`` picks the backend from a location.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .errors import UserInputError
from .recordpool import POOL, RecordHandle


@dataclass(frozen=True)
class ObjectInfo:
    """Size and version tag of a stored file (the tag identifies its bytes for caching)."""

    size: int
    etag: str


@runtime_checkable
class Backend(Protocol):
    """The operations the engine needs from a storage system, on dataset-relative paths.

    Missing files raise ``FileNotFoundError`` on every backend, so code written against a
    directory keeps its ``except FileNotFoundError``.
    """

    root: str  # the location: an absolute directory, or s3://bucket/prefix
    uri: str  # the same string; names the location in messages and cache keys

    def read_bytes(self, path: str) -> bytes:
        """The whole file; FileNotFoundError if it does not exist."""
        ...

    def read(self, path: str) -> bytes:
        """Same as ``read_bytes``."""
        ...

    def read_range(self, path: str, start: int, length: int) -> bytes:
        """``length`` bytes at ``start`` (fewer at the end of the file)."""
        ...

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Many ``(start, length)`` ranges of one file, in the order given."""
        ...

    def put(self, path: str, data: bytes) -> None:
        """Create or replace ``path`` atomically (readers see the old or the new bytes)."""
        ...

    def put_file(self, path: str, local_path: str) -> None:
        """Create or replace ``path`` with the bytes of a local file (a record file's upload)."""
        ...

    def put_if_absent(self, path: str, data: bytes, *, sync: bool = False,
                      before_publish: Callable[[], None] | None = None) -> bool:
        """Create ``path`` holding ``data`` atomically, only if it does not exist; False if
        it does (another writer won). ``before_publish`` runs once the bytes are staged,
        right before the atomic step (crash tests stop there)."""
        ...

    def copy_if_absent(self, src: str, dst: str) -> bool:
        """Make ``dst`` hold the bytes of ``src`` unless it exists (a snapshot's entry)."""
        ...

    def exists(self, path: str) -> bool: ...

    def stat(self, path: str) -> ObjectInfo: ...

    def size(self, path: str) -> int: ...

    def list(self, prefix: str) -> list[str]:
        """Names directly under the directory ``prefix``, sorted (hidden ones included);
        empty when there is no such directory (a bucket cannot tell)."""
        ...

    def list_paths(self, prefix: str, start_after: str | None = None) -> list[str]:
        """Relative paths of the files under ``prefix`` (recursive), sorted; only those
        after ``start_after`` if given. Staged temporary files are left out."""
        ...

    def list_stats(self, prefix: str) -> list[tuple[str, int, float]]:
        """``(path, size, modification time)`` of the files under ``prefix``, sorted:
        what vacuum needs to find old unreferenced files."""
        ...

    def delete(self, paths: Iterable[str]) -> None:
        """Remove ``paths``; a missing one is not an error."""
        ...

    def local_path(self, path: str) -> str | None:
        """A path the OS can open, or None when the bytes are not in a local file system."""
        ...

    def open_record(self, path: str) -> AbstractContextManager[Any]:
        """A record file held open for a while (``with``): a leased pool handle here, a
        ranged-GET reader (``RangeReader``) on a bucket. Both have ``read_range(start,
        length)`` and ``read_ranges(ranges)``."""
        ...


class RangeReader:
    """A record file held "open" on a bucket: ranged reads of one object, nothing held."""

    def __init__(self, backend: Backend, path: str):
        self.backend = backend
        self.path = path

    def read_range(self, start: int, length: int) -> bytes:
        return self.backend.read_range(self.path, start, length)

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return self.backend.read_ranges(self.path, ranges)


class LocalBackend:
    """A dataset in a local directory. ``put_if_absent`` stages the bytes in a hidden
    temporary file and publishes them with ``link(2)``, which fails if the name exists:
    atomic on every POSIX file system, NFS included. ``put`` publishes with ``rename``."""

    TMP_PREFIX = ".tmp-"  # staged files; vacuum removes abandoned ones

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.uri = self.root
        self.storage_options: dict[str, Any] = {}

    def _abs(self, path: str) -> str:
        return os.path.join(self.root, *path.split("/"))

    def read_bytes(self, path: str) -> bytes:
        with open(self._abs(path), "rb") as f:
            return f.read()

    read = read_bytes

    def _tmp_name(self, path: str) -> str:
        return os.path.join(os.path.dirname(self._abs(path)), f"{self.TMP_PREFIX}{uuid.uuid4().hex}")

    def _stage(self, path: str, data: bytes, sync: bool) -> str:
        tmp = self._tmp_name(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileNotFoundError:
            # Parent directories are made on first use only, as a bucket needs none: the
            # engine's usual writes into existing directories cost no extra call.
            os.makedirs(os.path.dirname(tmp), exist_ok=True)
            fd = os.open(tmp, flags, 0o644)
        try:
            os.write(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def put_if_absent(self, path: str, data: bytes, *, sync: bool = False,
                      before_publish: Callable[[], None] | None = None) -> bool:
        tmp = self._stage(path, data, sync)
        try:
            if before_publish is not None:
                before_publish()
            os.link(tmp, self._abs(path))
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def put(self, path: str, data: bytes) -> None:
        os.replace(self._stage(path, data, False), self._abs(path))

    def put_file(self, path: str, local_path: str) -> None:
        os.makedirs(os.path.dirname(self._abs(path)), exist_ok=True)
        tmp = self._tmp_name(path)
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, self._abs(path))

    def copy_if_absent(self, src: str, dst: str) -> bool:
        try:
            os.link(self._abs(src), self._abs(dst))  # a hard link: no bytes copied
        except FileExistsError:
            return False
        except FileNotFoundError:
            if not os.path.exists(self._abs(src)):
                raise
            os.makedirs(os.path.dirname(self._abs(dst)), exist_ok=True)
            return self.copy_if_absent(src, dst)
        return True

    def exists(self, path: str) -> bool:
        return os.path.exists(self._abs(path))

    def stat(self, path: str) -> ObjectInfo:
        st = os.stat(self._abs(path))
        return ObjectInfo(st.st_size, f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}")

    def size(self, path: str) -> int:
        return os.stat(self._abs(path)).st_size

    def list(self, prefix: str) -> list[str]:
        try:
            return sorted(os.listdir(self._abs(prefix.strip("/"))))
        except FileNotFoundError:
            return []

    def list_paths(self, prefix: str, start_after: str | None = None) -> list[str]:
        base = self._abs(prefix.rstrip("/")) if prefix.strip("/") else self.root
        out = []
        for dirpath, _dirs, files in os.walk(base):
            rel_dir = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for name in files:
                if name.startswith(self.TMP_PREFIX):
                    continue
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                if rel.startswith(prefix) and (start_after is None or rel > start_after):
                    out.append(rel)
        return sorted(out)

    def list_stats(self, prefix: str) -> list[tuple[str, int, float]]:
        out = []
        for rel in self.list_paths(prefix):
            try:
                st = os.lstat(self._abs(rel))
            except FileNotFoundError:
                continue
            out.append((rel, st.st_size, st.st_mtime))
        return out

    def delete(self, paths: Iterable[str]) -> None:
        for p in paths:
            try:
                os.unlink(self._abs(p))
            except FileNotFoundError:
                pass

    def read_range(self, path: str, start: int, length: int) -> bytes:
        fd = os.open(self._abs(path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, length, start)
        finally:
            os.close(fd)

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        fd = os.open(self._abs(path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return [os.pread(fd, length, start) for start, length in ranges]
        finally:
            os.close(fd)

    def local_path(self, path: str) -> str | None:
        return self._abs(path)

    @contextmanager
    def open_record(self, path: str) -> Iterator[RecordHandle]:
        """A leased handle of the record file from the process's pool (``recordpool``);
        ``records.RecordReader`` leases many at once from the same pool."""
        h = POOL.lease(self.root, path)
        try:
            yield h
        finally:
            POOL.release(h)


def is_remote(location: str) -> bool:
    """True for a location served by an object store rather than a directory."""
    return "://" in location and not location.startswith("file://")


def backend_for(location: str, storage_options: dict[str, Any] | None = None) -> Backend:
    """The backend serving ``location``: a directory path (or ``file://...``) or
    ``s3://bucket/prefix`` (``storage_options`` configure the S3 client)."""
    location = str(location)
    if location.startswith("file://"):
        return LocalBackend(location[len("file://"):])
    if "://" not in location:
        return LocalBackend(location)
    scheme = location.split("://", 1)[0].lower()
    if scheme in ("s3", "s3a"):
        from .objstore import S3Backend  # obstore loads only for a bucket

        return S3Backend(location, storage_options)
    raise UserInputError(f"unsupported storage location {location!r}: use a directory or s3://bucket/prefix")


_REMOTE: dict[str, Backend] = {}
_REMOTE_LOCK = threading.Lock()


def open_backend(location: str, storage_options: dict[str, Any] | None = None) -> Backend:
    """``backend_for``, remembering remote backends by location for this process.

    A dataset opened with ``storage_options`` is later read by code that only knows its
    location (index reads, record readers, view sources): they get the same backend, hence
    the same options, which are kept in memory only, never on disk. Options given again
    replace the remembered ones; a location never opened with options uses the standard
    AWS variables. Bounded by the number of distinct bucket locations a process opens.
    """
    if not is_remote(str(location)):
        return backend_for(location)
    uri = str(location).rstrip("/")
    with _REMOTE_LOCK:
        b = _REMOTE.get(uri)
        if b is None or (storage_options is not None and b.storage_options != dict(storage_options)):
            b = _REMOTE[uri] = backend_for(uri, storage_options)
        return b


def portable_backends() -> list[Backend]:
    """The remote backends this process opened, with the settings of its environment
    folded in: what a Ray task needs to read and write the same buckets."""
    with _REMOTE_LOCK:
        backends = list(_REMOTE.values())
    return [b.portable() for b in backends]


def register_backend(backend: Backend) -> None:
    """Make ``backend`` the one ``open_backend`` returns for its location in this process
    (a Ray task registers the backends its driver read through)."""
    if backend.local_path("") is None:
        with _REMOTE_LOCK:
            _REMOTE[backend.uri] = backend
