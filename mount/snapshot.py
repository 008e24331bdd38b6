"""One immutable snapshot seen as files: its rows by key, its field values as bytes.

A ``SnapshotView`` is built once per (dataset, snapshot) (its layout is its own) from the index
Parquet files alone (references, as ``reference_read=True`` reads them): record fields
stay references, so the view knows every file's exact size and where its bytes lie
without reading a record. The per-file work lives in pieces (``pieces``) shared between
snapshots; a view combines them. Snapshots never change, so a view never needs
invalidating; the tree keeps views and pieces in one cache bounded by memory (``memlru``).
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
from itertools import chain
from typing import Any

import pyarrow as pa
import pyarrow.types as pat

from spacefs.engine.layout import FilesIndex, place
from spacefs.engine.records import RecordReader
from spacefs.engine.storage import Storage

from .pieces import FilesPiece, IndexPiece, PieceSource
from .recread import DECODED, INLINE_MAX, REMOTE_WHOLE_MAX, read_range

log = logging.getLogger("spacefs.mount")


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
        self._names: list[str] | None = None
        self._rows: Sequence[int] | None = None
        self._by_name: dict[str, int] | None = None
        self._files: FilesIndex | None = None
        self._own_bytes = 0
        self.collisions = {"rows": 0, "files": 0}  # names more than one row rendered

    # -- rows ------------------------------------------------------------------
    @property
    def rows_loaded(self) -> bool:
        return self._by_name is not None

    def load_rows(self) -> None:
        """Take the pieces of the snapshot's index files and index their rows by key;
        where rows share a name the row written last wins."""
        if self._by_name is not None:
            return
        got = [self._source.index(rel) for rel, _ in self._entries]
        pieces = [p for _, p in got]
        starts, total = [], 0
        for p in pieces:
            starts.append(total)
            total += p.n
        sids = [s for _, s in self._entries]
        order = sorted(range(len(pieces)), key=sids.__getitem__)
        by_name: dict[str, int] = {}
        for i in order:  # dict.update in write order: the row written last keeps the name
            by_name.update(zip(pieces[i].names, range(starts[i], starts[i] + pieces[i].n), strict=True))
        shared = len(pieces) == 1  # (then the piece's names are the listing as they are)
        all_names = pieces[0].names if shared else list(chain.from_iterable(p.names for p in pieces))
        names: list[str]
        rows: Sequence[int]
        dups = 0
        if len(by_name) == total:
            names, rows = all_names, range(total)
        else:  # appends do not check keys: the row written last shows
            dups = sum(1 for c in Counter(all_names).values() if c > 1)
            rows = sorted(by_name.values())
            names = [all_names[r] for r in rows]
            log.warning("%s@%d: %d names are taken by more than one row; rows/ shows the row written last",
                        self.storage.name, self.sid, dups)
        self.collisions["rows"] = dups
        times = {s: _ns(self.storage.snapshot(s)["time"]) for s in set(sids)}
        self._pieces, self._starts, self._order = pieces, starts, order
        self._piece_ns = [times[s] for s in sids]
        self._deps = [(k, p, p.nbytes) for k, p in got]
        self._own_bytes = (sys.getsizeof(by_name) + 40 * total
                           + (0 if shared and names is all_names else sys.getsizeof(names)))
        self._names, self._rows = names, rows
        self._by_name = by_name  # (last: rows_loaded says the rest is there)

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
        return len(self._names or ())

    def row_name(self, i: int) -> tuple[str, int]:
        """The ``i``-th row directory: its name and row number."""
        assert self._names is not None and self._rows is not None
        return self._names[i], self._rows[i]

    def row_by_name(self, name: str) -> int | None:
        assert self._by_name is not None
        return self._by_name.get(name)

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
                    io: bool) -> bytes | None:
        """Bytes ``[start, start+length)`` of a record, by range when the file allows it.
        With ``io=False`` only from the page cache through an already open file, and None
        if that would block."""
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
                return read_range(h.fd, off, start, length, nowait=not io)
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
                        self.storage.name, self.sid, len(idx.taken))
        self.collisions["files"] = len(idx.taken)
        self._deps = self._deps + [(k, f, f.nbytes) for k, f in got]
        if len(fps) != 1 or idx is not fps[0].index:
            self._own_bytes += sys.getsizeof(idx.files) + 200 * len(idx.files)
        self._files = idx  # (last: files_loaded says the rest is there)

    @property
    def files(self) -> FilesIndex:
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


def combine_files(fps: list[FilesPiece], starts: list[int], order: list[int]) -> FilesIndex:
    """The ``files/`` tree of a snapshot from its files' pieces (``order``: pieces in
    write order). Pieces whose paths do not meet (the usual case) are merged as they
    are; otherwise all rows are placed again, the row written last winning."""
    if len(fps) == 1 and starts == [0]:
        return fps[0].index
    files: dict[str, int] = {}
    for i in order:
        f = fps[i]
        files.update(zip(f.file_paths, (f.file_rows + starts[i]).tolist(), strict=True))
    meet = len(files) != sum(len(f.file_paths) for f in fps) or \
        any(not files.keys().isdisjoint(f.index.dirs.keys()) for f in fps)
    if meet:
        paths = list(chain.from_iterable(f.paths for f in fps))
        return place(paths, [starts[i] + r for i in order for r in range(len(fps[i].paths))])
    idx = FilesIndex()
    idx.files = files
    seen: set[str] = set()
    for i in order:
        f, s = fps[i], starts[i]
        idx.taken |= f.index.taken
        for d, entries in f.index.dirs.items():
            out = idx.dirs.setdefault(d, [])
            for name, is_dir, r in entries:
                if not is_dir:
                    out.append((name, False, r + s))
                elif (child := f"{d}/{name}" if d else name) not in seen:
                    seen.add(child)
                    out.append((name, True, -1))
    return idx


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
