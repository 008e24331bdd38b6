"""Records of ArrayRecord files on any backend, by byte range, through the chunk cache.

On disk a record is one ``pread`` (engine/records.py). On object storage the same index
references (physical offset, size) become ranges of one ``read_ranges`` per file: nearby
records share a GET, the GETs of a batch run in parallel, and with a ``ChunkCache`` a
second read of the same records makes no request. The record's physical extent includes
the 24-byte Riegeli block header at each 64 KiB boundary it crosses; those are cut out
here exactly as the local reader does.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from .backend import Backend, open_backend
from .chunkcache import DEFAULT_SIZE, ChunkCache
from .errors import UserInputError
from .objstore import pool
from .records import _logical, _phys, _phys_end_vec, _strip_headers, binary_array, clamp_length


def read_records(backend: Backend, path: str, offsets: Sequence[int] | np.ndarray,
                 sizes: Sequence[int] | np.ndarray, cache: ChunkCache | None = None) -> list[bytes]:
    """The records of ``path`` at physical ``offsets`` with byte ``sizes``, in that order."""
    off = np.asarray(offsets, dtype=np.int64)
    size = np.asarray(sizes, dtype=np.int64)
    if len(off) and int(off.min()) < 0:
        # Compressed chunks need the whole chunk decoded; datasets on object storage are
        # written uncompressed (the default), which is what makes ranged reads possible.
        raise UserInputError(f"{backend.uri}/{path} has compressed chunks: records cannot be read by range")
    end = np.where(size > 0, _phys_end_vec(off, np.maximum(size, 1)), off)
    ranges = [(int(o), int(e - o)) for o, e in zip(off, end, strict=True)]
    bufs = cache.read_ranges(backend, path, ranges) if cache else backend.read_ranges(path, ranges)
    out = []
    for buf, o, s in zip(bufs, off, size, strict=True):
        s = int(s)
        out.append(buf if len(buf) == s else _strip_headers(buf, int(o), s, int(o)))
    return out


def read_refs(backend: Backend, refs: Sequence[dict], cache: ChunkCache | None = None) -> list[bytes]:
    """The records of index references (``{file, offset, size, ...}``), in their order.

    References are grouped by record file; the files are read in parallel, each with one
    ``read_records`` (so one batched fetch per file, or none when cached).
    """
    by_file: dict[str, list[int]] = {}
    for k, ref in enumerate(refs):
        by_file.setdefault(ref["file"], []).append(k)
    out: list[bytes] = [b""] * len(refs)

    def one(path: str, ks: list[int]) -> None:
        got = read_records(backend, path, [refs[k]["offset"] for k in ks], [refs[k]["size"] for k in ks], cache)
        for k, v in zip(ks, got, strict=True):
            out[k] = v

    if len(by_file) == 1:
        one(*next(iter(by_file.items())))
    else:
        for f in [pool("files").submit(one, p, ks) for p, ks in by_file.items()]:
            f.result()
    return out


class RemoteRecordReader:
    """``records.RecordReader`` for a dataset on a bucket: the same methods, reading
    records by range (``read_records``) through the location's chunk cache, if any.

    ``RecordReader(location)`` returns one of these for a remote location, so every read
    path (scans, ``refs.resolve``, random access, diffs) keeps calling ``RecordReader``.
    Holds nothing open; thread-safe.
    """

    remote = True

    def __init__(self, root: str, cache: ChunkCache | None = None):
        self.backend = open_backend(root)
        self.root = self.backend.uri
        self.cache = cache if cache is not None else cache_for(self.root)

    def read_range(self, rel: str, offset: int, size: int, start: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[start, start+length)`` of the record at physical ``offset``."""
        length = clamp_length(size, start, length)
        if length == 0:
            return b""
        pos = _phys(_logical(offset) + start)  # a sub-range is a record of its own
        return read_records(self.backend, rel, [pos], [length], self.cache)[0]

    def read_one(self, rel: str, pos: int, offset: int, size: int) -> bytes:
        return read_records(self.backend, rel, [offset], [size], self.cache)[0]

    def read_batch(self, files: Sequence[str], file_idx: np.ndarray, offset: np.ndarray,
                   size: np.ndarray, pos: np.ndarray, threads: int = 0) -> list[bytes]:
        """Records given as parallel arrays, returned in the order asked: one batched,
        coalesced fetch per file, the files in parallel."""
        refs = [{"file": files[int(f)], "offset": int(o), "size": int(s)}
                for f, o, s in zip(np.asarray(file_idx).tolist(), np.asarray(offset).tolist(),
                                   np.asarray(size).tolist(), strict=True)]
        return read_refs(self.backend, refs, self.cache)

    def read_refs(self, refs: pa.Array, threads: int = 0) -> pa.Array:
        """Resolve a column of references to a binary column (nulls stay null)."""
        refs = refs.combine_chunks() if isinstance(refs, pa.ChunkedArray) else refs
        if len(refs) == 0:
            return pa.array([], pa.binary())
        valid = refs.is_valid().to_numpy(zero_copy_only=False)
        live = np.flatnonzero(valid)
        sub = refs.take(pa.array(live)) if refs.null_count else refs
        files = sub.field("file").dictionary_encode()
        vals = self.read_batch(files.dictionary.to_pylist(), files.indices.to_numpy(zero_copy_only=False),
                               sub.field("offset").to_numpy(zero_copy_only=False),
                               sub.field("size").to_numpy(zero_copy_only=False),
                               sub.field("pos").to_numpy(zero_copy_only=False))
        return _binary_column(vals, live, valid if refs.null_count else None)

    scan_refs = read_refs  # ranges of neighbours coalesce into one GET already

    def close(self) -> None:
        """Nothing to close."""


