"""The commit protocol on any backend: the log of engine/log.py without ``link(2)``.

Same layout, same entries, same guarantees as ``MetadataLog`` (see FORMAT.md), built on
the two primitives every backend has (engine/backend.py):

- ``put_if_absent(metadata/log/<seq>.json)`` publishes an entry: ``link`` on a directory,
  a conditional PUT (``If-None-Match: *``) on S3. Exactly one writer creates each seq, so
  it is a compare-and-swap on the log head with no lock service and no lease. A PUT is
  atomic: readers see no object or the whole entry, never a prefix.
- ``list(metadata/log/, start_after=<hint>)`` finds the head. ``LATEST`` (or the head this
  process saw last) is only where the listing starts: a stale hint costs a longer listing,
  never a wrong answer; a hint ahead of the log (tampered) is walked back.

One case a directory never has: the library retries a PUT whose answer was lost, and the
retry is refused (412) by the object our first attempt created. ``S3Backend.put_if_absent``
therefore reads the object back when refused: if it holds our bytes, the create was ours.
(Two writers cannot build equal bytes by chance: an entry holds its time and, for a
snapshot, the fresh names of the manifests it wrote.)

This is engine/log.py's protocol with one change that matters on a bucket: the head is
found by one LIST from the hint, not a HEAD per entry past it. On a backend of the seam in
engine/backend.py (``S3Backend`` is one), ``MetadataLog`` itself is correct on S3 too.

``snapshots/<id>.json`` is a copy of the entry that made the snapshot (a hard link on disk;
the bytes are the same, so a dataset copied object for object stays valid), written with
``put_if_absent`` after publishing and repaired by readers if a crash skipped it.
"""

from __future__ import annotations

import json
from typing import Any

from . import failpoints
from .backend import Backend
from .errors import AlreadyExistsError, CorruptionError, VersionNotFoundError
from .log import SEQ_DIGITS, Entry

LOG = "metadata/log/"
SNAPSHOTS = "metadata/snapshots/"
HINT = LOG + "LATEST"


def entry_path(seq: int) -> str:
    return f"{LOG}{seq:0{SEQ_DIGITS}d}.json"


def snapshot_path(snapshot_id: int) -> str:
    return f"{SNAPSHOTS}{snapshot_id:0{SEQ_DIGITS}d}.json"


def _seq_of(path: str) -> int | None:
    name = path[len(LOG):]
    if path.startswith(LOG) and name.endswith(".json") and name[:-5].isdigit():
        return int(name[:-5])
    return None


class ObjectLog:
    """Reads and publishes the entries of one dataset's log through a ``Backend``."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.root = backend.uri
        self._known: int | None = None  # newest seq this process has seen: where listing starts

    # -- reading ---------------------------------------------------------------
    def _hint(self) -> int | None:
        if self._known is not None:
            return self._known
        try:
            return int(self.backend.read(HINT).strip() or 0)
        except (FileNotFoundError, ValueError):
            return None

    def head_seq(self) -> int:
        """Sequence number of the newest entry: one listing from the hint on."""
        hint = self._hint()
        seqs: list[int] = []
        if hint is not None and hint > 0:
            # Start one before the hint so the hint's own entry proves it is not ahead.
            seqs = [s for s in map(_seq_of, self.backend.list_paths(LOG, start_after=entry_path(hint - 1))) if s is not None]
            if hint not in seqs:
                seqs = []  # hint ahead of the log: only if the log was tampered with
        if not seqs:
            seqs = [s for s in map(_seq_of, self.backend.list_paths(LOG)) if s is not None]
        if not seqs:
            raise VersionNotFoundError(f"no log entries in {self.root}: not a dataset")
        self._known = max(seqs)
        return self._known

    def entry(self, seq: int) -> Entry:
        path = entry_path(seq)
        try:
            data = self.backend.read(path)
        except FileNotFoundError:
            raise VersionNotFoundError(f"log entry {seq} does not exist in {self.root}") from None
        try:
            return Entry(seq, json.loads(data))
        except json.JSONDecodeError as e:
            raise CorruptionError(f"log entry {self.root}/{path} is not valid JSON: {e}") from None

    def latest(self) -> Entry:
        return self.entry(self.head_seq())

    def snapshot_entry(self, snapshot_id: int) -> Entry:
        """The entry that made snapshot ``snapshot_id``."""
        try:
            doc = json.loads(self.backend.read(snapshot_path(snapshot_id)))
            return Entry(doc["seq"], doc)
        except FileNotFoundError:
            pass
        head = self.latest()
        if snapshot_id < 0 or snapshot_id > head.last_snapshot_id:
            raise VersionNotFoundError(
                f"snapshot {snapshot_id} does not exist in {self.root} (latest is {head.last_snapshot_id})"
            )
        # A crash after publishing skipped the pointer: find the entry, repair the pointer.
        seq = head.seq
        while seq >= 0:
            e = self.entry(seq)
            snap = e.doc.get("snapshot")
            if snap and snap["id"] == snapshot_id:
                self._write_pointer(e, self.backend.read(entry_path(seq)))
                return e
            if e.last_snapshot_id < snapshot_id:
                break
            seq -= 1
        raise CorruptionError(f"snapshot {snapshot_id} is counted but not found in the log of {self.root}")

    # -- writing ---------------------------------------------------------------
    def try_publish(self, doc: dict[str, Any]) -> bool:
        """Publish ``doc`` as entry ``doc['seq']``; False if another writer got there first."""
        seq = doc["seq"]
        data = json.dumps(doc, sort_keys=True).encode()
        failpoints.hit("commit:before_publish")
        if not self.backend.put_if_absent(entry_path(seq), data):
            return False
        failpoints.hit("commit:after_publish")
        self._known = seq
        entry = Entry(seq, doc)
        if doc.get("snapshot"):
            self._write_pointer(entry, data)
        failpoints.hit("commit:after_snapshot_link")
        self.backend.put(HINT, str(seq).encode())
        return True

    def _write_pointer(self, entry: Entry, data: bytes) -> None:
        self.backend.put_if_absent(snapshot_path(entry.doc["snapshot"]["id"]), data)

    def init(self, doc: dict[str, Any]) -> None:
        """Create the log with entry 0 (the empty snapshot 0)."""
        if not self.try_publish(doc):
            raise AlreadyExistsError(f"a dataset already exists at {self.root}")
