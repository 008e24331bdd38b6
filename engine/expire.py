"""Snapshot expiry: forget old versions and give their files back.

``expire_snapshots(older_than)`` drops every snapshot created before the cutoff that no
tag or branch names, then removes the files only dropped snapshots used.

Decisions:
- What is kept: tagged snapshots, branch heads, and the merge base of every pair of
  branch heads (a later merge of those branches needs its rows). Other history of a
  branch can be cut: ``diff`` across an expired range compares its two ends by key
  instead of replaying snapshots, and a materialized view that reflected an expired
  source snapshot rebuilds from the source (engine/refresh.py).
- Expiry is a log entry through the commit protocol (``settings["expired"]``, id
  ranges, engine/retention.py): it lands atomically on the head of the moment, so a
  tag or branch created meanwhile protects its snapshot. Snapshot ids are never reused
  (``last_snapshot_id`` only grows); an expired id is gone from ``versions()``, the
  CLI and the mount, and resolving it raises ``SnapshotExpiredError`` (a
  ``VersionNotFoundError``). Snapshot documents stay in the log (a few hundred bytes):
  the ancestry graph remains walkable for merge bases.
- Files are removed only after the entry lands, and only those that no kept snapshot
  lists, computed from the landed state. Writers in flight write new files, which no
  expired snapshot lists, so they are never touched; a restore of a snapshot expired
  meanwhile refuses to commit (engine/restore.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import combinations
from typing import Any

import pyarrow.compute as pc

from .errors import UserInputError
from .history import merge_base
from .log import Entry
from .manifest import INDEX
from .retention import KEY, ExpiredSet
from .storage import Storage

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


@dataclass
class ExpireReport:
    """Snapshots expired (or, in a dry run, that would be) and the files removed."""

    snapshot_ids: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    applied: bool = False

    def __str__(self) -> str:
        verb = "expired" if self.applied else "would expire"
        gone = "removed" if self.applied else "would remove"
        return f"{verb} {len(self.snapshot_ids)} snapshots; {gone} {len(self.files)} files ({self.bytes} bytes)"


def parse_age(value: timedelta | str) -> timedelta:
    """A ``timedelta``, or text like ``30d``, ``12h``, ``0s``, ``1d12h``."""
    if isinstance(value, timedelta):
        delta = value
    elif isinstance(value, str):
        s = value.strip().lower()
        parts = _DURATION.findall(s)
        if not s or "".join(n + u for n, u in parts) != s:
            raise UserInputError(f"bad age {value!r}: use a number and a unit (s, m, h, d, w), like 30d, 12h or 0s")
        delta = timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))
    else:
        raise UserInputError(f"older_than must be a timedelta or text like '30d', got {type(value).__name__}")
    if delta < timedelta(0):
        raise UserInputError(f"older_than must not be negative, got {value!r}")
    return delta


def protected(st: Storage, head: Entry) -> set[int]:
    heads = sorted(set(head.branches.values()))
    keep = set(heads) | set(head.tags.values())
    for a, b in combinations(heads, 2):
        base = merge_base(st, a, b)
        if base is not None:
            keep.add(base)
    return keep


def candidates(st: Storage, head: Entry, cutoff: datetime) -> list[int]:
    gone = ExpiredSet.of(head.settings)
    keep = protected(st, head)
    out = []
    for sid in range(head.last_snapshot_id + 1):
        if sid in gone or sid in keep:
            continue
        if datetime.fromisoformat(st.snapshot(sid)["time"]) < cutoff:
            out.append(sid)
    return out


def expire_snapshots(storage: Storage, older_than: timedelta | str, apply: bool = False) -> ExpireReport:
    """Expire old unnamed snapshots; a dry run unless ``apply``. Example::

        ds.expire_snapshots("30d")               # report only
        ds.expire_snapshots("30d", apply=True)   # expire and remove files
    """
    st = storage
    cutoff = datetime.now(UTC) - parse_age(older_than)
    head = st.head()
    if not apply:
        ids = candidates(st, head, cutoff)
        after = ExpiredSet(ExpiredSet.of(head.settings).union(ids))
        files, nbytes = _removable(st, head.last_snapshot_id, after, ids)
        return ExpireReport(ids, files, nbytes, applied=False)
    chosen: list[int] = []

    def change(h: Entry) -> dict[str, Any] | None:
        ids = candidates(st, h, cutoff)
        if not ids:
            return None
        chosen[:] = ids
        return {"settings": {**h.settings, KEY: ExpiredSet.of(h.settings).union(ids)}}

    entry = st.commit_refs(change, "expire")
    if entry is None:
        return ExpireReport(applied=True)
    files, nbytes = _removable(st, entry.last_snapshot_id, ExpiredSet.of(entry.settings), chosen)
    st.files.remove(files)
    return ExpireReport(list(chosen), files, nbytes, applied=True)


def _removable(st: Storage, last: int, gone: ExpiredSet, ids: list[int]) -> tuple[list[str], int]:
    """Files the snapshots ``ids`` used that no snapshot outside ``gone`` uses."""
    if not ids:
        return [], 0
    keep: set[str] = set()
    for sid in range(last + 1):
        if sid not in gone:
            keep |= _used(st, sid, exact=True)
    maybe: set[str] = set()
    for sid in ids:
        maybe |= _used(st, sid, exact=False)
    files, nbytes = [], 0
    for rel in sorted(maybe - keep):
        try:
            nbytes += st.files.size(rel)
        except FileNotFoundError:
            continue
        files.append(rel)
    return files, nbytes


def _used(st: Storage, sid: int, exact: bool) -> set[str]:
    """Files snapshot ``sid`` needs: its metadata and live data files (``exact``), or
    every path its manifests name (a superset, for what an expired snapshot used)."""
    snap = st.snapshot(sid)
    out = {m["path"] for m in snap.get("manifests") or []}
    out |= {snap[k] for k in ("delta", "deleted") if snap.get(k)}
    tables = [st.live_files(sid)] if exact else [_read(st, m["path"]) for m in snap.get("manifests") or []]
    for t in tables:
        if t is None:
            continue
        out.update(p for p in t.column("path").to_pylist() if p)
        idx = t.filter(pc.equal(t.column("kind"), INDEX)) if exact else t
        for files in idx.column("record_files").to_pylist():
            if files:
                out.update(files)
    return out


def _read(st: Storage, rel: str):
    try:
        return st.manifests.read(rel)
    except FileNotFoundError:
        return None