def _binary_column(vals: list[bytes], live: np.ndarray, valid: np.ndarray | None) -> pa.Array:
    """A binary column of ``vals`` at positions ``live`` (nulls elsewhere when ``valid``
    is given), built from one joined buffer and its offsets. ``pa.array`` of a list of
    records grows its buffer by doubling: a scan of 40 MB spent 20-200 ms (varying with
    what the allocator could extend in place) copying what one join copies once."""
    n = len(valid) if valid is not None else len(vals)
    sizes = np.zeros(n, dtype=np.int64)
    sizes[live] = np.fromiter(map(len, vals), dtype=np.int64, count=len(vals))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return binary_array(offsets, pa.py_buffer(b"".join(vals)), bitmap,
                        -1 if valid is None else int(n - len(live)))


_CACHES: dict[str, ChunkCache | None] = {}
_CACHES_LOCK = threading.Lock()
_DEFAULT: list[ChunkCache] = []  # the process-wide cache of every location (a mount's)


def set_default_cache(cache_dir: str, cache_size: int = DEFAULT_SIZE) -> ChunkCache:
    """Make record reads of every bucket location without a cache of its own go through
    one chunk cache in ``cache_dir`` (``spacefs mount --cache-dir``)."""
    cache = ChunkCache(cache_dir, cache_size)
    with _CACHES_LOCK:
        _DEFAULT[:] = [cache]
    return cache


def set_cache(location: str, cache_dir: str | None, cache_size: int = DEFAULT_SIZE) -> ChunkCache | None:
    """Make record reads of the dataset at ``location`` in this process go through a chunk
    cache in ``cache_dir`` (None: no cache). Processes may share one directory."""
    cache = ChunkCache(cache_dir, cache_size) if cache_dir else None
    with _CACHES_LOCK:
        _CACHES[location.rstrip("/")] = cache
    return cache


def cache_for(location: str) -> ChunkCache | None:
    """The chunk cache of a location: the one set by ``set_cache``, else the default one
    (``set_default_cache``), else one in
    ``$SPACEFS_CACHE_DIR`` (``$SPACEFS_CACHE_SIZE`` bytes, default 1 GiB) if set, else none."""
    location = location.rstrip("/")
    with _CACHES_LOCK:
        if location in _CACHES:
            return _CACHES[location]
        if _DEFAULT:
            return _DEFAULT[0]
    cache_dir = os.environ.get("SPACEFS_CACHE_DIR")
    if not cache_dir:
        return None
    try:
        size = int(os.environ.get("SPACEFS_CACHE_SIZE", DEFAULT_SIZE))
    except ValueError:
        raise UserInputError(f"SPACEFS_CACHE_SIZE must be a number of bytes, got "
                             f"{os.environ['SPACEFS_CACHE_SIZE']!r}") from None
    return set_cache(location, cache_dir, size)
