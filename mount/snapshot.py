"""One immutable snapshot seen as files: its rows by key, its field values as bytes.

A ``SnapshotView`` is built once per (dataset, snapshot) (its layout is its own) from the index
Parquet files alone (references, as ``reference_read=True`` reads them): record fields
stay references, so the view knows every file's exact size and where its bytes lie
without reading a record. The per-file work lives in pieces (``pieces``) shared between
snapshots; a view answers from them (a name from the newest piece holding it, a path
from the one piece holding it) and holds only what differs: the names of its small
files and the rows a later row took the name or path of, so a view costs its change,
not its rows, and many versions fit in the cache. Snapshots never change, so a view
never needs invalidating; the tree keeps views and pieces in one cache bounded by
memory (``memlru``).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import logging
import os
import sys
from bisect import bisect_right
from collections import Counter
from collections.abc import Hashable, Sequence
from itertools import accumulate, chain
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.types as pat

from spacefs.engine.layout import FilesIndex, place
from spacefs.engine.records import RecordReader, record_position
from spacefs.engine.storage import Storage

from .pieces import FilesPiece, IndexPiece, PieceSource, name_hashes
from .recread import AHEAD, DECODED, INLINE_MAX, MAPPED, REMOTE_WHOLE_MAX, read_range

log = logging.getLogger("spacefs.mount")
_EMPTY = np.zeros(0, dtype=np.int64)
# Index files of at most this many rows have their names in the view's own dict: a
# snapshot of many small files (commits since the last compaction) looks a name up once,
# not once per file.
SMALL_PIECE = 64


def _ns(iso: str | None) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1e9) if iso else 0


def _json_default(v: Any) -> Any:
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, (decimal.Decimal, dt.timedelta)):
        return str(v)
    raise TypeError(f"cannot encode {type(v).__name__}")


def format_value(value: Any, typ: pa.DataType) -> bytes:
    """An index field value as file content (SPEC section 4): binary raw, strings UTF-8,
    scalars as text and a newline, lists and structs as JSON and a newline."""
    if pat.is_binary(typ) or pat.is_large_binary(typ) or pat.is_fixed_size_binary(typ):
        return bytes(value)
    if pat.is_string(typ) or pat.is_large_string(typ):
        return value.encode("utf-8")
    if pat.is_nested(typ):
        return json.dumps(value, default=_json_default, ensure_ascii=False).encode() + b"\n"
    if isinstance(value, bool):
        return b"true\n" if value else b"false\n"
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat().encode() + b"\n"
    return str(value).encode() + b"\n"


class SnapshotView:
    """Rows of snapshot ``sid``: names by primary key, and field contents by row.

    Rows are numbered as the snapshot's index files list them (``Storage.index_entries``),
    each file's rows in a row range of their own; the per-file work comes from
    ``pieces`` (shared with every other snapshot holding the file)."""

    def __init__(self, storage: Storage, sid: int, layout: dict[str, str] | None, pieces: PieceSource):
        self.storage = storage
        self.sid = sid
        self.layout = layout
        self.schema = storage.schema
        self.field_names: list[str] = list(storage.schema.names)  # (Schema.names builds a new list per call)
        self._field_set = frozenset(self.field_names)
        self.record_fields = frozenset(storage.record_fields)
        self._source = pieces
        entries = storage.index_entries(sid)
        # index/: the snapshot's Parquet files under their basenames.
        self.index_files: dict[str, tuple[str, int]] = {
            os.path.basename(e["path"]): (e["path"], int(e["bytes"])) for e in entries
        }
        self._entries = [(e["path"], int(e["snapshot_id"])) for e in entries if e["rows"]]
        self._pieces: list[IndexPiece] = []
        self._starts: list[int] = []  # first row of each piece
        self._piece_ns: list[int] = []  # per piece: create time of the snapshot that wrote it
        self._order: list[int] = []  # pieces in write order, oldest first (ties: listed order)
        self._deps: list[tuple[Hashable, Any, int]] = []
        self._total = 0
        self._rank: list[int] = []  # per piece: its place in ``_order``
        self._big: list[int] = []  # pieces looked up one by one, newest first
        self._small: dict[str, int] | None = None  # names of the small pieces -> rows (last wins)
        # rows a row written later took the name of: sorted, and minus their index (maps
        # a listing position to a row with one searchsorted)
        self._shift = _EMPTY
        self._files: Files | None = None
        self._own_bytes = 0
        self.collisions = {"rows": 0, "files": 0}  # names more than one row rendered

    # -- rows ------------------------------------------------------------------
    @property
    def rows_loaded(self) -> bool:
        return self._small is not None

    def load_rows(self) -> None:
        """Take the pieces of the snapshot's index files. Names are looked up in the
        pieces themselves, newest first (where rows share a name the row written last
        wins), so the view holds only what is its own: the names of its small files
        and the rows that lost their name (usually none)."""
        if self._small is not None:
            return
        got = [self._source.index(rel) for rel, _ in self._entries]
        pieces = [p for _, p in got]
        starts, total = [], 0
        for p in pieces:
            starts.append(total)
            total += p.n
        sids = [s for _, s in self._entries]
        order = sorted(range(len(pieces)), key=sids.__getitem__)
        rank = [0] * len(pieces)
        for r, i in enumerate(order):
            rank[i] = r
        small: dict[str, int] = {}
        for i in order:  # dict.update in write order: the row written last keeps the name
            if pieces[i].n <= SMALL_PIECE:
                small.update(zip(pieces[i].names, range(starts[i], starts[i] + pieces[i].n), strict=True))
        losers, dups = name_losers(pieces, starts, order)
        if dups:  # appends do not check keys: the row written last shows
            log.warning("%s@%d: %d names are taken by more than one row; rows/ shows the row written last",
                        self.storage.name, self.sid, dups)
        self.collisions["rows"] = dups
        times = {s: _ns(self.storage.snapshot(s)["time"]) for s in set(sids)}
        self._pieces, self._starts, self._order, self._rank, self._total = pieces, starts, order, rank, total
        self._big = [i for i in reversed(order) if pieces[i].n > SMALL_PIECE]
        self._shift = losers - np.arange(len(losers), dtype=np.int64) if len(losers) else _EMPTY
        self._piece_ns = [times[s] for s in sids]
        self._deps = [(k, p, p.nbytes) for k, p in got]
        self._own_bytes = (sys.getsizeof(small) + 32 * len(small) + self._shift.nbytes
                           + 200 * len(pieces))
        self._small = small  # (last: rows_loaded says the rest is there)

    def _loc(self, row: int) -> tuple[IndexPiece, int]:
        """The piece holding ``row`` and the row's number in it."""
        if len(self._starts) == 1:
            return self._pieces[0], row
        i = bisect_right(self._starts, row) - 1
        return self._pieces[i], row - self._starts[i]

    def row_time(self, row: int) -> int:
        """Create time (ns) of the snapshot that wrote ``row``: the row's mtime."""
        return self._piece_ns[0 if len(self._starts) == 1 else bisect_right(self._starts, row) - 1]

    def __len__(self) -> int:
        return self._total - len(self._shift)

    def row_name(self, i: int) -> tuple[str, int]:
        """The ``i``-th row directory: its name and row number (rows in index order,
        less those whose name a row written later took)."""
        assert self._small is not None
        row = i + int(np.searchsorted(self._shift, i, side="right")) if len(self._shift) else i
        p, r = self._loc(row)
        return p.names[r], row

    def row_by_name(self, name: str) -> int | None:
        assert self._small is not None
        row = self._small.get(name)
        above = -1 if row is None else self._rank[self._piece_of(row)]
        for i in self._big:  # newest first: the first holding the name wins
            if self._rank[i] < above:
                break
            r = self._pieces[i].find(name)
            if r >= 0:
                return self._starts[i] + r
        return row

    def _piece_of(self, row: int) -> int:
        return 0 if len(self._starts) == 1 else bisect_right(self._starts, row) - 1

    # -- fields ----------------------------------------------------------------
    def fields_of(self, row: int) -> list[str]:
        """Field files of a row, in schema order; null values have no file."""
        return [f for f in self.field_names if self.has_field(row, f)]

    def has_field(self, row: int, field: str) -> bool:
        p, r = self._loc(row)
        if field in self.record_fields:
            return p.refs[field].valid[r]
        if field not in self._field_set:
            return False
        return p.cols[field][r].is_valid

    def is_record(self, field: str) -> bool:
        return field in self.record_fields

    def value_bytes(self, row: int, field: str) -> bytes:
        """Content of an index field's file (record fields are read with ``read_record``)."""
        p, r = self._loc(row)
        return format_value(p.cols[field][r].as_py(), self.schema.field(field).type)

    def size(self, row: int, field: str) -> int:
        if field in self.record_fields:
            p, r = self._loc(row)
            return p.refs[field].size[r]
        return len(self.value_bytes(row, field))

    def read_record(self, reader: RecordReader, row: int, field: str, start: int, length: int,
                    io: bool, gather: bool = False) -> bytes | list[memoryview] | None:
        """Bytes ``[start, start+length)`` of a record, by range when the file allows it.
        With ``io=False`` only from the page cache through an already open file, and None
        if that would block; with ``gather`` too, as pieces of maps of the record file
        where it can (``Mapped``: no copy here, one gather write to the kernel)."""
        p, row = self._loc(row)
        r = p.refs[field]
        rel = r.file_names[r.file_idx[row]]
        size, off = r.size[row], int(r.offset[row])
        if off >= 0 and reader.remote:
            # A bucket (``RemoteRecordReader``). Without a chunk cache a record up to
            # ``REMOTE_WHOLE_MAX`` is fetched whole by its first piece (one GET) and kept
            # with the decoded records, so the kernel's next pieces are served from memory,
            # inline; otherwise each piece is a ranged read through the chunk cache. Network
            # reads happen only in worker threads.
            key = (reader.root, rel, int(r.pos[row]))
            if reader.cache is None and size <= REMOTE_WHOLE_MAX:
                data = DECODED.get(key) if not io else DECODED.fetch(key, lambda: reader.read_one(rel, key[2], off, size))
                return None if data is None else data[start : start + length]
            return reader.read_range(rel, off, size, start, length) if io else None
        if off >= 0:
            if not io and length > INLINE_MAX:
                return None
            pool = reader.pool
            h = pool.lease(reader.root, rel) if io else pool.try_lease(reader.root, rel)
            if h is None:
                return None
            try:
                if gather and not io:
                    pieces = MAPPED.pieces(h.fd, h.ident, h.size, off, start, length)
                    if pieces is not None:
                        return pieces  # (else: not all cached, or no map; RWF_NOWAIT tells)
                data = read_range(h.fd, off, start, length, nowait=not io)
                if io and start == 0 and length == size:  # a whole record, not in the page cache
                    AHEAD.missed((reader.root, rel), h.fd, record_position(off, 0), record_position(off, length))
                return data
            finally:
                pool.release(h)
        # A compressed file: the record decodes only whole, so keep it for the next piece.
        key = (reader.root, rel, int(r.pos[row]))
        data = DECODED.get(key) if not io else DECODED.fetch(key, lambda: reader.read_one(rel, key[2], off, size))
        return None if data is None else data[start : start + length]

    # -- files/ ----------------------------------------------------------------
    @property
    def files_loaded(self) -> bool:
        return self._files is not None

    def load_files(self) -> None:
        """Place every row at its layout path; where rows share a path (or one's path
        is another's directory) the row written last wins."""
        if self._files is not None or self.layout is None:
            return
        self.load_rows()
        got = [self._source.files(rel, self.layout, p) for (rel, _), p in zip(self._entries, self._pieces, strict=True)]
        fps = [f for _, f in got]
        idx = combine_files(fps, self._starts, self._order)
        if idx.taken:
            log.warning("%s@%d: %d layout paths are taken by more than one row; files/ shows the row written last",
                        self.storage.name, self.sid, idx.taken)
        self.collisions["files"] = idx.taken
        self._deps = self._deps + [(k, f, f.nbytes) for k, f in got]
        self._own_bytes += idx.nbytes
        self._files = idx  # (last: files_loaded says the rest is there)

    @property
    def files(self) -> Files:
        assert self._files is not None
        return self._files

    # -- cache accounting ------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes this view holds of its own (its pieces are counted as theirs)."""
        return 1024 + 64 * len(self.index_files) + self._own_bytes

    def deps(self) -> list[tuple[Hashable, Any, int]]:
        """The pieces this view holds, as ``(cache key, piece, bytes)``."""
        return self._deps

    def schema_json(self) -> bytes:
        from spacefs.engine.schema import schema_to_json

        doc = {
            "schema": schema_to_json(self.schema),
            "primary_keys": self.storage.primary_keys,
            "record_fields": self.storage.record_fields,
            "file_layout": self.layout,
            "snapshot_id": self.sid,
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def name_losers(pieces: list[IndexPiece], starts: list[int], order: list[int]) -> tuple[np.ndarray, int]:
    """The rows (sorted) whose name a row written later also has, and how many names
    more than one row has. Names are compared by their hashes first (one sort, in C);
    only rows whose hash repeats are compared as strings."""
    if not pieces:
        return _EMPTY, 0
    # (each piece's hashes are sorted: a stable sort merges the runs)
    s = pieces[0].hashes if len(pieces) == 1 else np.sort(np.concatenate([p.hashes for p in pieces]), kind="stable")
    same = s[1:] == s[:-1]
    if not same.any():
        return _EMPTY, 0
    cand = np.unique(s[1:][same])
    last: dict[str, int] = {}
    seen: Counter[str] = Counter()
    losers = []
    for i in order:  # write order: the row written last keeps the name
        p = pieces[i]
        for r in np.flatnonzero(np.isin(name_hashes(p.names), cand)).tolist():
            name = p.names[r]
            seen[name] += 1
            prev = last.get(name)
            if prev is not None:
                losers.append(prev)
            last[name] = starts[i] + r
    return np.sort(np.array(losers, dtype=np.int64)), sum(1 for c in seen.values() if c > 1)


class Files:
    """A snapshot's ``files/``: which paths are directories, the row of each file, and
    each directory's entries ``(name, is_dir, row)`` (row -1 for directories)."""

    taken = 0  # layout paths a row lost to a row written later
    nbytes = 0  # bytes of the view's own (not its pieces')

    def is_dir(self, path: str) -> bool:
        raise NotImplementedError

    def file_row(self, path: str) -> int | None:
        raise NotImplementedError

    def entries(self, d: str) -> Sequence[tuple[str, bool, int]]:
        raise NotImplementedError


class PlacedFiles(Files):
    """All rows placed in one tree (one index file, or files whose paths meet)."""

    def __init__(self, idx: FilesIndex, own: bool):
        self.idx = idx
        self.taken = len(idx.taken)
        self.nbytes = sys.getsizeof(idx.files) + 200 * len(idx.files) if own else 0

    def is_dir(self, path: str) -> bool:
        return path in self.idx.dirs

    def file_row(self, path: str) -> int | None:
        return self.idx.files.get(path)

    def entries(self, d: str) -> Sequence[tuple[str, bool, int]]:
        return self.idx.dirs.get(d, [])


class StackedFiles(Files):
    """Index files whose paths do not meet (the usual case), answered from their pieces:
    a path is at most one file's, a directory lists its entries in each file in write
    order (every subdirectory once). Nothing per row is held."""

    def __init__(self, fps: list[FilesPiece], starts: list[int], order: list[int]):
        self.fps, self.starts, self.order = fps, starts, order
        self.newest = order[::-1]
        self.taken = len(set().union(*(f.index.taken for f in fps)))
        self.nbytes = 100 * len(fps)

    def is_dir(self, path: str) -> bool:
        return any(path in f.index.dirs for f in self.fps)

    def file_row(self, path: str) -> int | None:
        for i in self.newest:
            r = self.fps[i].index.files.get(path)
            if r is not None:
                return self.starts[i] + r
        return None

    def entries(self, d: str) -> Sequence[tuple[str, bool, int]]:
        segs: list[tuple[Sequence[tuple[str, bool, int]], int]] = []
        seen: set[str] = set()
        for i in self.order:
            f = self.fps[i]
            ents = f.index.dirs.get(d)
            if not ents:
                continue
            drop = []
            for j in f.subdirs.get(d, ()):
                if ents[j][0] in seen:
                    drop.append(j)
                seen.add(ents[j][0])
            if drop:
                gone = set(drop)
                ents = [e for j, e in enumerate(ents) if j not in gone]
            segs.append((ents, self.starts[i]))
        return _Entries(segs)


class _Entries(Sequence):
    """Directory entries of several pieces one after the other, rows made global."""

    def __init__(self, segs: list[tuple[Sequence[tuple[str, bool, int]], int]]):
        self.segs = segs
        self.ends = list(accumulate(len(e) for e, _ in segs))

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        k = bisect_right(self.ends, i)
        if k == len(self.segs):
            raise IndexError(i)
        ents, start = self.segs[k]
        name, is_dir, row = ents[i - (self.ends[k - 1] if k else 0)]
        return (name, True, -1) if is_dir else (name, False, row + start)


def _paths_meet(fps: list[FilesPiece]) -> bool:
    """Whether two files' rows take the same path, or one's file is another's directory
    (hashes first, in C; candidates compared as strings)."""
    fh = np.sort(np.concatenate([f.file_hashes for f in fps]), kind="stable")  # (sorted runs: merged)
    dh = np.unique(np.concatenate([f.dir_hashes for f in fps]))
    at = np.minimum(np.searchsorted(fh, dh), max(len(fh) - 1, 0))
    cand = np.union1d(fh[1:][fh[1:] == fh[:-1]], dh[fh[at] == dh] if len(fh) else dh[:0])
    if not len(cand):
        return False
    files: set[str] = set()
    for f in fps:
        for j in np.flatnonzero(np.isin(name_hashes(f.file_paths), cand)).tolist():
            p = f.file_paths[j]
            if p in files:
                return True
            files.add(p)
    return any(p in f.index.dirs for p in files for f in fps)


def combine_files(fps: list[FilesPiece], starts: list[int], order: list[int]) -> Files:
    """The ``files/`` tree of a snapshot from its files' pieces (``order``: pieces in
    write order). Pieces whose paths do not meet (the usual case) are answered from as
    they are; otherwise all rows are placed again, the row written last winning."""
    if not fps:
        return PlacedFiles(FilesIndex(), own=False)
    if len(fps) == 1 and starts == [0]:
        return PlacedFiles(fps[0].index, own=False)
    if not _paths_meet(fps):
        return StackedFiles(fps, starts, order)
    paths = list(chain.from_iterable(f.paths for f in fps))
    return PlacedFiles(place(paths, [starts[i] + r for i in order for r in range(len(fps[i].paths))]), own=True)


class RowNames(Sequence):
    """``rows/`` as a lazy sequence of (name, row) pairs: listing never builds them all."""

    def __init__(self, view: SnapshotView):
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self.view.row_name(j) for j in range(*i.indices(len(self)))]
        return self.view.row_name(i)
