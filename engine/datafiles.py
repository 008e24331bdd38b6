"""The data and metadata files of one dataset, on whatever backend holds them.

Index files, manifests and change files are Parquet; record files are ArrayRecord. The
engine reads and writes them through a ``DataFiles`` of the dataset's backend, so the same
code serves a directory and a bucket (OBJECTSTORE.md):

- on a directory every call is what the engine always did (``pq.read_table`` of the file,
  ``pq.write_table`` into the dataset, ``unlink``): files are written in place;
- on a bucket, Parquet files are read whole with one GET (they are small: index rows and
  manifests) and written with one PUT of their bytes; files built by libraries that need
  a local path (ArrayRecord writers, ``pq.write_table`` with its options) are written into
  a private staging directory and uploaded by ``finalize`` as soon as they are complete.
  Record files themselves are read by range (``remote_records``), never through here.

Files are never modified once written (fresh uuid names), so what is uploaded is final.

``files_at(location)`` gives the ``DataFiles`` of a location, sharing the backend the
dataset was opened with (``backend.open_backend``), so readers that only know a location
string (``refs.read_index``, Ray tasks) use the options the user gave.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import weakref
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .backend import Backend, open_backend


class DataFiles:
    """Parquet and record files of one dataset on its backend (see the module doc)."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.local = backend.local_path("") is not None
        self._staging: str | None = None  # created on the first staged write (a bucket only)
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------
    def read_table(self, rel: str, **kwargs: Any) -> pa.Table:
        """``pq.read_table`` of the dataset file ``rel`` (keyword arguments passed on)."""
        if self.local:
            return pq.read_table(self.backend.local_path(rel), **kwargs)
        return pq.read_table(pa.BufferReader(self.backend.read_bytes(rel)), **kwargs)

    def parquet_file(self, rel: str, **kwargs: Any) -> pq.ParquetFile:
        """The Parquet file ``rel`` opened for metadata and row-group reads (keyword
        arguments passed on to ``pq.ParquetFile``)."""
        if self.local:
            return pq.ParquetFile(self.backend.local_path(rel), **kwargs)
        return pq.ParquetFile(pa.BufferReader(self.backend.read_bytes(rel)), **kwargs)

    def size(self, rel: str) -> int:
        return self.backend.size(rel)

    # -- writing ---------------------------------------------------------------
    def write_table(self, table: pa.Table, rel: str, **kwargs: Any) -> None:
        """Write ``table`` as the Parquet file ``rel`` (keyword arguments to ``pq.write_table``)."""
        if self.local:
            pq.write_table(table, self.backend.local_path(rel), **kwargs)
            return
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, **kwargs)
        self.backend.put(rel, buf.getvalue().to_pybytes())

    def staging_path(self, rel: str) -> str:
        """A local path to build the file ``rel`` in; ``finalize(rel)`` publishes it. On a
        directory that is the file itself; on a bucket a file in the staging directory."""
        if self.local:
            path = self.backend.local_path(rel)
        else:
            with self._lock:
                if self._staging is None:
                    self._staging = _new_staging_dir()
                    weakref.finalize(self, shutil.rmtree, self._staging, True)  # at exit too
            path = os.path.join(self._staging, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def finalize(self, rel: str) -> None:
        """Publish the file built at ``staging_path(rel)``: upload it, drop the local copy."""
        if self.local:
            return
        path = self.staging_path(rel)
        try:
            self.backend.put_file(rel, path)
        finally:
            os.unlink(path)

    def remove(self, rels: Iterable[str]) -> None:
        """Delete files this process wrote and no commit references (missing ones are fine)."""
        rels = list(rels)
        if not rels:
            return
        if not self.local:
            for rel in rels:  # a staged copy left by a failed upload
                try:
                    os.unlink(os.path.join(self._staging or "", *rel.split("/")))
                except (FileNotFoundError, NotADirectoryError):
                    pass
        self.backend.delete(rels)

    def close(self) -> None:
        """Remove the staging directory (a bucket's writes leave nothing behind locally)."""
        with self._lock:
            staging, self._staging = self._staging, None
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _new_staging_dir() -> str:
    """A private directory for this process's staged files, under one directory per user
    where the directories of processes that died without cleaning up (killed writers) are
    removed by the next process that stages something: leftovers are bounded."""
    root = os.path.join(tempfile.gettempdir(), f"spacefs-staging-{os.getuid()}")
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return tempfile.mkdtemp(prefix="spacefs-staging-")  # not ours: no shared root
    for name in os.listdir(root):
        pid = name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_FILES: dict[str, DataFiles] = {}
_FILES_LOCK = threading.Lock()


def files_at(location: str) -> DataFiles:
    """The ``DataFiles`` of a dataset location (one per remote location per process, using
    the backend registered by ``open_backend``; a fresh cheap one for a directory)."""
    backend = open_backend(location)
    if backend.local_path("") is not None:
        return DataFiles(backend)
    with _FILES_LOCK:
        f = _FILES.get(backend.uri)
        if f is None or f.backend is not backend:
            f = _FILES[backend.uri] = DataFiles(backend)
        return f
