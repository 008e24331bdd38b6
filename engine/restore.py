"""Restore: a new snapshot whose rows are an older version's, history kept.

The new snapshot lists exactly the index files of the restored version: the files it
shares with the branch head stay, the head's others leave, the version's others come
back. No data file is copied or rewritten. Its change record is that of a delete of
the rows in the files that leave, then an add of the rows in the files that come back,
so ``diff`` and materialized views see it as any other write.
"""

from __future__ import annotations

import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .errors import SnapshotExpiredError
from .keydiff import index_files
from .log import Entry
from .manifest import INDEX, RECORD
from .retention import expired
from .storage import Plan, Storage, Version
from .types import JobResult


def restore(storage: Storage, version: Version, branch: str) -> JobResult:
    st = storage
    target = st.resolve(version, branch)

    def plan(base: int) -> Plan | None:
        return plan_file_list(st, base, target)

    def settings(head: Entry) -> dict[str, Any]:
        # An expiry that landed meanwhile may have removed the target's files.
        if target in expired(head):
            raise SnapshotExpiredError(f"{st.name}: snapshot {target} was expired while being restored")
        return head.settings

    snap = st.commit_snapshot(branch, f"restore {target}", plan, settings)
    return JobResult.from_snapshot(st, snap)


def _same_rows(st: Storage, older: int, newer: int) -> bool:
    """True when nothing between ancestor ``older`` and ``newer`` changed a row (only
    compactions): other file lists, same rows."""
    from .chaindiff import chain_changes
    from .errors import SnapshotExpiredError, UserInputError

    try:
        return chain_changes(st, older, newer).touched.num_rows == 0
    except (UserInputError, SnapshotExpiredError):
        return False


def plan_file_list(st: Storage, base: int, target: int) -> Plan | None:
    """The plan that makes ``base``'s file list ``target``'s (None when equal)."""
    have, want = index_files(st, base), index_files(st, target)
    removed = [have[p] for p in sorted(set(have) - set(want))]
    added = [{**want[p], "rewrite": False} for p in sorted(set(want) - set(have))]
    if not removed and not added or _same_rows(st, target, base):
        return None
    p = Plan(removed=removed, added=added)
    needed = {f for a in added for f in (a.get("record_files") or ())}
    if needed:
        live = st.live_files(base)
        listed = set(live.filter(pc.equal(live.column("kind"), RECORD)).column("path").to_pylist())
        missing = sorted(needed - listed)
        if missing:
            src = st.live_files(target)
            rec = src.filter(pc.and_(pc.equal(src.column("kind"), RECORD),
                                     pc.is_in(src.column("path"), value_set=pa.array(missing, pa.string()))))
            p.added += rec.to_pylist()
    if removed:
        keys = pa.concat_tables([st.files.read_table(r["path"], columns=st.primary_keys) for r in removed])
        rel = f"metadata/changes/{uuid.uuid4().hex}.parquet"
        st.files.write_table(keys, rel)
        p.deleted = rel
        p.temp_files.append(rel)
    assert all(r["kind"] == INDEX for r in removed)
    return p
