"""Row changes between any two snapshots, by primary key, from the files that differ.

Two snapshots share most of their index files (a write rewrites only the files it
touches), and a file in both lists holds the same rows in both. So only the files in
one list and not the other are read: ``old`` rows (files only ``a`` has) and ``new``
rows (files only ``b`` has). Rows of the same key on both sides that are equal cancel
(a delete's survivor rewrite, a compaction); the rest is the change. The cost follows
the change, not the dataset.

Rows compare by index columns and by record *content*: equal references are equal
without a read; records are read only for keys whose index columns match but whose
references differ (a rewrite of the same bytes, e.g. after compaction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .manifest import INDEX
from .records import RecordReader
from .storage import Storage

ROW = "__spacefs_row"


@dataclass
class RowChanges:
    """``old``: rows of ``a`` deleted or changed; ``new``: rows of ``b`` added or changed
    (index form: record fields are references)."""

    old: pa.Table
    new: pa.Table

    @property
    def empty(self) -> bool:
        return self.old.num_rows == 0 and self.new.num_rows == 0


def index_files(storage: Storage, sid: int) -> dict[str, dict[str, Any]]:
    t = storage.live_files(sid)
    t = t.filter(pc.equal(t.column("kind"), INDEX))
    return {r["path"]: r for r in t.to_pylist()}


def read_index_rows(storage: Storage, paths: list[str]) -> pa.Table:
    if not paths:
        return storage.index_schema.empty_table()
    return pa.concat_tables([storage.files.read_table(p, schema=storage.index_schema) for p in paths])


def row_changes(storage: Storage, a: int, b: int, reader: RecordReader | None = None) -> RowChanges:
    """What turns snapshot ``a``'s rows into ``b``'s, by primary key."""
    if a == b:
        empty = storage.index_schema.empty_table()
        return RowChanges(empty, empty)
    fa, fb = index_files(storage, a), index_files(storage, b)
    old = read_index_rows(storage, sorted(set(fa) - set(fb)))
    new = read_index_rows(storage, sorted(set(fb) - set(fa)))
    own = reader is None
    reader = reader or RecordReader(storage.location)
    try:
        return cancel_equal(storage, old, new, reader)
    finally:
        if own:
            reader.close()


def cancel_equal(storage: Storage, old: pa.Table, new: pa.Table, reader: RecordReader | None = None) -> RowChanges:
    """Drop the pairs of rows with the same key and equal content from both sides."""
    if old.num_rows == 0 or new.num_rows == 0:
        return RowChanges(old, new)
    pairs = match_keys(storage.primary_keys, old, new)
    if len(pairs[0]) == 0:
        return RowChanges(old, new)
    io, jn = pairs
    same = rows_equal(storage, old.take(io), new.take(jn), reader)
    keep_old = np.ones(old.num_rows, dtype=bool)
    keep_new = np.ones(new.num_rows, dtype=bool)
    keep_old[io[same]] = False
    keep_new[jn[same]] = False
    return RowChanges(old.filter(pa.array(keep_old)), new.filter(pa.array(keep_new)))


def match_keys(keys: list[str], left: pa.Table, right: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Row index pairs (i in ``left``, j in ``right``) with equal primary keys."""
    lt = left.select(keys).append_column(ROW + "l", pa.array(np.arange(left.num_rows, dtype=np.int64)))
    rt = right.select(keys).append_column(ROW + "r", pa.array(np.arange(right.num_rows, dtype=np.int64)))
    j = lt.join(rt, keys=keys, join_type="inner", use_threads=False)
    return (j.column(ROW + "l").to_numpy().astype(np.int64, copy=False),
            j.column(ROW + "r").to_numpy().astype(np.int64, copy=False))


def rows_equal(storage: Storage, a: pa.Table, b: pa.Table, reader: RecordReader | None = None) -> np.ndarray:
    """Row-wise equality of two aligned tables of index rows (records by content)."""
    n = a.num_rows
    eq = np.ones(n, dtype=bool)
    for name in storage.index_fields:
        eq &= column_equal(a.column(name), b.column(name))
    recs = storage.record_fields
    if not recs or not eq.any():
        return eq
    same_ref = eq.copy()
    for name in recs:
        ca, cb = a.column(name).combine_chunks(), b.column(name).combine_chunks()
        same_ref &= column_equal(ca.field("file"), cb.field("file")) & column_equal(ca.field("pos"), cb.field("pos")) \
            & column_equal(ca.is_null(), cb.is_null())
    check = np.flatnonzero(eq & ~same_ref)
    if len(check):
        own = reader is None
        reader = reader or RecordReader(storage.location)
        try:
            idx = pa.array(check)
            for name in recs:
                ra = a.column(name).combine_chunks().take(idx)
                rb = b.column(name).combine_chunks().take(idx)
                eq[check] &= column_equal(reader.read_refs(ra), reader.read_refs(rb)) & column_equal(ra.is_null(), rb.is_null())
        finally:
            if own:
                reader.close()
    return eq


def column_equal(a: pa.Array | pa.ChunkedArray, b: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Element-wise equality where two nulls are equal; nested types compare as Python."""
    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks()
    if isinstance(b, pa.ChunkedArray):
        b = b.combine_chunks()
    t = a.type
    if pa.types.is_struct(t):
        eq = np.ones(len(a), dtype=bool)
        for i in range(t.num_fields):
            eq &= column_equal(a.field(i), b.field(i))
        return eq & column_equal(a.is_null(), b.is_null())
    try:
        e = pc.equal(a, b)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return np.array([x == y for x, y in zip(a.to_pylist(), b.to_pylist(), strict=True)], dtype=bool)
    both_null = pc.and_(a.is_null(), b.is_null())
    return pc.fill_null(pc.or_kleene(e, both_null), False).to_numpy(zero_copy_only=False)
