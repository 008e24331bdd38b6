"""Compaction: the same rows in fewer, larger index and record files.

Many small writes leave many small files (each ArrayRecord file carries a 64 KiB
postscript block, each Parquet file its footer); deletes and upserts leave record files
whose records are partly dead. Compaction reads the branch head's rows once and writes
them as large files, in one snapshot whose new index files are marked ``rewrite``: the
snapshot changes no row, so its per-snapshot diff is empty and materialized views skip
it. Old files stay for older snapshots until ``expire_snapshots`` drops those.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from .manifest import INDEX, RECORD
from .options import FileOptions
from .reads import read
from .storage import Plan, Storage
from .types import JobResult
from .writes import FileWriter

# Rows are written in groups of about this many record bytes: one record file per
# field per group, large enough that per-file overhead vanishes, small enough to
# stream without holding the dataset in memory.
GROUP_BYTES = 512 << 20


def compact(storage: Storage, branch: str, file_options: FileOptions | None = None) -> JobResult:
    st = storage
    options = file_options or FileOptions()

    def plan(base: int) -> Plan | None:
        if compacted(st, base):
            return None
        writer = FileWriter(st, options)
        p = Plan()
        try:
            for group in _groups(st, base, options.max_index_rows):
                for e in writer.write(group):
                    p.added.append({**e, "rewrite": True} if e["kind"] == INDEX else e)
        except BaseException:
            writer.cleanup()
            raise
        p.temp_files += writer.written
        live = st.live_files(base)
        p.removed = live.filter(pc.equal(live.column("kind"), INDEX)).to_pylist()
        return p

    return JobResult.from_snapshot(st, st.commit_snapshot(branch, "compact", plan))


def compacted(st: Storage, sid: int) -> bool:
    """Nothing to gain: one index file, one record file per field, all of it live."""
    live = st.live_files(sid)
    kinds = live.column("kind")
    idx = live.filter(pc.equal(kinds, INDEX))
    rec = live.filter(pc.equal(kinds, RECORD))
    if idx.num_rows > 1 or rec.num_rows > len(st.record_fields):
        return False
    rows = sum(idx.column("rows").to_pylist())
    return all(r == rows for r in rec.column("rows").to_pylist())


def _groups(st: Storage, sid: int, max_rows: int) -> Iterator[pa.Table]:
    pending: list[pa.Table] = []
    rows = nbytes = 0
    for t in read(st, version=sid):
        pending.append(t)
        rows += t.num_rows
        nbytes += t.nbytes
        if rows >= max_rows or nbytes >= GROUP_BYTES:
            yield pa.concat_tables(pending)
            pending, rows, nbytes = [], 0, 0
    if pending:
        yield pa.concat_tables(pending)
