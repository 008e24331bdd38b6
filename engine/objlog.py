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

This is engine/log.py's ``MetadataLog`` with one change that matters on a bucket: the
head is found by one LIST from the hint, not a HEAD per entry past it. Reading entries,
publishing and repairing snapshot pointers are ``MetadataLog``'s own.

``snapshots/<id>.json`` is a copy of the entry that made the snapshot (a hard link on disk;
the bytes are the same, so a dataset copied object for object stays valid), written with
``put_if_absent`` after publishing and repaired by readers if a crash skipped it.
"""

from __future__ import annotations

from typing import Any

from . import format as fmt
from .backend import Backend
from .errors import AlreadyExistsError, VersionNotFoundError
from .log import Entry, MetadataLog, encode_entry

LOG = fmt.LOG_DIR + "/"
SNAPSHOTS = fmt.SNAPSHOTS_DIR + "/"
HINT = fmt.LOG_HINT
entry_path = fmt.log_entry
snapshot_path = fmt.snapshot_entry


def _seq_of(path: str) -> int | None:
    name = path[len(LOG):]
    if path.startswith(LOG) and name.endswith(".json") and name[:-5].isdigit():
        return int(name[:-5])
    return None


class ObjectLog(MetadataLog):
    """``MetadataLog`` on any ``Backend``, finding its head by listing (one request)."""

    def __init__(self, backend: Backend):
        super().__init__(backend.uri, backend=backend)
        self._known: int | None = None  # newest seq this process has seen: where listing starts
        self._newest: Entry | None = None  # the newest entry read or published (entries never change)

    def _start(self) -> int | None:
        if self._known is not None:
            return self._known
        try:
            return int(self.backend.read_bytes(HINT).strip() or 0)
        except (FileNotFoundError, ValueError):
            return None

    def head_seq(self) -> int:
        """Sequence number of the newest entry: one listing from the hint on."""
        hint = self._start()
        seqs: list[int] = []
        if hint is not None and hint > 0:
            # Start one before the hint so the hint's own entry proves it is not ahead.
            seqs = [s for s in map(_seq_of, self.backend.list_paths(LOG, start_after=entry_path(hint - 1)))
                    if s is not None]
            if hint not in seqs:
                seqs = []  # hint ahead of the log: only if the log was tampered with
        if not seqs:
            seqs = [s for s in map(_seq_of, self.backend.list_paths(LOG)) if s is not None]
        if not seqs:
            raise VersionNotFoundError(f"no log entries in {self.root}: not a dataset")
        self._known = max(seqs)
        return self._known

    def entry(self, seq: int) -> Entry:
        """Entry ``seq``; the newest one is kept, so a commit right after a read of the
        head (or after its own last commit) does not GET it again."""
        e = self._newest
        if e is not None and e.seq == seq:
            return e
        e = super().entry(seq)
        if self._newest is None or e.seq >= self._newest.seq:
            self._newest = e
        return e

    def _link_snapshot(self, entry: Entry) -> None:
        # The copy holds the entry's bytes, which we have (just published, or read and
        # decoded from that encoding): no GET of the entry to copy it, as on disk.
        self.backend.put_if_absent(snapshot_path(entry.doc["snapshot"]["id"]), encode_entry(entry.doc))

    def try_publish(self, doc: dict[str, Any]) -> bool:
        if not super().try_publish(doc):
            return False
        self._known = doc["seq"]
        self._newest = Entry(doc["seq"], doc)
        return True

    def init(self, doc: dict[str, Any]) -> None:
        """Create the log with entry 0 (the empty snapshot 0); a bucket needs no folders."""
        if not self.try_publish(doc):
            raise AlreadyExistsError(f"a dataset already exists at {self.root}")
