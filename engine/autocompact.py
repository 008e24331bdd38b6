"""Tiered compaction at commit time: small writes leave few small files.

Each one-row write adds an index file and a record file per record field. Left alone,
1,000 such writes are 2,000 files, and every full scan, compaction or mount listing of
the branch then pays a per-file cost a thousand times over. So a write's commit also
merges small files of its base snapshot, the way the manifest list is kept short
(``manifest.ManifestStore.append``): small files are grouped in tiers by row count
(tier ``t`` holds files of ``2**t`` to ``2**(t+1) - 1`` rows), and once a tier holds
two files they are rewritten as one file of the next tier, except the lowest tier,
which waits for ``FIRST_MERGE_FILES``. After ``n`` one-row writes a branch has about
log2(n) small files, and each row is rewritten about log2(n) times in all, while it
is small.

The merged files are written like a compaction's (``engine/compact.py``): the same rows,
record bytes copied into one new record file per field, and the new index file marked
``rewrite`` while the files it replaces are removed. Diffs, views and merges read a
snapshot's change from its non-``rewrite`` adds and its changes file, so the commit's
change stays exactly the write's own rows (kept in their own file); nothing else needs
to know a merge happened. Older snapshots keep the small files until they expire.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .compact import read_index_files
from .manifest import INDEX, RECORD
from .options import FileOptions
from .reads import resolve_records
from .storage import Plan, Storage
from .writes import FileWriter, recently_written

# Files of a tier merged into one. 2 keeps the fewest files (about log2(n) after n
# one-row writes: a compaction or full scan opens few) at the cost of rewriting each
# small row about log2 of the small-file bound times.
FANOUT = 2
# Files of the lowest tier merged into one. A merge costs about a small write of its
# own (two new files), so merging the smallest files in fours halves the merges (one
# per four small writes) for one more file at rest (measured in simulation: 1,000
# one-row writes leave 10 files instead of 9, and rewrite 4.0 rows per write instead
# of 4.6).
FIRST_MERGE_FILES = 4
# An index file is small below this many rows (one Parquet row group: reading it is
# mostly per-file cost) ...
SMALL_INDEX_ROWS = 8192
# ... and when the record files it references hold less than this many bytes (one
# default ArrayRecord chunk: past it, reading the bytes costs more than opening the
# file, and rewriting them again and again would dominate the write).
SMALL_RECORD_BYTES = 4 << 20


def with_merges(storage: Storage, plan: Callable[[int], Plan | None],
                options: FileOptions | None = None) -> Callable[[int], Plan | None]:
    """``plan`` extended with a merge of small files of the base snapshot.

    Only the first base tried merges: when a concurrent writer moved the branch, the
    retry commits the write alone (a later write merges), so contention does not
    make every attempt redo the merge.
    """
    options = options or FileOptions()
    tried: list[int] = []

    def extended(base: int) -> Plan | None:
        p = plan(base)
        first = not tried
        tried.append(base)
        if p is None or p.empty or not first or not options.merge_small_files:
            return p
        # A copy: plans share lists with their caller (an append's plan is the same
        # list of entries for every base), and a retry must not see this merge.
        out = Plan(added=list(p.added), removed=list(p.removed), deleted=p.deleted, temp_files=list(p.temp_files))
        try:
            add_merge(storage, base, out, options)
        except BaseException:
            storage._discard(p)
            raise
        return out

    return extended


def pick(entries: list[dict[str, Any]], record_bytes: dict[str, int]) -> list[dict[str, Any]]:
    """The small index files to merge into one (none, or at least two).

    The lowest full tier is taken whole (the lowest tier is full with
    ``FIRST_MERGE_FILES`` files, the others with ``FANOUT``); if the merged file then
    lands in a tier that would also be full, that tier joins the same merge (one file
    written per commit, however far the carry goes).
    """
    tiers: dict[int, list[dict[str, Any]]] = {}
    for e in entries:
        if not _small(e, record_bytes):
            continue
        tiers.setdefault(_tier(e["rows"]), []).append(e)
    if not tiers:
        return []
    lowest = min(tiers)
    full = sorted(t for t, files in tiers.items() if len(files) >= (FIRST_MERGE_FILES if t == lowest else FANOUT))
    if not full:
        return []
    chosen = list(tiers.pop(full[0]))
    rows = sum(e["rows"] for e in chosen)
    while True:
        nxt = tiers.get(_tier(rows), [])
        if len(nxt) + 1 < FANOUT:
            break
        tiers.pop(_tier(rows))
        chosen += nxt
        rows += sum(e["rows"] for e in nxt)
    # Oldest rows first, so reads keep the order rows were written in: by the commit
    # that added the file, a merge's output before that commit's own rows.
    return sorted(chosen, key=lambda e: (e["snapshot_id"], not e.get("rewrite"), e["path"]))


def _tier(rows: int) -> int:
    return int(math.log(max(rows, 1), FANOUT) + 1e-9)


def _small(e: dict[str, Any], record_bytes: dict[str, int]) -> bool:
    if not 0 < e["rows"] < SMALL_INDEX_ROWS:
        return False
    files = e.get("record_files") or []
    if any(f not in record_bytes for f in files):
        return False  # a record file the snapshot does not list: leave the file alone
    return sum(record_bytes[f] for f in files) < SMALL_RECORD_BYTES


def add_merge(storage: Storage, base: int, p: Plan, options: FileOptions | None = None) -> None:
    """Add to ``p`` (planned against ``base``) the merge of a tier of small files."""
    st = storage
    # The columns a merge needs: converting every file's min/max structs cost more
    # than deciding what to merge.
    live = st.live_files(base).select(["kind", "path", "rows", "bytes", "snapshot_id", "rewrite", "record_files"])
    kinds = live.column("kind")
    rec = live.filter(pc.equal(kinds, RECORD))
    record_bytes = dict(zip(rec.column("path").to_pylist(), rec.column("bytes").to_pylist(), strict=True))
    gone = {r["path"] for r in p.removed}
    idx = live.filter(pc.equal(kinds, INDEX)).to_pylist()
    chosen = pick([e for e in idx if e["path"] not in gone], record_bytes)
    if not chosen:
        return
    rows = _rows_of(st, chosen)
    writer = FileWriter(st, options)
    try:
        entries = writer.write(rows)
    except BaseException:
        writer.cleanup()
        raise
    p.temp_files += writer.written
    # Before the write's own files: the merged rows are older, and reads follow the
    # order of the file list.
    p.added[:0] = [{**e, "rewrite": True} if e["kind"] == INDEX else e for e in entries]
    p.removed += chosen


def _rows_of(st: Storage, chosen: list[dict[str, Any]]) -> pa.Table:
    """The rows of the ``chosen`` index files in their order, records resolved: from
    what this process wrote lately when it has them, else read in one batch."""
    cached = [recently_written(st.location, e["path"]) for e in chosen]
    missing = [e for e, t in zip(chosen, cached, strict=True) if t is None]
    read = resolve_records(st, read_index_files(st, [e["path"] for e in missing])) if missing else None
    if read is not None and read.num_rows != sum(e["rows"] for e in missing):
        # The manifest's row counts cut the batch into files: never trust them blindly.
        raise RuntimeError(f"{st.name}: index files hold {read.num_rows} rows, their manifest says "
                           f"{sum(e['rows'] for e in missing)}")
    parts, at = [], 0
    for e, t in zip(chosen, cached, strict=True):
        if t is None:
            t = read.slice(at, e["rows"])  # type: ignore[union-attr]
            at += e["rows"]
        parts.append(t.cast(st.schema))
    return pa.concat_tables(parts)
