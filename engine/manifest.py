"""Manifests: Parquet tables with one row per data file, kept as a log-structured list.

A snapshot lists a few manifest files. Each commit writes one small *delta* manifest
(rows with status +1 for files added, -1 for files removed) and appends it to its
parent's list; when the newest manifest is at least as large as the one before it, the
two are merged (adds cancelled by their removes). The list therefore stays
logarithmic in the number of files ever written, and a commit writes an amortised
O(log n) rows: its cost grows with the change, not with the history.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import format as fmt
from .backend import LocalBackend
from .datafiles import DataFiles

ADDED, REMOVED = 1, -1
# Manifests under this many rows are written with lz4, larger ones with zstd (write).
SMALL_MANIFEST_ROWS = 1024
INDEX, RECORD = "index", "record"


def manifest_schema(stats_fields: Sequence[pa.Field]) -> pa.Schema:
    fields = [
        pa.field("status", pa.int8()),
        pa.field("kind", pa.string()),
        pa.field("path", pa.string()),
        pa.field("field", pa.string()),
        pa.field("rows", pa.int64()),
        pa.field("bytes", pa.int64()),
        pa.field("snapshot_id", pa.int64()),
        pa.field("rewrite", pa.bool_()),
        pa.field("record_files", pa.list_(pa.string())),
    ]
    if stats_fields:
        st = pa.struct([pa.field(f.name, f.type) for f in stats_fields])
        fields += [pa.field("min", st), pa.field("max", st)]
    return pa.schema(fields)


def index_entry(path: str, table: pa.Table, nbytes: int, snapshot_id: int, stats_fields: Sequence[pa.Field],
                record_fields: Sequence[str], rewrite: bool = False) -> dict[str, Any]:
    """The manifest row of an index file holding ``table``."""
    rec_files: set[str] = set()
    for f in record_fields:
        for chunk in table.column(f).chunks:  # not combined: that copies every reference
            rec_files.update(pc.unique(chunk.field("file")).drop_null().to_pylist())
    row: dict[str, Any] = {
        "status": ADDED, "kind": INDEX, "path": path, "field": None, "rows": table.num_rows,
        "bytes": nbytes, "snapshot_id": snapshot_id, "rewrite": rewrite, "record_files": sorted(rec_files),
    }
    if stats_fields:
        mins, maxs = {}, {}
        for f in stats_fields:
            col = table.column(f.name)
            if col.null_count:  # no range guarantee for a column with nulls
                mins[f.name] = maxs[f.name] = None
                continue
            mm = pc.min_max(col)
            mins[f.name], maxs[f.name] = mm["min"].as_py(), mm["max"].as_py()
        row["min"], row["max"] = mins, maxs
    return row


def record_entry(path: str, field: str, rows: int, nbytes: int, snapshot_id: int) -> dict[str, Any]:
    return {"status": ADDED, "kind": RECORD, "path": path, "field": field, "rows": rows,
            "bytes": nbytes, "snapshot_id": snapshot_id, "rewrite": False, "record_files": None}


def removal(entry: dict[str, Any]) -> dict[str, Any]:
    # The removal names the add it cancels by (path, snapshot_id): a path can be live
    # again later (restore re-adds an old snapshot's files) without the old removal
    # cancelling the new add.
    return {"status": REMOVED, "kind": entry["kind"], "path": entry["path"], "snapshot_id": entry.get("snapshot_id")}


class ManifestStore:
    """Writes manifests of one dataset and caches them (they never change)."""

    def __init__(self, root: str, schema: pa.Schema, cache_size: int = 64, files: DataFiles | None = None):
        self.root = root
        self.files = files or DataFiles(LocalBackend(root))  # where the Parquet files live
        self.schema = schema
        self._cache: OrderedDict[str, pa.Table] = OrderedDict()
        self._lock = threading.Lock()
        self._cache_size = cache_size

    def write(self, rows: list[dict[str, Any]] | pa.Table) -> dict[str, Any]:
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=self.schema)
        rel = fmt.new_manifest()
        # Manifests are read whole, never pruned by Parquet statistics, and their paths
        # are unique (a dictionary only costs): both off. A manifest of a few rows is
        # mostly per-column overhead, which zstd doubles (decode ~0.45 ms vs ~0.2 ms
        # with lz4) while lz4 keeps it in one 4 KiB block (5.1 KB with zstd and
        # statistics); large ones compress best and decode fastest with zstd
        # (20,000 rows: 0.65 MB and 4 ms, vs 0.8 MB and 33 ms before).
        self.files.write_table(table, rel, compression="lz4" if table.num_rows < SMALL_MANIFEST_ROWS else "zstd",
                               use_dictionary=False, write_statistics=False)
        self._put(rel, table)
        return {"path": rel, "entries": table.num_rows}

    def _put(self, rel: str, table: pa.Table) -> None:
        # Merged manifests are concatenations: without this, a long-lived process caches
        # tables whose chunk count grows with every commit, and each commit slows down.
        table = table.combine_chunks()
        with self._lock:
            self._cache[rel] = table
            self._cache.move_to_end(rel)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def read(self, rel: str) -> pa.Table:
        with self._lock:
            t = self._cache.get(rel)
            if t is not None:
                self._cache.move_to_end(rel)
                return t
        t = self._read(rel)
        self._put(rel, t)
        return t

    def _read(self, rel: str) -> pa.Table:
        """A manifest file whole. Manifests are small: its bytes are read with one call and
        decoded from memory (~0.4 ms; Arrow's dataset layer took ~1.2 ms, and a compaction
        in a fresh process reads every manifest of the head). Manifests written before a
        column existed go through the dataset layer, which fills it with nulls."""
        pf = pq.ParquetFile(pa.BufferReader(self.files.backend.read_bytes(rel)))
        if pf.schema_arrow.names == self.schema.names:
            t = pf.read(use_threads=False)
            if t.schema == self.schema:
                return t
            try:
                return t.cast(self.schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                pass
        return self.files.read_table(rel, schema=self.schema)

    def merged(self, manifests: Sequence[dict[str, Any]]) -> pa.Table:
        """All rows of ``manifests`` with each removal cancelled against its add."""
        if not manifests:
            return self.schema.empty_table()
        t = pa.concat_tables([self.read(m["path"]) for m in manifests])
        return cancel(t)

    def live(self, manifests: Sequence[dict[str, Any]]) -> pa.Table:
        """The data files of a snapshot: added rows never removed."""
        if not manifests:
            return self.schema.empty_table()
        return cancel(pa.concat_tables([self.read(m["path"]) for m in manifests]), adds_only=True)

    def append(self, manifests: Sequence[dict[str, Any]], delta: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        """The manifest list after adding ``delta``, merging tails; returns (list, new files).

        Only the last merge of a cascade is written: no snapshot references the others.
        """
        out: list[dict[str, Any]] = list(manifests) + [delta]
        merged: pa.Table | None = None  # the merge of the tail so far, not yet written
        while len(out) >= 2 and (out[-1]["entries"] >= out[-2]["entries"]
                                 or sum(m["entries"] for m in out) <= SMALL_LIST_ENTRIES):
            # A cascade is computed in memory and only its result written: a commit
            # whose delta is large (a compaction removes every file) merged four levels
            # and wrote four manifests, three of them deleted at once.
            tail = merged if merged is not None else self.read(out[-1]["path"])
            # At the bottom level, removals of nothing older can go.
            merged = cancel(pa.concat_tables([self.read(out[-2]["path"]), tail]), adds_only=len(out) == 2)
            out[-2:] = [{"path": None, "entries": merged.num_rows}]
        if merged is None:
            return out, []
        out[-1] = self.write(merged)
        return out, [out[-1]["path"]]


# A manifest list holding at most this many rows in all is merged into one at each
# commit. A dataset with few live files (small writes merged at commit keep ~20) then
# has one manifest, not the ~log2(commits) of the log-structured rule: a process
# opening a version reads one small file instead of ten (~2.5 ms after 1,000 commits),
# for one more small manifest written per commit.
SMALL_LIST_ENTRIES = 256

# Tables up to this many rows are cancelled in Python: a manifest list of a few
# hundred rows took ~0.7 ms in twenty Arrow calls, ~0.1 ms as sets. Every commit and
# every cold read of a snapshot's files cancels at least once.
SMALL_CANCEL_ROWS = 4096


def cancel(t: pa.Table, adds_only: bool = False) -> pa.Table:
    """``t`` without the adds that a removal in it cancels, nor those removals (nor
    any removal with ``adds_only``: one filter instead of two)."""
    if t.num_rows <= SMALL_CANCEL_ROWS:
        return _cancel_small(t, adds_only)
    t = _cancel_arrow(t)
    return t.filter(pc.equal(t.column("status"), ADDED)) if adds_only else t


def _cancel_small(t: pa.Table, adds_only: bool = False) -> pa.Table:
    status = t.column("status").to_pylist()
    if REMOVED not in status:
        return t if not adds_only or all(s == ADDED for s in status) else t.filter(pc.equal(t.column("status"), ADDED))
    paths = t.column("path").to_pylist()
    # A removal matches the add of the same path and snapshot id; removals written
    # before removals carried the id (null) match every add of their path.
    keys = [None if p is None or sid is None else (p, sid)
            for p, sid in zip(paths, t.column("snapshot_id").to_pylist(), strict=True)]
    rows = list(zip(status, paths, keys, strict=True))
    add_keys = {k for s, _, k in rows if s == ADDED}
    add_paths = {p for s, p, _ in rows if s == ADDED}
    rem_keys = {k for s, _, k in rows if s == REMOVED and k is not None}
    rem_paths = {p for s, p, k in rows if s == REMOVED and k is None}
    keep = []
    for s, p, k in rows:
        if s == ADDED:
            keep.append(not ((k is not None and k in rem_keys) or p in rem_paths))
        elif s == REMOVED and not adds_only:
            keep.append(not (p in add_paths if k is None else k in add_keys))
        else:
            keep.append(not adds_only)
    return t.filter(pa.array(keep, pa.bool_()))


def _cancel_arrow(t: pa.Table) -> pa.Table:
    status = t.column("status")
    is_rem = pc.equal(status, REMOVED)
    if not pc.any(is_rem).as_py():
        return t
    is_add = pc.equal(status, ADDED)
    paths = t.column("path")
    # A removal matches the add of the same path and snapshot id; removals written
    # before removals carried the id (null) match every add of their path.
    keys = pc.binary_join_element_wise(paths, pc.cast(t.column("snapshot_id"), pa.string()), "\x00")
    legacy = pc.and_(is_rem, pc.is_null(keys))
    add_keys = pc.unique(keys.filter(is_add).combine_chunks())
    add_paths = pc.unique(paths.filter(is_add).combine_chunks())
    rem_keys = pc.unique(keys.filter(is_rem).combine_chunks()).drop_null()
    rem_paths = pc.unique(paths.filter(legacy).combine_chunks())
    drop_add = pc.and_(is_add, pc.or_(pc.is_in(keys, value_set=rem_keys), pc.is_in(paths, value_set=rem_paths)))
    drop_rem = pc.and_(is_rem, pc.if_else(legacy, pc.is_in(paths, value_set=add_paths),
                                          pc.fill_null(pc.is_in(keys, value_set=add_keys), False)))
    # Drop adds that are removed, and the removes that cancelled them; keep removes of
    # files added in older manifests than these.
    return t.filter(pc.invert(pc.or_(drop_add, drop_rem)))
