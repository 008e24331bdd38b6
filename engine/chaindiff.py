"""Net row changes along a chain of snapshots, from their change records only.

Every snapshot records what it changed: the keys it deleted (``deleted``) and the index
files it added with new rows (non-``rewrite`` entries of its delta). Replaying those
along the ancestry from ``base`` to ``tip`` gives, per key touched, its final state at
``tip`` (a row, or gone) and whether it existed at ``base``, reading only what the
range wrote: the cost follows the change, never the size of the files it rewrote.
Merges use it for both sides; a diff of two siblings combines the two sides' chains
from their merge base.
"""

from __future__ import annotations

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
    still present at the end."""

    touched: pa.Table
    existed: pa.Table
    new: pa.Table

    def as_row_changes(self) -> RowChanges:
        return RowChanges(self.touched, self.new)


def _added_files(st: Storage, sid: int) -> list[str]:
    delta = st.snapshot(sid).get("delta")
    if not delta:
        return []
    d = st.manifests.read(delta)
    d = d.filter(pc.and_(pc.equal(d.column("status"), ADDED), pc.equal(d.column("kind"), INDEX)))
    return [r["path"] for r in d.select(["path", "rewrite"]).to_pylist() if not r["rewrite"]]


def chain_changes(st: Storage, base: int, tip: int) -> ChainChanges:
    """Net change from ``base`` to its descendant ``tip`` along first parents.

    Raises what ``snapshot_chain`` raises (not an ancestor, an expired snapshot).
    """
    pk = st.primary_keys
    chain = snapshot_chain(st, base, tip)
    dels: list[pa.Table] = []
    adds: list[pa.Table] = []
    for i, sid in enumerate(chain):
        rel = st.snapshot(sid).get("deleted")
        if rel:
            d = st.files.read_table(rel).select(pk)
            dels.append(d.append_column(SEQ, pa.array(np.full(d.num_rows, 2 * i, dtype=np.int64))))
        for path in _added_files(st, sid):
            t = st.files.read_table(path, schema=st.index_schema)
            adds.append(t.append_column(SEQ, pa.array(np.full(t.num_rows, 2 * i + 1, dtype=np.int64))))
    key_schema = pa.schema([st.index_schema.field(k) for k in pk])
    added = pa.concat_tables(adds) if adds else st.index_schema.append(pa.field(SEQ, pa.int64())).empty_table()
    deleted = pa.concat_tables(dels).cast(key_schema.append(pa.field(SEQ, pa.int64()))) if dels else \
        key_schema.append(pa.field(SEQ, pa.int64())).empty_table()
    events = pa.concat_tables([deleted, added.select(pk + [SEQ])])
    if events.num_rows == 0:
        empty = key_schema.empty_table()
        return ChainChanges(empty, empty, st.index_schema.empty_table())
    span = events.group_by(pk, use_threads=False).aggregate([(SEQ, "min"), (SEQ, "max")])
    touched = span.select(pk)
    existed = span.filter(pc.equal(pc.bit_wise_and(span.column(f"{SEQ}_min"), 1), 0)).select(pk)
    # The final row of a key is the add with the key's last event number (a delete has
    # an even number, so a key whose last event is a delete matches no add).
    last = span.select(pk + [f"{SEQ}_max"]).rename_columns(pk + [SEQ])
    i, _ = match_keys(pk + [SEQ], added, last) if added.num_rows else (np.zeros(0, np.int64), None)
    new = added.take(pa.array(np.sort(i))).drop_columns([SEQ]) if len(i) else st.index_schema.empty_table()
    return ChainChanges(touched, existed, new)


def sibling_changes(st: Storage, a: int, b: int, base: int, reader: RecordReader | None = None) -> RowChanges:
    """What turns ``a`` into ``b`` (``base`` their merge base), from both chains.

    Keys only one side touched keep their ``base`` state on the other side: they exist
    there if they existed at ``base``, and ``b``'s row of a key only ``a`` touched is
    looked up in ``b`` (where it is the base row).
    """
    from .writes import key_mask

    pk = st.primary_keys
    ca, cb = chain_changes(st, base, a), chain_changes(st, base, b)
    only_a = _minus(pk, ca.touched, cb.touched)
    only_b = _minus(pk, cb.touched, ca.touched)
    both = _minus(pk, ca.touched, only_a)
    # Rows a has among the touched keys: its new rows, plus base rows of keys only b touched.
    a_keys = pa.concat_tables([ca.new.select(pk), _intersect(pk, only_b, cb.existed)])
    # Rows b has: its new rows, plus base rows of keys only a touched (read from b).
    revert = _intersect(pk, only_a, ca.existed)
    b_rows = cb.new
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
    holds go, the rows ``older`` held for them come back (looked up in ``older``)."""
    cc = chain_changes(st, older, newer)
    back = _lookup(st, older, cc.existed) if cc.existed.num_rows else st.index_schema.empty_table()
    return RowChanges(cc.new.select(st.primary_keys), back)


def _lookup(st: Storage, sid: int, keys: pa.Table) -> pa.Table:
    """Rows (index form) of snapshot ``sid`` with these keys: files pruned by stats,
    the key columns read first, whole rows only from the row groups holding a match."""
    from .writes import key_filter

    out = []
    for entry in st.index_entries(sid, key_filter(keys)):
        t = _lookup_file(st, entry["path"], keys)
        if t is not None and t.num_rows:
            out.append(t)
    return pa.concat_tables(out) if out else st.index_schema.empty_table()


def _lookup_file(st: Storage, path: str, keys: pa.Table) -> pa.Table | None:
    """Rows of one index file with these keys, or None.

    A sibling diff looks up a few keys in a base file of ~100,000 rows: reading it whole
    (through the dataset layer, key column twice) was most of the diff. The file is
    opened once, the key columns read once from the row groups whose key range can hold
    a key, and the other columns only from the row groups holding a match.
    """
    from .writes import key_mask

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
    starts = np.cumsum([0] + [md.row_group(g).num_rows for g in groups])
    hit = [i for i in range(len(groups)) if mask[starts[i]:starts[i + 1]].any()]
    rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in hit])
    keep = mask[rows]
    rest = [n for n in st.index_schema.names if n not in pk]
    other = pf.read_row_groups([groups[i] for i in hit], columns=rest) if rest else None
    key_part = k.take(pa.array(rows[keep]))
    cols = {n: key_part.column(n) for n in pk}
    if other is not None:
        other = other.filter(pa.array(keep))
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
