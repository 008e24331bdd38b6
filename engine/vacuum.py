"""Vacuum: remove files that no snapshot references, after a retention period.

Writers put data files (``data/``), manifests and deleted-key files (``metadata/``) on
disk *before* their commit lands; a writer that crashes or loses leaves them behind. Such
files are harmless (nothing points at them) but take space. ``vacuum`` finds them.

Why it is safe next to live writers and readers:
- Files are listed first, the referenced set is computed after, from every snapshot up to
  the head read *after* the listing. A commit that landed before that read protects its
  files; a commit landing later can only reference files written by a writer still in
  flight, and those are younger than the retention period, so they are kept.
- Nothing referenced by any snapshot (of any branch, tagged or not) is ever removed, so
  time travel to every snapshot keeps working. The log, snapshot links and
  ``dataset.json`` are never touched.
- It is a dry run unless ``apply=True`` (as delta-rs does): destructive maintenance
  must be asked for.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import NamedTuple

from . import format as fmt
from .errors import UserInputError
from .retention import expired
from .storage import Storage

# Directories (relative to the dataset) whose files belong to snapshots.
DATA_DIRS = fmt.COLLECTABLE_DIRS
LOG_DIR = fmt.LOG_DIR
TMP_PREFIX = ".tmp-"


@dataclass
class VacuumReport:
    """What a vacuum found (dry run) or removed (``applied``).

    ``files`` are relative paths of unreferenced files older than the retention period;
    ``bytes`` their total size. ``kept_recent`` counts unreferenced files kept because
    they are younger than the retention period (possibly an in-flight writer's).
    """

    files: list[str] = field(default_factory=list)
    bytes: int = 0
    applied: bool = False
    kept_recent: int = 0
    snapshots: int = 0

    def __str__(self) -> str:
        verb = "removed" if self.applied else "would remove"
        return f"{verb} {len(self.files)} files ({self.bytes} bytes); kept {self.kept_recent} recent unreferenced files"


def _progress(it: Iterable, total: int, desc: str, unit: str = "snap") -> Iterator:
    """``it`` with a tqdm bar on a terminal, plain otherwise."""
    if not sys.stderr.isatty():
        return iter(it)
    from tqdm import tqdm

    return iter(tqdm(it, total=total, desc=desc, unit=unit, leave=False))


def _candidates(root: str) -> list[tuple[str, os.stat_result]]:
    """Files vacuum may remove, with their stat: data and metadata files, log temps."""
    out = []
    for d in DATA_DIRS:
        base = os.path.join(root, d)
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                full = os.path.join(dirpath, name)
                try:
                    out.append((os.path.relpath(full, root), os.lstat(full)))
                except FileNotFoundError:
                    pass
    log = os.path.join(root, LOG_DIR)
    try:
        names = os.listdir(log)
    except FileNotFoundError:
        names = []
    for name in names:
        if name.startswith(TMP_PREFIX):
            try:
                out.append((f"{LOG_DIR}/{name}", os.lstat(os.path.join(log, name))))
            except FileNotFoundError:
                pass
    return out


class _Listed(NamedTuple):
    st_size: int
    st_mtime: float  # an object's last-modified time: when its upload completed


def _remote_candidates(storage: Storage) -> list[tuple[str, _Listed]]:
    """The same files in a bucket: one listing per directory (a bucket has no temps)."""
    return [(rel, _Listed(size, mtime)) for d in DATA_DIRS
            for rel, size, mtime in storage.backend.list_stats(d + "/")]


def referenced_files(storage: Storage, last_snapshot_id: int | None = None) -> set[str]:
    """Every relative path some snapshot 0..``last_snapshot_id`` needs."""
    if last_snapshot_id is None:
        last_snapshot_id = storage.head().last_snapshot_id
    refs: set[str] = set()
    manifests: set[str] = set()
    gone = expired(storage.head())  # their files are gone or going: expiry decides for them
    ids = [sid for sid in range(last_snapshot_id + 1) if sid not in gone]
    for sid in _progress(ids, len(ids), f"{storage.name}: snapshots"):
        snap = storage.snapshot(sid)
        for m in snap.get("manifests") or []:
            manifests.add(m["path"])
        for key in ("delta", "deleted"):
            if snap.get(key):
                refs.add(snap[key])
    refs |= manifests
    for rel in _progress(sorted(manifests), len(manifests), f"{storage.name}: manifests", "file"):
        t = storage.manifests.read(rel)
        refs.update(p for p in t.column("path").to_pylist() if p)
        for files in t.column("record_files").to_pylist():
            if files:
                refs.update(files)
    return refs


def vacuum(storage: Storage, older_than: timedelta = timedelta(days=1), *, apply: bool = False) -> VacuumReport:
    """Find (and with ``apply=True`` remove) files no snapshot references.

    Only files older than ``older_than`` (by modification time) are considered, so a
    writer still writing is never disturbed. Example::

        report = vacuum(ds.storage, older_than=timedelta(hours=1))  # dry run
        print(report.files, report.bytes)
        vacuum(ds.storage, older_than=timedelta(hours=1), apply=True)
    """
    if not isinstance(older_than, timedelta):
        raise UserInputError(f"older_than must be a datetime.timedelta, got {type(older_than).__name__}")
    if older_than < timedelta(0):
        raise UserInputError(f"older_than must not be negative, got {older_than}")
    cutoff = time.time() - older_than.total_seconds()
    # Listing before reading the head is what makes this safe with concurrent commits.
    found = _remote_candidates(storage) if storage.remote else _candidates(storage.location)
    head = storage.head()
    refs = referenced_files(storage, head.last_snapshot_id)
    report = VacuumReport(applied=apply, snapshots=head.last_snapshot_id + 1)
    for rel, st in sorted(found):
        if rel in refs:
            continue
        if st.st_mtime > cutoff:
            report.kept_recent += 1
            continue
        report.files.append(rel)
        report.bytes += st.st_size
    if apply:
        storage.files.remove(report.files)
    return report
