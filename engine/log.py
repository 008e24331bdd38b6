"""The commit protocol: an append-only log of metadata entries, published by link.

Every change of a dataset's state (a snapshot, a tag, a branch, a setting) is one entry
``metadata/log/<seq>.json`` holding the whole ref state after the change. An entry is
written to a temporary file and published with ``link(2)``, which fails if the name
exists: exactly one writer wins each sequence number (compare-and-swap on the log head).
The loser re-reads the head and rebuilds its entry on top of it. See FORMAT.md.

Why this is safe:
- A reader sees either no entry ``n`` or the complete file (link publishes a finished
  inode), so nobody ever sees half a commit.
- A process killed before the link leaves only unreferenced files (removed by vacuum);
  killed after it, the commit has landed. Nothing in between can be observed.
- Snapshot ids are counted in the entries (``last_snapshot_id``); an entry only lands on
  top of its predecessor, so ids have no gaps and never repeat.
- ``snapshots/<id>.json`` is a hard link to the entry that made the snapshot, created
  after publishing. It is a cache: if a crash skipped it, readers find the entry in the log.
- ``LATEST`` is a hint of the head's sequence number; readers probe forward from it, so a
  stale hint costs a ``stat`` or two, never a wrong answer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from . import failpoints
from . import format as fmt
from .backend import Backend, LocalBackend
from .errors import CorruptionError, VersionNotFoundError

SEQ_DIGITS = fmt.SEQ_DIGITS


@dataclass(frozen=True)
class Entry:
    """One published log entry: the dataset's ref state after change ``seq``."""

    seq: int
    doc: dict[str, Any]

    @property
    def branches(self) -> dict[str, int]:
        return self.doc["branches"]

    @property
    def tags(self) -> dict[str, int]:
        return self.doc["tags"]

    @property
    def last_snapshot_id(self) -> int:
        return self.doc["last_snapshot_id"]

    @property
    def settings(self) -> dict[str, Any]:
        return self.doc.get("settings", {})


def encode_entry(doc: dict[str, Any]) -> bytes:
    """The bytes of a log entry (and of its snapshot copy): one encoding everywhere."""
    return json.dumps(doc, sort_keys=True).encode()


def _name(seq: int) -> str:
    return f"{seq:0{SEQ_DIGITS}d}.json"


class MetadataLog:
    """Reads and publishes the entries of one dataset's log."""

    def __init__(self, root: str, sync: bool = False, backend: Backend | None = None):
        self.root = root
        self.dir = os.path.join(root, fmt.LOG_DIR)
        self.snap_dir = os.path.join(root, fmt.SNAPSHOTS_DIR)
        self.sync = sync
        self.backend = backend or LocalBackend(root)

    # -- reading ---------------------------------------------------------------
    def _hint(self) -> int:
        try:
            return int(self.backend.read_bytes(fmt.LOG_HINT).strip() or 0)
        except (FileNotFoundError, ValueError):
            names = [n for n in self.backend.list(fmt.LOG_DIR) if n.endswith(".json") and n[:-5].isdigit()]
            return max((int(n[:-5]) for n in names), default=0)

    def head_seq(self) -> int:
        """Sequence number of the newest entry: a hint and a few ``stat`` calls."""
        seq = self._hint()
        exists = self.backend.exists
        while not exists(fmt.log_entry(seq)) and seq > 0:
            seq -= 1  # hint ahead of the log only if the dir was tampered with
        while exists(fmt.log_entry(seq + 1)):
            seq += 1
        return seq

    def entry(self, seq: int) -> Entry:
        path = os.path.join(self.dir, _name(seq))
        try:
            return Entry(seq, json.loads(self.backend.read_bytes(fmt.log_entry(seq))))
        except FileNotFoundError:
            raise VersionNotFoundError(f"log entry {seq} does not exist in {self.root}") from None
        except json.JSONDecodeError as e:
            raise CorruptionError(f"log entry {path} is not valid JSON: {e}") from None

    def latest(self) -> Entry:
        return self.entry(self.head_seq())

    def snapshot_entry(self, snapshot_id: int) -> Entry:
        """The entry that made snapshot ``snapshot_id``."""
        try:
            doc = json.loads(self.backend.read_bytes(fmt.snapshot_entry(snapshot_id)))
            return Entry(doc["seq"], doc)
        except FileNotFoundError:
            pass
        head = self.latest()
        if snapshot_id < 0 or snapshot_id > head.last_snapshot_id:
            raise VersionNotFoundError(
                f"snapshot {snapshot_id} does not exist in {self.root} (latest is {head.last_snapshot_id})"
            )
        # The link was skipped by a crash after publishing: find the entry, repair the link.
        seq = head.seq
        while seq >= 0:
            e = self.entry(seq)
            snap = e.doc.get("snapshot")
            if snap and snap["id"] == snapshot_id:
                self._link_snapshot(e)
                return e
            if e.last_snapshot_id < snapshot_id:
                break
            seq -= 1
        raise CorruptionError(f"snapshot {snapshot_id} is counted but not found in the log of {self.root}")

    # -- writing ---------------------------------------------------------------
    def try_publish(self, doc: dict[str, Any]) -> bool:
        """Publish ``doc`` as entry ``doc['seq']``; False if another writer got there first."""
        seq = doc["seq"]
        if not self.backend.put_if_absent(fmt.log_entry(seq), encode_entry(doc), sync=self.sync,
                                          before_publish=lambda: failpoints.hit("commit:before_publish")):
            return False
        failpoints.hit("commit:after_publish")
        if self.sync:
            _fsync_dir(self.dir)
        entry = Entry(seq, doc)
        if doc.get("snapshot"):
            self._link_snapshot(entry)
        failpoints.hit("commit:after_snapshot_link")
        self._write_hint(seq)
        return True

    def _link_snapshot(self, entry: Entry) -> None:
        self.backend.copy_if_absent(fmt.log_entry(entry.seq), fmt.snapshot_entry(entry.doc["snapshot"]["id"]))

    def _write_hint(self, seq: int) -> None:
        self.backend.put(fmt.LOG_HINT, str(seq).encode())

    def init(self, doc: dict[str, Any]) -> None:
        """Create the log with entry 0 (the empty snapshot 0)."""
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs(self.snap_dir, exist_ok=True)
        if not self.try_publish(doc):
            raise FileExistsError(self.dir)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
