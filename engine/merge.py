"""Three-way merge of two branches by primary key.

From the merge base (newest common ancestor, engine/history.py), each side's change is
computed by key from the index files that differ (engine/keydiff.py): cost follows the
rows changed since the base. For every key the source changed:

- unchanged on ``into``: the source's final state is applied (upsert its row, or
  delete the key);
- changed on ``into`` to the same final state: nothing to do;
- changed differently (update/update, update/delete, two different inserts): a
  conflict, resolved by ``on_conflict`` ("fail" raises ``MergeConflictError`` with the
  keys and changes nothing, "ours" keeps into's row, "theirs" takes source's).

The result is one snapshot on ``into`` committed like every write (plan recomputed on
the new head when a concurrent writer lands first) whose doc names the source snapshot
as ``merge_parent``, so the next merge starts from it. The new index rows point at the
source's record files: no record bytes are copied.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import (
    CommitConflictError,
    MergeConflictError,
    SnapshotExpiredError,
    UserInputError,
    VersionNotFoundError,
)
from .history import merge_base
from .keydiff import RowChanges, match_keys, row_changes, rows_equal
from .log import Entry
from .manifest import RECORD
from .options import FileOptions
from .records import RecordReader
from .storage import Plan, Storage, Version
from .types import JobResult
from .writes import FileWriter, RowRemover, key_filter, key_mask

MODES = ("fail", "ours", "theirs")
MAX_ATTEMPTS = 16


class _Moved(Exception):
    """``into`` moved in a way that changes the kind of merge: start over."""


def merge(storage: Storage, source: Version, into: str, on_conflict: str = "fail",
          file_options: FileOptions | None = None) -> JobResult:
    if on_conflict not in MODES:
        raise UserInputError(f"on_conflict must be one of {', '.join(MODES)}, got {on_conflict!r}")
    st = storage
    for _ in range(MAX_ATTEMPTS):
        head = st.head()
        if into not in head.branches:
            raise VersionNotFoundError(f"{st.name}: no branch named {into!r}")
        ours = head.branches[into]
        theirs = st.resolve(source, into, head)
        base = merge_base(st, ours, theirs)
        if base == theirs:
            return JobResult.skipped()  # the source is already part of into
        if base == ours:
            try:
                return _fast_forward(st, into, ours, theirs, source)
            except _Moved:
                continue
        try:
            return _three_way(st, into, theirs, on_conflict, file_options)
        except _Moved:
            continue
    raise CommitConflictError(f"{st.name}: merge into {into!r} lost to concurrent writers {MAX_ATTEMPTS} times")


def _fast_forward(st: Storage, into: str, ours: int, theirs: int, source: Version) -> JobResult:
    def change(h: Entry) -> dict[str, Any]:
        if h.branches.get(into) != ours:
            raise _Moved()
        return {"branches": {**h.branches, into: theirs}}

    st.commit_refs(change, f"merge {source} into {into} (fast-forward)")
    stats = st.snapshot(theirs)["stats"]
    before = st.snapshot(ours)["stats"]
    return JobResult(JobResult.State.SUCCEEDED, {k: v - before.get(k, 0) for k, v in stats.items()}, None, theirs,
                     fast_forward=True)


def _three_way(st: Storage, into: str, theirs: int, on_conflict: str, file_options: FileOptions | None) -> JobResult:
    reader = RecordReader(st.location)
    theirs_cache: dict[int, RowChanges] = {}

    def plan(ours: int) -> Plan | None:
        base = merge_base(st, ours, theirs)
        if base == theirs:
            return None
        if base == ours:
            raise _Moved()  # into went back to an ancestor of the source: fast-forward instead
        if base not in theirs_cache:
            theirs_cache.clear()
            theirs_cache[base] = changes_since(st, base, theirs, reader)
        return plan_merge(st, theirs_cache[base], changes_since(st, base, ours, reader), ours, theirs, on_conflict,
                          file_options, reader)

    try:
        snap = st.commit_snapshot(into, "merge", plan, snapshot_extra={"merge_parent": theirs}, keep_empty=True)
    finally:
        reader.close()
    return JobResult.from_snapshot(st, snap)


def changes_since(st: Storage, base: int, tip: int, reader: RecordReader) -> RowChanges:
    """The keys ``tip`` changed since its ancestor ``base`` and their final rows: from
    the snapshots' change records when ``base`` is on ``tip``'s first-parent line, else
    by comparing the two file lists."""
    from .chaindiff import chain_changes

    try:
        return chain_changes(st, base, tip).as_row_changes()
    except (UserInputError, SnapshotExpiredError):
        return row_changes(st, base, tip, reader)


def _final(ch: RowChanges, keys: list[str], wanted: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``wanted`` (keys): index of its row in ``ch.new`` or -1 (deleted)."""
    idx = np.full(wanted.num_rows, -1, dtype=np.int64)
    if ch.new.num_rows and wanted.num_rows:
        i, j = match_keys(keys, wanted, ch.new)
        idx[i] = j
    return idx


