"""Copy a dataset object for object between any two locations (directory or bucket).

SPEC section 8: the layout is the same on disk and in a bucket, so a copy is every file
under the same relative path. The order makes a copy safe to interrupt and rerun: data
files, manifests and the other metadata first, then the log entries, the newest entry
last, then ``LATEST``. Until the newest entry lands the destination shows an older state
(or, before entry 0, no dataset), never an entry whose files are missing. Snapshot
pointers become plain copies (a hard link has no meaning in a bucket; the bytes are the
same), and objects already present with the same size are skipped on a rerun.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .backend import Backend, backend_for
from .errors import AlreadyExistsError, NotFoundError
from .objlog import HINT, LOG, SNAPSHOTS, ObjectLog, _seq_of
from .objstore import pool


@dataclass(frozen=True)
class CopyReport:
    """What a copy moved: files and bytes (skipped files are not counted)."""

    files: int
    bytes: int


def copy_dataset(src: str, dst: str, src_options: dict[str, Any] | None = None,
                 dst_options: dict[str, Any] | None = None, overwrite_log: bool = False) -> CopyReport:
    """Copy the dataset at ``src`` to ``dst`` (either may be a directory or ``s3://``).

    Refuses a destination that holds another dataset's log (unless ``overwrite_log``:
    finishing an interrupted copy of the same dataset), so two datasets never mix.
    """
    s, d = backend_for(src, src_options), backend_for(dst, dst_options)
    paths = [p for p in s.list_paths("") if "/.tmp-" not in p and not p.startswith(".tmp-")]
    entries = sorted((seq, p) for p in paths if (seq := _seq_of(p)) is not None)
    if not entries:
        raise NotFoundError(f"{src} holds no dataset (no {LOG} entries)")
    if not overwrite_log and d.list_paths(LOG):
        raise AlreadyExistsError(f"{dst} already holds a dataset log: copy into an empty location")
    log_paths = {p for _, p in entries}
    first = [p for p in paths if p not in log_paths and p != HINT and not p.startswith(SNAPSHOTS)]
    pointers = [p for p in paths if p.startswith(SNAPSHOTS)]
    moved = [0, 0]
    lock = threading.Lock()

    def one(rel: str) -> None:
        size = s.size(rel)
        if overwrite_log and d.exists(rel) and d.size(rel) == size:
            return  # finished by an earlier run
        _copy(s, d, rel)
        with lock:
            moved[0] += 1
            moved[1] += size

    def all_of(rels: list[str]) -> None:
        for f in [pool("files").submit(one, r) for r in rels]:
            f.result()

    all_of(first)
    all_of([p for _, p in entries[:-1]])
    all_of(pointers)
    one(entries[-1][1])
    d.put(HINT, str(entries[-1][0]).encode())
    ObjectLog(d).latest()  # the copy reads back as a dataset
    return CopyReport(*moved)


def _copy(s: Backend, d: Backend, rel: str) -> None:
    local = s.local_path(rel)
    if local is not None:
        d.put_file(rel, local)  # multipart upload of large record files, nothing in memory
    else:
        d.put(rel, s.read(rel))
