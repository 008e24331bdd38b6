"""Changes between two versions, snapshot by snapshot, from each snapshot's delta."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.compute as pc

from .errors import SnapshotExpiredError, UserInputError
from .manifest import ADDED, INDEX
from .reads import read_index_file, resolve_records
from .records import RecordReader
from .retention import expired
from .storage import Storage, Version
from .types import ChangeData, ChangeType


def snapshot_chain(storage: Storage, start: int, end: int) -> list[int]:
    """Snapshots after ``start`` up to ``end`` along ``end``'s ancestry, oldest first.

    Raises ``SnapshotExpiredError`` when a snapshot of the chain was expired: its change
    records may be gone, so callers fall back to comparing the two ends.
    """
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
    gone = expired(storage.head())
    if gone and any(sid in gone for sid in chain):
        raise SnapshotExpiredError(f"{storage.name}: a snapshot between {start} and {end} was expired")
    return chain[::-1]


def diff(storage: Storage, start: Version, end: Version, branch: str = "main",
         reference_read: bool = False) -> Iterator[ChangeData]:
    """Yield DELETE (key columns) then ADD (all columns) changes per snapshot.

    When ``start`` is not an ancestor of ``end`` (sibling branches, an older version, an
    expired range between them), one DELETE and one ADD (snapshot id of ``end``) turn
    ``start``'s rows into ``end``'s, from the index files the two do not share.
    """
    head = storage.head()
    s = storage.resolve(start, branch, head)
    e = storage.resolve(end, branch, head)
    reader = RecordReader(storage.location)
    try:
        chain = snapshot_chain(storage, s, e)
    except (UserInputError, SnapshotExpiredError):
        return _two_point(storage, s, e, reference_read, reader)

    def changes() -> Iterator[ChangeData]:
        for sid in chain:
            snap = storage.snapshot(sid)
            if snap.get("deleted"):
                # Key columns only: a changes file may hold the removed rows whole.
                yield ChangeData(sid, ChangeType.DELETE,
                                 storage.files.read_table(snap["deleted"], columns=storage.primary_keys))
            if not snap.get("delta"):
                continue
            d = storage.manifests.read(snap["delta"])
            added = d.filter(pc.and_(pc.equal(d.column("status"), ADDED), pc.equal(d.column("kind"), INDEX)))
            for row in added.to_pylist():
                if row["rewrite"]:
                    continue
                yield ChangeData(sid, ChangeType.ADD, read_index_file(storage, row["path"], reference_read, reader))

    return changes()


def _two_point(storage: Storage, s: int, e: int, reference_read: bool, reader: RecordReader) -> Iterator[ChangeData]:
    from .chaindiff import backward_changes, sibling_changes
    from .history import merge_base
    from .keydiff import row_changes

    base = merge_base(storage, s, e)
    try:
        if base is None or base == s:
            raise UserInputError("no usable chain")
        if base == e:  # backwards: undo the change records of e..s
            ch = backward_changes(storage, s, e)
        else:  # siblings: replay both sides' change records from their merge base
            ch = sibling_changes(storage, s, e, base, reader)
    except (UserInputError, SnapshotExpiredError):
        ch = row_changes(storage, s, e, reader)  # compare the two file lists

    def changes() -> Iterator[ChangeData]:
        try:
            if ch.old.num_rows:
                yield ChangeData(e, ChangeType.DELETE, ch.old.select(storage.primary_keys))
            if ch.new.num_rows:
                yield ChangeData(e, ChangeType.ADD, ch.new if reference_read else resolve_records(storage, ch.new, reader))
        finally:
            reader.close()

    return changes()
