"""Net row changes along a chain of snapshots, from their change records only.

Every snapshot records what it changed: the rows it deleted (``deleted``: whole rows in
index form, or keys only from restores and older writers) and the index files it added
with new rows (non-``rewrite`` entries of its delta). Replaying those along the
ancestry from ``base`` to ``tip`` gives, per key touched, its final state at ``tip`` (a
row, or gone), whether it existed at ``base`` and, mostly, its row there, reading only
what the range wrote: the cost follows the change, never the size of the files it
rewrote. Merges use it for both sides; a diff of two siblings combines the two sides'
chains from their merge base, and a diff back to an ancestor undoes one chain.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .diff import snapshot_chain
from .keydiff import RowChanges, match_keys, rows_equal
from .manifest import ADDED, INDEX
from .records import RecordReader
from .storage import Storage

SEQ = "__spacefs_seq"


@dataclass
class ChainChanges:
    """``touched``: every key changed in the range (key columns); ``existed``: those of
    them present at the start; ``new``: the final rows (index form) of the touched keys
    still present at the end; ``old``: the rows at the start of the ``existed`` keys
    whose first change recorded the rows it removed (changes files written by row
    removals do); ``unknown``: the ``existed`` keys whose starting rows were not recorded
    (changes files of older writers, of restores: key columns only)."""

    touched: pa.Table
    existed: pa.Table
    new: pa.Table
    old: pa.Table
    unknown: pa.Table

    def as_row_changes(self) -> RowChanges:
        return RowChanges(self.touched, self.new)


def _added_files(st: Storage, sid: int) -> list[str]:
    delta = st.snapshot(sid).get("delta")
    if not delta:
        return []
    d = st.manifests.read(delta)
    d = d.filter(pc.and_(pc.equal(d.column("status"), ADDED), pc.equal(d.column("kind"), INDEX)))
    return [r["path"] for r in d.select(["path", "rewrite"]).to_pylist() if not r["rewrite"]]


def _with_seq(t: pa.Table, seq: int) -> pa.Table:
    return t.append_column(SEQ, pa.array(np.full(t.num_rows, seq, dtype=np.int64)))


def chain_changes(st: Storage, base: int, tip: int) -> ChainChanges:
    """Net change from ``base`` to its descendant ``tip`` along first parents.

    Every event gets a number: 2i for the removals of the i-th snapshot, 2i+1 for its
    added rows. Per key, the smallest number tells whether it existed at ``base`` (a
    removal came first) and which removal holds its starting row; the largest which
    add, if any, holds its final row. One group-by and two joins on the key.

    Raises what ``snapshot_chain`` raises (not an ancestor, an expired snapshot).
    """
    pk = st.primary_keys
    schema = st.index_schema
    seq_field = pa.field(SEQ, pa.int64())
    key_schema = pa.schema([schema.field(k) for k in pk]).append(seq_field)
    dels: list[pa.Table] = []
    olds: list[pa.Table] = []
    adds: list[pa.Table] = []
    for i, sid in enumerate(snapshot_chain(st, base, tip)):
        rel = st.snapshot(sid).get("deleted")
        if rel:
            d = _read(st, rel)
            if d.column_names == schema.names:  # the removed rows whole
                olds.append(_with_seq(d.cast(schema), 2 * i))
            dels.append(_with_seq(d.select(pk), 2 * i).cast(key_schema))
        for path in _added_files(st, sid):
            adds.append(_with_seq(_read(st, path, schema), 2 * i + 1))
    full_schema = schema.append(seq_field)
    added = pa.concat_tables(adds) if adds else full_schema.empty_table()
    removed = pa.concat_tables(olds) if olds else full_schema.empty_table()
    events = pa.concat_tables([*dels, added.select(pk + [SEQ])])
    if events.num_rows == 0:
        empty = key_schema.remove(len(pk)).empty_table()
        return ChainChanges(empty, empty, schema.empty_table(), schema.empty_table(), empty)
    span = events.group_by(pk, use_threads=False).aggregate([(SEQ, "min"), (SEQ, "max")])
    touched = span.select(pk)
    first_del = span.filter(pc.equal(pc.bit_wise_and(span.column(f"{SEQ}_min"), 1), 0))
    existed = first_del.select(pk)
    # The final row of a key is the add with the key's last event number (a delete has
    # an even number, so a key whose last event is a delete matches no add).
    new = _rows_at(pk, added, span.select(pk + [f"{SEQ}_max"]).rename_columns(pk + [SEQ]), schema)
    # The starting row of a key that existed: the removal with its first event number.
    first = first_del.select(pk + [f"{SEQ}_min"]).rename_columns(pk + [SEQ])
    old = _rows_at(pk, removed, first, schema)
    unknown = _minus(pk, existed, old.select(pk)) if old.num_rows else existed
    return ChainChanges(touched, existed, new, old, unknown)


def _rows_at(pk: list[str], rows: pa.Table, wanted: pa.Table, schema: pa.Schema) -> pa.Table:
    """The rows of ``rows`` whose key and event number are in ``wanted`` (one event
    number per key), without the event number column."""
    if rows.num_rows == 0 or wanted.num_rows == 0:
        return schema.empty_table()
    if len(pk) == 1 and pa.types.is_integer(schema.field(pk[0]).type):
        # One integer key: a sorted search instead of a hash join (a tenth of the cost).
        wk = wanted.column(pk[0]).to_numpy()
        ws = wanted.column(SEQ).to_numpy()
        order = np.argsort(wk, kind="stable")
        wk, ws = wk[order], ws[order]
        rk = rows.column(pk[0]).to_numpy()
        at = np.minimum(np.searchsorted(wk, rk), len(wk) - 1)
        i = np.flatnonzero((wk[at] == rk) & (ws[at] == rows.column(SEQ).to_numpy()))
    else:
        i = np.sort(match_keys(pk + [SEQ], rows, wanted)[0])
    if not len(i):
        return schema.empty_table()
    return rows.take(pa.array(i)).drop_columns([SEQ])


def _read(st: Storage, rel: str, schema: pa.Schema | None = None) -> pa.Table:
    """A small change record (a changes file, an added index file) whole, read in this
    thread: the dataset layer's set-up and thread hand-offs cost more than the read.
    Files without ``schema``'s columns (written before a schema change) go through the
    dataset layer, which fills in the missing ones."""
    pf = st.files.parquet_file(rel)
    if schema is not None and pf.schema_arrow.names != schema.names:
        return st.files.read_table(rel, schema=schema)
    t = pf.read(use_threads=False)
    return t if schema is None or t.schema == schema else t.cast(schema)


def sibling_changes(st: Storage, a: int, b: int, base: int, reader: RecordReader | None = None) -> RowChanges:
    """What turns ``a`` into ``b`` (``base`` their merge base), from both chains.

    Keys only one side touched keep their ``base`` state on the other side: they exist
    there if they existed at ``base``, and ``b``'s row of a key only ``a`` touched is
    its ``base`` row: recorded by ``a``'s first change of it, else looked up in ``b``.
    """
    from .writes import key_mask

    pk = st.primary_keys
    ca, cb = chain_changes(st, base, a), chain_changes(st, base, b)
    only_a = _minus(pk, ca.touched, cb.touched)
    only_b = _minus(pk, cb.touched, ca.touched)
    both = _minus(pk, ca.touched, only_a)
    # Rows a has among the touched keys: its new rows, plus base rows of keys only b touched.
    a_keys = pa.concat_tables([ca.new.select(pk), _intersect(pk, only_b, cb.existed)])
    # Rows b has: its new rows, plus base rows of keys only a touched.
    b_rows = pa.concat_tables([cb.new, _intersect(pk, ca.old, only_a)])
    revert = _intersect(pk, only_a, ca.unknown)
    if revert.num_rows:
        b_rows = pa.concat_tables([b_rows, _lookup(st, b, revert)])
    # Keys both touched whose final rows are equal cancel.
    same = pa.table({k: pa.array([], st.index_schema.field(k).type) for k in pk})
    if both.num_rows and ca.new.num_rows and cb.new.num_rows:
        i, j = match_keys(pk, ca.new, cb.new)
        if len(i):
            eq = rows_equal(st, ca.new.take(pa.array(i)), cb.new.take(pa.array(j)), reader)
            same = ca.new.take(pa.array(i[eq])).select(pk)
            same = same.filter(pa.array(key_mask(same, both))) if same.num_rows else same
    old = a_keys
    if same.num_rows:
        old = old.filter(pa.array(~key_mask(old, same)))
        b_rows = b_rows.filter(pa.array(~key_mask(b_rows, same)))
    return RowChanges(old, b_rows)


def backward_changes(st: Storage, newer: int, older: int) -> RowChanges:
    """What turns ``newer`` back into its ancestor ``older``: the touched keys ``newer``
    holds go, the rows ``older`` held for them come back (recorded by the first change
    of each key, else looked up in ``older``)."""
    cc = chain_changes(st, older, newer)
    back = cc.old
    if cc.unknown.num_rows:
        back = pa.concat_tables([back, _lookup(st, older, cc.unknown)])
    return RowChanges(cc.new.select(st.primary_keys), back)


# Files of a lookup are searched by this many threads (Parquet decoding releases the GIL).
LOOKUP_THREADS = 2


def _lookup(st: Storage, sid: int, keys: pa.Table) -> pa.Table:
    """Rows (index form) of snapshot ``sid`` with these keys: files pruned by stats,
    the key columns read first, whole rows only from the row groups holding a match."""
    from .writes import key_filter

    paths = [e["path"] for e in st.index_entries(sid, key_filter(keys))]
    if len(paths) > 1:
        with ThreadPoolExecutor(min(LOOKUP_THREADS, len(paths))) as ex:
            found = list(ex.map(lambda p: _lookup_file(st, p, keys), paths))
    else:
        found = [_lookup_file(st, p, keys) for p in paths]
    out = [t for t in found if t is not None and t.num_rows]
    return pa.concat_tables(out) if out else st.index_schema.empty_table()


def _lookup_file(st: Storage, path: str, keys: pa.Table) -> pa.Table | None:
    """Rows of one index file with these keys, or None.

    A sibling diff looks up a few keys (1% of the rows, spread everywhere) in files of
    ~100,000 rows, so nearly every row group holds one: the cost is decoding the other
    columns. The key columns are read once, from the row groups whose key range can
    hold a key; the other columns only from row groups holding a match, one group at a
    time (matches taken before the next group is decoded), with the dictionary-encoded
    columns (strings, record file names) decoded as dictionaries: building every
    string of a group was most of a lookup (measured ~4x slower).
    """
    from .writes import dictionary_columns, key_mask

    pk = st.primary_keys
    pf = st.files.parquet_file(path)
    if pf.schema_arrow.names != st.index_schema.names:
        # Written before a schema change: let the dataset layer fill missing columns.
        t = st.files.read_table(path, schema=st.index_schema)
        return t.filter(pa.array(key_mask(t.select(pk), keys)))
    md = pf.metadata
    groups = _candidate_groups(md, pk, keys)
    if not groups:
        return None
    k = pf.read_row_groups(groups, columns=pk, use_threads=False)
    mask = key_mask(k, keys)
    if not mask.any():
        return None
    rest = [n for n in st.index_schema.names if n not in pk]
    leaves = {c.path for c in pf.schema}
    wanted = [c for c in dictionary_columns(st) if c in leaves]
    dpf = st.files.parquet_file(path, metadata=md, read_dictionary=wanted) if rest and wanted else pf
    starts = np.cumsum([0] + [md.row_group(g).num_rows for g in groups])
    key_parts, rest_parts = [], []
    for i, g in enumerate(groups):
        hit = np.flatnonzero(mask[starts[i]:starts[i + 1]])
        if not len(hit):
            continue
        key_parts.append(k.take(pa.array(starts[i] + hit)))
        if rest:
            rest_parts.append(dpf.read_row_group(g, columns=rest, use_threads=False).take(pa.array(hit)))
    key_part = pa.concat_tables(key_parts)
    cols = {n: key_part.column(n) for n in pk}
    if rest:
        other = pa.concat_tables(rest_parts)
        cols.update({n: other.column(n) for n in rest})
    return pa.table([cols[n] for n in st.index_schema.names], names=st.index_schema.names).cast(st.index_schema)


def _candidate_groups(md: pq.FileMetaData, pk: list[str], keys: pa.Table) -> list[int]:
    """Row groups whose min/max statistics of a single integer key can hold one of
    ``keys``; every row group when the key is composite or has no statistics."""
    every = list(range(md.num_row_groups))
    if len(pk) != 1 or not pa.types.is_integer(keys.schema.field(pk[0]).type):
        return every
    col = md.schema.names.index(pk[0]) if pk[0] in md.schema.names else -1
    if col < 0:
        return every
    wanted = np.sort(keys.column(pk[0]).to_numpy(zero_copy_only=False))
    out = []
    for g in every:
        stats = md.row_group(g).column(col).statistics
        if stats is None or not stats.has_min_max:
            out.append(g)
            continue
        i = np.searchsorted(wanted, stats.min, side="left")
        if i < len(wanted) and wanted[i] <= stats.max:
            out.append(g)
    return out


def _minus(pk: list[str], a: pa.Table, b: pa.Table) -> pa.Table:
    from .writes import key_mask

    if a.num_rows == 0 or b.num_rows == 0:
        return a
    return a.filter(pa.array(~key_mask(a, b)))


def _intersect(pk: list[str], a: pa.Table, b: pa.Table) -> pa.Table:
    from .writes import key_mask

    if a.num_rows == 0 or b.num_rows == 0:
        return a.slice(0, 0)
    return a.filter(pa.array(key_mask(a, b)))
