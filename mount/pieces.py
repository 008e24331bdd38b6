"""The mount's work per index file, done once and shared by every snapshot holding the file.

Index files never change and a commit adds or rewrites only the few it touches, so
consecutive snapshots share almost all of theirs. What the mount needs from a file is
computed per file: an ``IndexPiece`` (its rows as references, their ``rows/`` names and
record references) and, per file layout, a ``FilesPiece`` (its rows' layout paths placed
among themselves, the row written last winning within the file). A snapshot's view
(``snapshot.SnapshotView``) looks names and paths up in its files' pieces (sorted names,
the pieces' path dicts) and finds names or paths two files share by the pieces' string
hashes, so walking many versions costs the change between them, not their size, in
time and in memory.

``BUILDS`` counts the pieces built (tests check they follow the distinct files, not
versions times files).
"""

from __future__ import annotations

import json
import sys
from bisect import bisect_right
from collections import Counter
from collections.abc import Hashable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spacefs.engine.layout import FilesIndex, key_names, layout_paths, place
from spacefs.engine.refs import read_index
from spacefs.engine.storage import Storage

from .memlru import MemLRU

BUILDS: Counter[str] = Counter()
_ROW_OVERHEAD = 100  # bytes per row of Python objects not measured one by one (dict slots, ints)
# bytes per piece of objects whatever its rows (Arrow's buffers and arrays, dicts, lists):
# measured ~6 KiB for an index piece and its files piece of one row
_INDEX_FIXED, _FILES_FIXED = 4096, 2048


def _strings_bytes(items: list[str]) -> int:
    return sys.getsizeof(items) + sum(map(sys.getsizeof, items))


class Refs:
    """The reference columns of one record field, as flat arrays (cheap per-row access)."""

    def __init__(self, col: pa.ChunkedArray):
        arr = col.combine_chunks()
        n = len(arr)
        # Plain lists: indexing one is several times cheaper than a numpy scalar access,
        # and stat/lookup index them once per request.
        self.valid: list[bool] = arr.is_valid().to_pylist() if arr.null_count else [True] * n
        self.size: list[int] = arr.field("size").fill_null(0).to_pylist()
        self.offset = arr.field("offset").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        self.pos = arr.field("pos").fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        # Most rows share a few record files: intern the names.
        files = arr.field("file").dictionary_encode()
        self.file_names: list[str] = files.dictionary.to_pylist()
        self.file_idx = files.indices.fill_null(0).to_numpy(zero_copy_only=False)

    def nbytes(self) -> int:
        n = len(self.size)
        return (16 * n + self.offset.nbytes + self.pos.nbytes + self.file_idx.nbytes
                + sum(map(sys.getsizeof, self.size)) + _strings_bytes(self.file_names))


class IndexPiece:
    """One index file as the mount reads it: rows (references), names, record refs."""

    def __init__(self, storage: Storage, rel: str):
        t = read_index(storage.location, rel, storage.index_schema, storage.schema.names).combine_chunks()
        self.table = t
        self.n = t.num_rows
        # (combined: each column is one chunk, so these are views, not copies)
        self.cols: dict[str, pa.Array] = {c: t.column(c).combine_chunks() for c in t.column_names}
        self.names: list[str] = key_names(t, storage.primary_keys)
        self.refs = {f: Refs(t.column(f)) for f in storage.record_fields}
        # Names looked up by bisection (a stable sort: among equal names the last row
        # comes last, and wins), so a snapshot needs no name -> row map of its own.
        by = _stable_order(self.names)
        self.sorted_rows = by
        self.sorted_names: list[str] = [self.names[i] for i in by.tolist()]
        # (process-local string hashes, sorted: snapshots find names shared by files in C,
        # merging these runs)
        self.hashes = np.sort(name_hashes(self.names))
        self.nbytes = (_INDEX_FIXED + t.get_total_buffer_size() + _strings_bytes(self.names)
                       + sys.getsizeof(self.sorted_names)
                       + by.nbytes + self.hashes.nbytes
                       + sum(r.nbytes() for r in self.refs.values()) + _ROW_OVERHEAD * self.n)
        BUILDS["index"] += 1

    def find(self, name: str) -> int:
        """The row of this file that shows ``name`` (the last one holding it), or -1."""
        sn = self.sorted_names
        i = bisect_right(sn, name) - 1
        return int(self.sorted_rows[i]) if i >= 0 and sn[i] == name else -1


def _stable_order(names: list[str]) -> np.ndarray:
    """Row numbers sorting ``names`` (equal names in row order), as Python orders str
    (UTF-8 bytes sort as code points do; names Arrow cannot encode are sorted here)."""
    try:
        by = pc.sort_indices(pa.array(names, pa.string())).to_numpy()
    except (pa.ArrowException, UnicodeError):
        by = np.array(sorted(range(len(names)), key=names.__getitem__), dtype=np.int64)
    return by.astype(np.int32)


def name_hashes(names: list[str]) -> np.ndarray:
    return np.fromiter(map(hash, names), dtype=np.int64, count=len(names))


class FilesPiece:
    """One index file's rows at their paths under one layout: ``paths`` per row (None:
    no file) and ``index``, the rows placed among themselves (local row numbers)."""

    def __init__(self, piece: IndexPiece, layout: dict[str, str]):
        self.paths = layout_paths(piece.table, layout)
        self.index: FilesIndex = place(self.paths, range(piece.n))
        self.file_paths = list(self.index.files)
        self.file_rows = np.fromiter(self.index.files.values(), dtype=np.int64, count=len(self.file_paths))
        self.file_hashes = np.sort(name_hashes(self.file_paths))
        self.dir_hashes = name_hashes([d for d in self.index.dirs if d])
        # per directory, where its subdirectory entries are (a snapshot lists each once)
        self.subdirs: dict[str, list[int]] = {}
        for d, entries in self.index.dirs.items():
            at = [j for j, e in enumerate(entries) if e[1]]
            if at:
                self.subdirs[d] = at
        self.nbytes = (_FILES_FIXED + _strings_bytes([p for p in self.paths if p is not None]) + self.file_rows.nbytes
                       + self.file_hashes.nbytes + self.dir_hashes.nbytes + 100 * len(self.index.dirs)
                       + 3 * _ROW_OVERHEAD * piece.n)
        BUILDS["files"] += 1


class PieceSource:
    """The pieces of one dataset's index files, built once and kept in ``cache``.
    ``ident`` tells datasets (and their incarnations) apart in the cache's keys."""

    def __init__(self, cache: MemLRU, storage: Storage, ident: tuple[Hashable, ...]):
        self.cache, self.storage, self.ident = cache, storage, ident

    def index(self, rel: str) -> tuple[Hashable, IndexPiece]:
        key = ("i", *self.ident, rel)

        def build() -> tuple[IndexPiece, int]:
            p = IndexPiece(self.storage, rel)
            return p, p.nbytes

        return key, self.cache.get_or_build(key, build)

    def files(self, rel: str, layout: dict[str, str], piece: IndexPiece) -> tuple[Hashable, FilesPiece]:
        key = ("f", *self.ident, rel, json.dumps(layout, sort_keys=True))

        def build() -> tuple[FilesPiece, int]:
            f = FilesPiece(piece, layout)
            return f, f.nbytes

        return key, self.cache.get_or_build(key, build)