def plan_merge(st: Storage, t: RowChanges, o: RowChanges, ours: int, theirs: int, on_conflict: str,
               file_options: FileOptions | None, reader: RecordReader) -> Plan:
    """Apply the source's changes ``t`` on snapshot ``ours`` whose own changes are ``o``."""
    pk = st.primary_keys
    # Every key the source touched, once: its final row (or deletion) on each side.
    tkeys = _distinct(pa.concat_tables([t.old.select(pk), t.new.select(pk)]))
    okeys = _distinct(pa.concat_tables([o.old.select(pk), o.new.select(pk)]))
    t_row = _final(t, pk, tkeys)
    both = np.zeros(tkeys.num_rows, dtype=bool)
    if okeys.num_rows and tkeys.num_rows:
        both[key_mask(tkeys, okeys)] = True
    o_row = _final(o, pk, tkeys)
    # Changed on both sides: the same final state is agreement, anything else a conflict.
    conflict = np.zeros(tkeys.num_rows, dtype=bool)
    bi = np.flatnonzero(both)
    if len(bi):
        tr, orow = t_row[bi], o_row[bi]
        differ = (tr < 0) != (orow < 0)
        rows = np.flatnonzero((tr >= 0) & (orow >= 0))
        if len(rows):
            same = rows_equal(st, t.new.take(pa.array(tr[rows])), o.new.take(pa.array(orow[rows])), reader)
            differ[rows] = ~same
        conflict[bi] = differ
    if conflict.any() and on_conflict == "fail":
        keys = tkeys.filter(pa.array(conflict))
        raise MergeConflictError(f"{st.name}: merge conflict on {keys.num_rows} keys, e.g. "
                                 f"{keys.slice(0, 1).to_pylist()[0]}; pass on_conflict='ours' or 'theirs'", keys)
    apply = ~both | (conflict & (on_conflict == "theirs"))
    keys = tkeys.filter(pa.array(apply))
    p = Plan()
    if keys.num_rows == 0:
        return p
    writer = FileWriter(st, file_options)
    try:
        RowRemover(st, writer).remove(ours, key_filter(keys), lambda f: key_mask(f, keys), p, mask_columns=pk)
        rows = t_row[apply]
        rows = rows[rows >= 0]
        if len(rows):
            new = t.new.take(pa.array(rows))
            entry = writer.write_index(new)
            p.temp_files += writer.written
            writer.written.clear()
            p.added.append(entry)
            p.added += _missing_records(st, ours, theirs, entry.get("record_files") or [])
    except BaseException:
        writer.cleanup()
        st.files.remove(p.temp_files)
        raise
    return p


def _missing_records(st: Storage, ours: int, theirs: int, needed: list[str]) -> list[dict[str, Any]]:
    """Manifest rows for record files the new index rows use that ``ours`` does not list
    (the source head lists every record file its live rows point at)."""
    if not needed:
        return []
    live = st.live_files(ours)
    have = set(live.filter(pc.equal(live.column("kind"), RECORD)).column("path").to_pylist())
    missing = [r for r in needed if r not in have]
    if not missing:
        return []
    src = st.live_files(theirs)
    rows = src.filter(pc.and_(pc.equal(src.column("kind"), RECORD),
                              pc.is_in(src.column("path"), value_set=pa.array(missing, pa.string()))))
    return rows.to_pylist()


def _distinct(t: pa.Table) -> pa.Table:
    if t.num_rows < 2:
        return t
    return t.group_by(t.column_names, use_threads=False).aggregate([])


