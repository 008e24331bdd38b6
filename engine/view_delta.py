"""The net change of a source dataset between two snapshots, as a view consumes it.

A view's change between two versions is a ``Delta``: first delete every old row whose
columns match a row of one of the ``deletes`` key tables, then add the rows the
``adds`` parts yield. Deletes name rows by (a subset of) the view's primary key, so a
join can say "every row made from left row 7" without knowing which rows those were.

For a dataset the delta comes straight from the snapshots' own change records: along
the ancestry from ``start`` to ``end``, the deleted-key files and the index files each
snapshot added. Rows added and deleted again within the range are dropped, so every
added row is a row of ``end``. The work is proportional to the change: no file that
the range did not write is read. When ``start`` is not an ancestor of ``end`` (the view
moved to another branch, or back to an older tag) the delta goes through their common
ancestor: every key touched on either path is deleted and looked up afresh in ``end``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from .diff import snapshot_chain
from .errors import SnapshotExpiredError, UserInputError
from .manifest import ADDED, INDEX
from .retention import expired
from .view_parts import Ctx, Excluding, FileRange, Part, Rows, slices, unique_rows

if TYPE_CHECKING:
    from .views import Source


@dataclass
class Delta:
    """Deletes (key tables over the view's primary key columns) then adds (parts).

    ``from_empty``: the view was empty at the start, so there is nothing to delete and
    the adds are the whole content at the end.
    """

    deletes: list[pa.Table] = field(default_factory=list)
    adds: list[Part] = field(default_factory=list)
    from_empty: bool = False


def merge_deletes(tables: list[pa.Table]) -> list[pa.Table]:
    """One distinct key table per column set."""
    groups: dict[tuple[str, ...], list[pa.Table]] = {}
    for t in tables:
        if t.num_rows:
            groups.setdefault(tuple(t.column_names), []).append(t)
    return [unique_rows(pa.concat_tables(g, promote_options="permissive")) for g in groups.values()]


def source_delta(src: Source, ctx: Ctx, start: int, end: int) -> Delta:
    st = src.storage
    if start == end:
        return Delta()
    if st.snapshot(start)["stats"]["rows"] == 0:
        return Delta(adds=list(src.scan_parts(ctx, end)), from_empty=True)
    try:
        chain = snapshot_chain(st, start, end)
    except UserInputError:
        return _divergent_delta(src, ctx, start, end)
    except SnapshotExpiredError:
        return _two_point_delta(src, ctx, start, end)
    pk = st.primary_keys
    deleted: list[tuple[int, pa.Table]] = []
    for sid in chain:
        rel = st.snapshot(sid).get("deleted")
        if rel:
            deleted.append((sid, st.files.read_table(rel).select(pk)))
    adds: list[Part] = []
    for sid in chain:
        later = [t for s, t in deleted if s > sid]
        drop = merge_deletes(later)[0] if later else None
        for row in _added_index_files(src, sid):
            part: Part = FileRange(st.location, row["path"], st.index_schema, rows=row["rows"])
            adds.append(Excluding(part, drop) if drop is not None else part)
    return Delta(deletes=merge_deletes([t for _, t in deleted]), adds=adds)


def _added_index_files(src: Source, sid: int) -> list[dict]:
    """Index files snapshot ``sid`` added with new rows (not rewrites after deletes)."""
    st = src.storage
    delta = st.snapshot(sid).get("delta")
    if not delta:
        return []
    d = st.manifests.read(delta)
    d = d.filter(pc.and_(pc.equal(d.column("status"), ADDED), pc.equal(d.column("kind"), INDEX)))
    return [r for r in d.select(["path", "rows", "rewrite"]).to_pylist() if not r["rewrite"]]


def common_ancestor(src: Source, a: int, b: int) -> int:
    """Parents have smaller ids than children: step the larger id up until they meet."""
    st = src.storage
    while a != b:
        if a > b:
            a = st.snapshot(a)["parent"]
        else:
            b = st.snapshot(b)["parent"]
        if a is None or b is None:
            return 0
    return a


def _two_point_delta(src: Source, ctx: Ctx, start: int, end: int) -> Delta:
    """The change between two snapshots whose path was (partly) expired: compared by
    key from the index files they do not share. Needs ``start``'s file list: when it
    was expired too, ``SnapshotExpiredError`` tells the caller to start afresh."""
    from .keydiff import row_changes

    st = src.storage
    if start in expired(st.head()):
        raise SnapshotExpiredError(f"{st.name}: snapshot {start} was expired")
    ch = row_changes(st, start, end)
    keys = merge_deletes([ch.old.select(st.primary_keys), ch.new.select(st.primary_keys)])
    if not keys:
        return Delta()
    return Delta(deletes=keys, adds=[Rows(t) for t in slices(ch.new, ctx.part_rows or 1 << 20)])


def _divergent_delta(src: Source, ctx: Ctx, start: int, end: int) -> Delta:
    try:
        return _divergent_chains(src, ctx, start, end)
    except SnapshotExpiredError:
        return _two_point_delta(src, ctx, start, end)


def _divergent_chains(src: Source, ctx: Ctx, start: int, end: int) -> Delta:
    st = src.storage
    pk = st.primary_keys
    base = common_ancestor(src, start, end)
    touched: list[pa.Table] = []
    for tip in (start, end):
        for sid in snapshot_chain(st, base, tip):
            rel = st.snapshot(sid).get("deleted")
            if rel:
                touched.append(st.files.read_table(rel).select(pk))
            for row in _added_index_files(src, sid):
                touched.append(st.files.read_table(row["path"], columns=pk))
    keys = merge_deletes(touched)
    if not keys:
        return Delta()
    found = src.lookup_rows(end, keys[0])
    return Delta(deletes=keys, adds=[Rows(t) for t in slices(found, ctx.part_rows or 1 << 20)])
