"""Changes between two versions, snapshot by snapshot, from each snapshot's delta."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import UserInputError
from .manifest import ADDED, INDEX
from .reads import read_index_file
from .records import RecordReader
from .storage import Storage, Version
from .types import ChangeData, ChangeType


def snapshot_chain(storage: Storage, start: int, end: int) -> list[int]:
    """Snapshots after ``start`` up to ``end`` along ``end``'s ancestry, oldest first."""
    chain = []
    sid: int | None = end
    while sid is not None and sid != start:
        if sid < start:
            sid = None
            break
        chain.append(sid)
        sid = storage.snapshot(sid)["parent"]
    if sid is None:
        raise UserInputError(f"{storage.name}: version {start} is not an ancestor of version {end}")
    return chain[::-1]


def diff(storage: Storage, start: Version, end: Version, branch: str = "main",
         reference_read: bool = False) -> Iterator[ChangeData]:
    """Yield DELETE (key columns) then ADD (all columns) changes per snapshot."""
    head = storage.head()
    s = storage.resolve(start, branch, head)
    e = storage.resolve(end, branch, head)
    chain = snapshot_chain(storage, s, e)
    reader = RecordReader(storage.location)

    def changes() -> Iterator[ChangeData]:
        for sid in chain:
            snap = storage.snapshot(sid)
            if snap.get("deleted"):
                yield ChangeData(sid, ChangeType.DELETE, pq.read_table(storage.full_path(snap["deleted"])))
            if not snap.get("delta"):
                continue
            d = storage.manifests.read(snap["delta"])
            added = d.filter(pc.and_(pc.equal(d.column("status"), ADDED), pc.equal(d.column("kind"), INDEX)))
            for row in added.to_pylist():
                if row["rewrite"]:
                    continue
                yield ChangeData(sid, ChangeType.ADD, read_index_file(storage, row["path"], reference_read, reader))

    return changes()
