"""One immutable snapshot seen as files: its rows by key, its field values as bytes.

A ``SnapshotView`` is built once per (dataset, snapshot) (its layout is its own) from the index
Parquet files alone (``reference_read=True``): record fields stay references, so the
view knows every file's exact size and where its bytes lie without reading a record.
Snapshots never change, so a view never needs invalidating; the tree caches a few.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.types as pat

from spacefs.engine.dataset import Dataset
from spacefs.engine.layout import (
    FilesIndex,
    key_names,
    last_wins,
    layout_paths,
    place,
    row_snapshots,
    write_order,
)
from spacefs.engine.records import RecordReader
from spacefs.engine.storage import Storage

from .recread import DECODED, INLINE_MAX, REMOTE_WHOLE_MAX, read_range

log = logging.getLogger("spacefs.mount")


def _ns(iso: str | None) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1e9) if iso else 0


class _Refs:
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
    """Rows of snapshot ``sid``: names by primary key, and field contents by row."""

    def __init__(self, storage: Storage, sid: int, layout: dict[str, str] | None):
        self.storage = storage
        self.sid = sid
        self.layout = layout
        self.schema = storage.schema
        self.field_names: list[str] = list(storage.schema.names)  # (Schema.names builds a new list per call)
        self._field_set = frozenset(self.field_names)
        self.record_fields = frozenset(storage.record_fields)
        entries = storage.index_entries(sid)
        # index/: the snapshot's Parquet files under their basenames.
        self.index_files: dict[str, tuple[str, int]] = {
            os.path.basename(e["path"]): (e["path"], int(e["bytes"])) for e in entries
        }
        self._table: pa.Table | None = None
        self._names: list[str] | None = None
        self._rows: Sequence[int] | None = None
        self._by_name: dict[str, int] | None = None
        self._refs: dict[str, _Refs] = {}
        self._cols: dict[str, pa.Array] = {}
        self._files: FilesIndex | None = None
        self._order: np.ndarray | None = None  # rows in write order, oldest first
        self.row_ns: list[int] = []  # per row: create time of the snapshot that wrote it
        self.collisions = {"rows": 0, "files": 0}  # names more than one row rendered

    # -- rows ------------------------------------------------------------------
    @property
    def rows_loaded(self) -> bool:
        return self._by_name is not None

    def load_rows(self) -> None:
        """Read the snapshot's index rows (references only) and index them by key."""
        if self._by_name is not None:
            return
        runner = Dataset(self.storage).local()
        t = runner.read_all(version=self.sid, reference_read=True)
        t = t.combine_chunks()
        self._write_order(t.num_rows)
        all_names = key_names(t, self.storage.primary_keys)
        by_name, dups = last_wins(all_names, self._order)
        names: list[str]
        rows: Sequence[int]
        if not dups:
            names, rows = all_names, range(len(all_names))
        else:  # appends do not check keys: the row written last shows
            rows = sorted(by_name.values())
            names = [all_names[r] for r in rows]
            log.warning("%s@%d: %d names are taken by more than one row; rows/ shows the row written last",
                        self.storage.name, self.sid, dups)
        self.collisions["rows"] = dups
        for f in self.record_fields:
            self._refs[f] = _Refs(t.column(f))
        self._table = t
        self._names, self._rows = names, rows
        self._by_name = by_name

    def _write_order(self, n: int) -> None:
        """Which snapshot wrote each row, and the rows in write order (last wins)."""
        sids = row_snapshots(self.storage.index_entries(self.sid), n, self.sid)
        self._order = write_order(sids)
        times = {int(s): _ns(self.storage.snapshot(int(s))["time"]) for s in np.unique(sids)}
        self.row_ns = [times[s] for s in sids.tolist()]

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
        if field in self.record_fields:
            return self._refs[field].valid[row]
        if field not in self._field_set:
            return False
        return self._column(field)[row].is_valid

    def _column(self, field: str) -> pa.Array:
        col = self._cols.get(field)
        if col is None:
            assert self._table is not None
            col = self._table.column(field).combine_chunks()
            self._cols[field] = col
        return col

    def is_record(self, field: str) -> bool:
        return field in self.record_fields

    def value_bytes(self, row: int, field: str) -> bytes:
        """Content of an index field's file (record fields are read with ``read_record``)."""
        return format_value(self._column(field)[row].as_py(), self.schema.field(field).type)

    def size(self, row: int, field: str) -> int:
        if field in self.record_fields:
            return self._refs[field].size[row]
        return len(self.value_bytes(row, field))

    def read_record(self, reader: RecordReader, row: int, field: str, start: int, length: int,
                    io: bool) -> bytes | None:
        """Bytes ``[start, start+length)`` of a record, by range when the file allows it.
        With ``io=False`` only from the page cache through an already open file, and None
        if that would block."""
        r = self._refs[field]
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
        assert self._table is not None and self._order is not None
        idx = place(layout_paths(self._table, self.layout), self._order)
        if idx.taken:
            log.warning("%s@%d: %d layout paths are taken by more than one row; files/ shows the row written last",
                        self.storage.name, self.sid, len(idx.taken))
        self.collisions["files"] = len(idx.taken)
        self._files = idx

    @property
    def files(self) -> FilesIndex:
        assert self._files is not None
        return self._files

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
