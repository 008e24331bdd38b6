"""How a catalog (or one dataset) looks as a filesystem: SPEC section 4, in plain Python.

No FUSE here. The tree answers four questions about a ``Node`` (``lookup``, ``children``,
``attrs``, ``read``) and reports what changed since it last looked (``poll``); the
pyfuse3 adapter (``fuse_ops.py``) turns that into FUSE replies and owns errno mapping.

Every method takes ``io``: with ``io=False`` it answers only from memory and raises
``NeedsIO`` otherwise. The adapter calls first on the event loop with ``io=False`` (most
calls are cache hits) and retries in a worker thread with ``io=True``, so disk work never
blocks the loop and cache hits never pay for a thread hop.

Concurrency: worker threads may build caches while the loop reads them. Caches are plain
dicts whose entries are complete before they are published (a single store, atomic under
the GIL), or the view cache (``memlru``, its own lock); builds of the same snapshot are
serialised by a per-key lock, builds of the same index file's piece by the cache.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from spacefs.engine import format as fmt
from spacefs.engine.backend import is_remote, open_backend
from spacefs.engine.catalog import (
    child_location,
    datasets_at,
    is_dataset_at,
    normalize_location,
    validate_name,
)
from spacefs.engine.errors import SpaceError
from spacefs.engine.log import Entry
from spacefs.engine.records import RecordReader
from spacefs.engine.retention import expired
from spacefs.engine.storage import DEFAULT_BRANCH, Storage

from .memlru import MemLRU, bound_from_env
from .pieces import PieceSource
from .snapshot import RowNames, SnapshotView

# Node kinds.
ROOT, DS, VERSIONS, TAGS, BRANCHES, CURRENT = "root", "ds", "versions", "tags", "branches", "current"
TAG, BRANCH, VER, SCHEMA, INDEX, IXFILE = "tag", "branch", "ver", "schema", "index", "ixfile"
ROWS, ROW, FIELD, FILES, FILE = "rows", "row", "field", "files", "file"

DIR, REG, LINK = "dir", "file", "link"
_DIRS = {ROOT, DS, VERSIONS, TAGS, BRANCHES, VER, INDEX, ROWS, ROW, FILES}
_LINKS = {CURRENT, TAG, BRANCH}
# Every cache here has a bound: views of snapshots and the per-index-file pieces they
# share, in one cache bounded by bytes (``SPACEFS_VIEW_CACHE_MIB``, default 256; see
# ``memlru``); per dataset, the mtime and directory attributes of this many snapshots
# (tiny; the Storage's own snapshot documents are bounded there). The kernel-held inodes
# are bounded in fuse_ops (INODES_KEPT).
SNAPSHOTS_KEPT = 4096
LOCK_STRIPES = 64

log = logging.getLogger("spacefs.mount")


class NeedsIO(Exception):
    """The answer needs disk I/O: ask again with ``io=True`` (from a worker thread)."""


class Node(NamedTuple):
    """Identity of one file or directory. Equal nodes are the same file, forever:
    snapshot contents never change, the file layout included (it belongs to the
    snapshot). Nodes of a dataset also carry its
    incarnation ``inc``: one deleted and created again under the same name has other
    snapshots under the same ids, so other nodes (and inodes)."""

    kind: str
    ds: str = ""
    sid: int = -1
    row: int = -1
    name: str = ""
    inc: int = 0


@dataclass(frozen=True, slots=True)
class Attr:
    kind: str  # DIR, REG or LINK
    size: int
    mtime_ns: int
    immutable: bool  # may the kernel cache it for long?


@dataclass(frozen=True, slots=True)
class Invalidation:
    """Something the kernel may have cached that changed: the entry ``name`` in
    directory ``node``, or (``name`` None) the attributes of ``node`` itself."""

    node: Node
    name: str | None = None


def _bound(d: dict, keep: int = SNAPSHOTS_KEPT) -> None:
    """Drop the oldest entries of ``d`` beyond ``keep`` (a worker thread may race the
    loop here: a key already gone is fine, it is rebuilt on need)."""
    while len(d) > keep:
        try:
            d.pop(next(iter(d)), None)
        except (StopIteration, RuntimeError):
            return


@dataclass
class _DsState:
    storage: Storage
    head: Entry
    seq: int
    reader: RecordReader
    identity: _Identity
    inc: int = 0
    snap_ns: dict[int, int] = field(default_factory=dict)
    dir_attrs: dict[int, Attr] = field(default_factory=dict)

    def layout(self, sid: int) -> dict[str, str] | None:
        """Snapshot ``sid``'s file layout (needs its snapshot document: I/O once)."""
        return self.storage.file_layout(sid, self.head)

    @property
    def head_ns(self) -> int:
        return _ns(self.head.doc.get("time"))

    def close(self) -> None:
        """The tree no longer serves this dataset: give back its open record files."""
        self.storage.close()


class _Identity(NamedTuple):
    """Which dataset a name holds: the ``uuid`` of its ``dataset.json`` (None in
    datasets made before uuids) and that file's ``stat`` stamp, a cheap first check
    (the file is written once, at creation)."""

    uuid: str | None
    stamp: tuple

    @staticmethod
    def stamp_of(location: str) -> tuple:
        if is_remote(location):  # one HEAD: a new object has a new etag
            info = open_backend(location).stat(fmt.DATASET_JSON)
            return info.etag, info.size
        s = os.stat(os.path.join(location, "metadata", "dataset.json"))
        return s.st_dev, s.st_ino, s.st_mtime_ns, s.st_size

    @classmethod
    def of(cls, location: str) -> _Identity:
        stamp = cls.stamp_of(location)
        data = open_backend(location).read_bytes(fmt.DATASET_JSON)
        try:
            uuid = json.loads(data).get("uuid")
        except (ValueError, AttributeError):
            uuid = None
        return cls(uuid, stamp)

    def same_dataset(self, other: _Identity) -> bool:
        # Without uuids (older datasets) a new dataset.json file is all we can go by.
        return self.uuid == other.uuid if self.uuid and other.uuid else self.stamp == other.stamp


def _ns(iso: str | None) -> int:
    if not iso:
        return 0
    return int(datetime.fromisoformat(iso).timestamp() * 1e9)


def _enoent(what: str) -> FileNotFoundError:
    return FileNotFoundError(2, "No such file or directory", what)


def _canonical_int(name: str) -> int | None:
    if not name.isdigit() or not name.isascii() or (len(name) > 1 and name[0] == "0"):
        return None
    return int(name)


class _Seq(Sequence):
    """A lazy sequence of (name, Node) children: listing 100,000 rows builds nothing up front."""

    def __init__(self, n: int, get):
        self._n, self._get = n, get

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._get(i)


class Tree:
    """The mount tree of a catalog directory, or of a single dataset directory."""

    def __init__(self, source: str, cache_bytes: int | None = None):
        # A directory or a bucket prefix (s3://...): datasets are read through their backend.
        self.source = normalize_location(source)
        if is_dataset_at(self.source):
            self.catalog = False
            self.single = self.source.rstrip("/").rsplit("/", 1)[-1]
            self.root = Node(DS, self.single)
        elif is_remote(self.source) or os.path.isdir(self.source):
            self.catalog = True
            self.single = ""
            self.root = Node(ROOT)
        else:
            raise _enoent(f"{self.source}: not a catalog directory or a dataset")
        self.start_ns = time.time_ns()
        self._states: dict[str, _DsState] = {}
        # Views ("v", ds, inc, sid) and the pieces they combine ("i"/"f", ds, inc, ...).
        self.cache = MemLRU(bound_from_env() if cache_bytes is None else cache_bytes)
        self._incs: dict[str, int] = {}  # incarnation of each dataset name (bumped when it goes)
        # Striped build locks: a fixed set however many snapshots are served (no method
        # holds one key lock while taking another, so two keys sharing a stripe only wait).
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._lock = threading.Lock()
        self._seen: set[str] = set(self._list_datasets()) if self.catalog else set()
        self._pending: list[Invalidation] = []  # found outside poll(), sent by the next one

    # -- datasets and caches ---------------------------------------------------
    def _path(self, name: str) -> str:
        return self.source if not self.catalog else child_location(self.source, name)

    def _list_datasets(self) -> list[str]:
        if not self.catalog:
            return [self.single]
        return datasets_at(self.source)

    def _key_lock(self, key: Any) -> threading.Lock:
        return self._locks[hash(key) % LOCK_STRIPES]

    def close(self) -> None:
        """Release every dataset's open files and caches. Idempotent."""
        for name in list(self._states):
            self._forget(name)

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def state(self, name: str, io: bool = True) -> _DsState:
        st = self._states.get(name)
        if st is not None:
            return st
        if not io:
            raise NeedsIO
        if self.catalog:
            try:
                validate_name(name)
            except SpaceError:
                raise _enoent(name) from None
        elif name != self.single:
            raise _enoent(name)
        with self._key_lock(("ds", name)):
            st = self._states.get(name)
            if st is None:
                inc = self._inc(name)
                try:
                    # Identity first: should the dataset be re-created meanwhile, the
                    # next refresh sees a mismatch and starts over.
                    identity = _Identity.of(self._path(name))
                    storage = Storage(self._path(name))
                except (SpaceError, FileNotFoundError, NotADirectoryError):
                    raise _enoent(name) from None
                head = storage.head()
                st = _DsState(storage, head, head.seq, RecordReader(storage.location), identity, inc)
                with self._lock:
                    if self._inc(name) == inc:  # (not forgotten while it was built)
                        self._states[name] = st
                self._seen.add(name)
        return st

    def _snap_ns(self, st: _DsState, sid: int, io: bool) -> int:
        t = st.snap_ns.get(sid)
        if t is None:
            if not io:
                raise NeedsIO
            t = st.snap_ns[sid] = _ns(st.storage.snapshot(sid)["time"])
            _bound(st.snap_ns)
        return t

    def view(self, ds: str, sid: int, io: bool, *, rows: bool = False, files: bool = False) -> SnapshotView:
        """The view of snapshot ``sid`` (its layout is its own: it never changes)."""
        st = self.state(ds, io)
        key = ("v", ds, st.inc, sid)
        v = self.cache.get(key)
        if v is not None and (not rows or v.rows_loaded) and (not files or v.files_loaded):
            return v
        if not io:
            raise NeedsIO
        with self._key_lock(key):
            v = self.cache.get(key)
            if v is None:
                v = SnapshotView(st.storage, sid, st.layout(sid), PieceSource(self.cache, st.storage, (ds, st.inc)))
                self._snap_ns(st, sid, True)  # its files' mtime: one less trip to a thread later
            if rows or files:
                v.load_rows()
            if files:
                v.load_files()
            self.cache.put(key, v, v.nbytes(), v.deps())
        return v

    def _inc(self, ds: str) -> int:
        return self._incs.get(ds, 0)

    def _live(self, node: Node, io: bool) -> None:
        """Refuse a node of a dataset since deleted (and maybe created again): what it
        named is gone. (The root of a single-dataset mount is whatever is there.)"""
        if self._incs and node.inc != self._incs.get(node.ds, 0) and node != self.root:
            raise _enoent(f"{node.ds}: the dataset was deleted")

    # -- lookup ----------------------------------------------------------------
    def lookup(self, parent: Node, name: str, io: bool = True) -> Node:
        """The child ``name`` of directory ``parent``; FileNotFoundError if none."""
        self._live(parent, io)
        k, ds = parent.kind, parent.ds
        if k == ROOT:
            self.state(name, io)
            return Node(DS, name, inc=self._inc(name))
        if k == DS:
            if name in (VERSIONS, TAGS, BRANCHES, CURRENT):
                return Node(name, ds, inc=self._inc(ds))
            raise _enoent(name)
        if k == VERSIONS:
            sid = _canonical_int(name)
            st = self.state(ds, io)
            if sid is None:
                raise _enoent(name)
            if sid > st.head.last_snapshot_id:
                if not io:
                    raise NeedsIO
                changes = self._refresh(ds, st)  # a commit newer than the last poll
                with self._lock:
                    self._pending += changes
                st = self.state(ds, io)  # (a new one if the dataset was re-created)
                if sid > st.head.last_snapshot_id:
                    raise _enoent(name)
            if sid in expired(st.head):
                raise _enoent(name)
            return Node(VER, ds, sid, inc=parent.inc)
        if k in (TAGS, BRANCHES):
            refs = self.state(ds, io).head.tags if k == TAGS else self.state(ds, io).head.branches
            if name not in refs:
                raise _enoent(name)
            return Node(TAG if k == TAGS else BRANCH, ds, name=name, inc=parent.inc)
        if k == VER:
            st = self.state(ds, io)
            if name == "schema.json":
                return Node(SCHEMA, ds, parent.sid, inc=parent.inc)
            if name == "index":
                return Node(INDEX, ds, parent.sid, inc=parent.inc)
            if name == "rows":
                return Node(ROWS, ds, parent.sid, inc=parent.inc)
            if name == "files" and self.view(ds, parent.sid, io).layout is not None:
                return Node(FILES, ds, parent.sid, inc=parent.inc)
            raise _enoent(name)
        if k == INDEX:
            if name in self.view(ds, parent.sid, io).index_files:
                return Node(IXFILE, ds, parent.sid, name=name, inc=parent.inc)
            raise _enoent(name)
        if k == ROWS:
            row = self.view(ds, parent.sid, io, rows=True).row_by_name(name)
            if row is None:
                raise _enoent(name)
            return Node(ROW, ds, parent.sid, row, inc=parent.inc)
        if k == ROW:
            if self.view(ds, parent.sid, io, rows=True).has_field(parent.row, name):
                return Node(FIELD, ds, parent.sid, parent.row, name, inc=parent.inc)
            raise _enoent(name)
        if k == FILES:
            v = self.view(ds, parent.sid, io, files=True)
            path = f"{parent.name}/{name}" if parent.name else name
            if v.files.is_dir(path):
                return Node(FILES, ds, parent.sid, name=path, inc=parent.inc)
            row = v.files.file_row(path)
            if row is not None:
                return Node(FILE, ds, parent.sid, row, path, parent.inc)
            raise _enoent(name)
        raise NotADirectoryError(20, "Not a directory", name)

    # -- listing ---------------------------------------------------------------
    def children(self, node: Node, io: bool = True) -> Sequence[tuple[str, Node]]:
        """The entries of directory ``node`` (a lazy sequence where it may be long)."""
        self._live(node, io)
        k, ds = node.kind, node.ds
        if k == ROOT:
            if not io:
                raise NeedsIO
            return [(n, Node(DS, n, inc=self._inc(n))) for n in self._list_datasets()]
        if k == DS:
            return [(n, Node(n, ds, inc=self._inc(ds))) for n in (VERSIONS, TAGS, BRANCHES, CURRENT)]
        if k == VERSIONS:
            head, inc = self.state(ds, io).head, node.inc
            n, gone = head.last_snapshot_id + 1, expired(head)
            if gone:  # expiry leaves holes: list the live ids
                live = [i for i in range(n) if i not in gone]
                return _Seq(len(live), lambda i: (str(live[i]), Node(VER, ds, live[i], inc=inc)))
            return _Seq(n, lambda i: (str(i), Node(VER, ds, i, inc=inc)))
        if k in (TAGS, BRANCHES):
            head = self.state(ds, io).head
            refs, kind = (head.tags, TAG) if k == TAGS else (head.branches, BRANCH)
            return [(n, Node(kind, ds, name=n, inc=node.inc)) for n in sorted(refs)]
        if k == VER:
            out = [("schema.json", Node(SCHEMA, ds, node.sid, inc=node.inc)),
                   ("index", Node(INDEX, ds, node.sid, inc=node.inc)), ("rows", Node(ROWS, ds, node.sid, inc=node.inc))]
            if self.view(ds, node.sid, io).layout is not None:
                out.append(("files", Node(FILES, ds, node.sid, inc=node.inc)))
            return out
        if k == INDEX:
            return [(n, Node(IXFILE, ds, node.sid, name=n, inc=node.inc)) for n in self.view(ds, node.sid, io).index_files]
        if k == ROWS:
            names = RowNames(self.view(ds, node.sid, io, rows=True))
            sid, inc = node.sid, node.inc

            def get(i: int) -> tuple[str, Node]:
                name, row = names[i]
                return name, Node(ROW, ds, sid, row, inc=inc)

            return _Seq(len(names), get)
        if k == ROW:
            v = self.view(ds, node.sid, io, rows=True)
            return [(f, Node(FIELD, ds, node.sid, node.row, f, inc=node.inc)) for f in v.fields_of(node.row)]
        if k == FILES:
            v = self.view(ds, node.sid, io, files=True)
            entries = v.files.entries(node.name)
            base = f"{node.name}/" if node.name else ""
            return _Seq(len(entries), lambda i: (entries[i][0], Node(FILES, ds, node.sid, name=base + entries[i][0], inc=node.inc)
                                                 if entries[i][1] else Node(FILE, ds, node.sid, entries[i][2], base + entries[i][0], node.inc)))
        raise NotADirectoryError(20, "Not a directory", node.name)

    # -- attributes ------------------------------------------------------------
    def attrs(self, node: Node, io: bool = True) -> Attr:
        k = node.kind
        if k == ROOT:
            return Attr(DIR, 0, self.start_ns, False)
        self._live(node, io)
        st = self.state(node.ds, io)
        if k in (DS, VERSIONS, TAGS, BRANCHES):
            return Attr(DIR, 0, st.head_ns, False)
        if k in _LINKS:
            return Attr(LINK, len(self.readlink(node, io)), st.head_ns, False)
        if k == ROW:  # a row's mtime: when the snapshot that wrote it was made
            return Attr(DIR, 0, self.view(node.ds, node.sid, io, rows=True).row_time(node.row), True)
        if k in (FIELD, FILE):
            v = self.view(node.ds, node.sid, io, rows=True)
            return Attr(REG, self.size(node, io), v.row_time(node.row), True)
        if k in (VER, INDEX, ROWS, FILES):
            a = st.dir_attrs.get(node.sid)
            if a is None:  # one shared object: listings reuse what they built for the last entry
                a = st.dir_attrs[node.sid] = Attr(DIR, 0, self._snap_ns(st, node.sid, io), True)
                _bound(st.dir_attrs)
            return a
        return Attr(REG, self.size(node, io), self._snap_ns(st, node.sid, io), True)

    def size(self, node: Node, io: bool = True) -> int:
        k = node.kind
        if k == SCHEMA:
            return len(self._schema_json(node, io))
        if k == IXFILE:
            return self.view(node.ds, node.sid, io).index_files[node.name][1]
        if k == FIELD:
            return self.view(node.ds, node.sid, io, rows=True).size(node.row, node.name)
        if k == FILE:
            v = self.view(node.ds, node.sid, io, files=True)
            return v.size(node.row, v.layout["content"])
        raise IsADirectoryError(21, "Is a directory", node.name)

    def readlink(self, node: Node, io: bool = True) -> str:
        if node.kind == CURRENT:
            return f"{BRANCHES}/{DEFAULT_BRANCH}"
        if node.kind in (TAG, BRANCH):
            head = self.state(node.ds, io).head
            refs = head.tags if node.kind == TAG else head.branches
            if node.name not in refs:
                raise _enoent(node.name)
            return f"../{VERSIONS}/{refs[node.name]}"
        raise OSError(22, "Invalid argument", node.name)

    def _schema_json(self, node: Node, io: bool) -> bytes:
        return self.view(node.ds, node.sid, io).schema_json()

    # -- reading ---------------------------------------------------------------
    def on_disk(self, node: Node) -> bool:
        """Whether reading file ``node`` reads a data file (else its bytes are in memory).
        Asked after ``attrs``, so the node's view is loaded."""
        if node.kind == SCHEMA:
            return False
        if node.kind == FIELD:
            return self.view(node.ds, node.sid, False, rows=True).is_record(node.name)
        if node.kind == FILE:
            v = self.view(node.ds, node.sid, False, files=True)
            return v.is_record(v.layout["content"])
        return True

    def read(self, node: Node, offset: int, size: int, io: bool = True,
             gather: bool = False) -> bytes | list[memoryview]:
        """Up to ``size`` bytes at ``offset`` of file ``node``; with ``gather`` (and no
        ``io``) a record's bytes may come as a list of pieces to send in one gather write."""
        self._live(node, io)
        k = node.kind
        if k == SCHEMA:
            return self._schema_json(node, io)[offset : offset + size]
        if k == IXFILE:
            if not io:
                raise NeedsIO
            st = self.state(node.ds)
            rel = self.view(node.ds, node.sid, io).index_files[node.name][0]
            if st.storage.remote:
                return st.storage.backend.read_range(rel, offset, size)
            fd = os.open(st.storage.full_path(rel), os.O_RDONLY)
            try:
                return os.pread(fd, size, offset)
            finally:
                os.close(fd)
        if k == FIELD:
            v, field_ = self.view(node.ds, node.sid, io, rows=True), node.name
        elif k == FILE:
            v = self.view(node.ds, node.sid, io, files=True)
            field_ = v.layout["content"]
        else:
            raise IsADirectoryError(21, "Is a directory", node.name)
        if not v.is_record(field_):
            return v.value_bytes(node.row, field_)[offset : offset + size]
        total = v.size(node.row, field_)
        if offset >= total:
            return b""
        st = self.state(node.ds, io)
        data = v.read_record(st.reader, node.row, field_, offset, min(size, total - offset), io, gather)
        if data is None:
            raise NeedsIO  # not in the page cache: read it in a worker thread
        return data

    # -- liveness --------------------------------------------------------------
    def _refresh(self, name: str, st: _DsState) -> list[Invalidation]:
        """Re-read one dataset's log head; say what the kernel must forget."""
        with self._key_lock(("refresh", name)):
            if self._states.get(name) is not st:
                return []  # already replaced or dropped
            seq = st.storage.log.head_seq()
            stamp = _Identity.stamp_of(st.storage.location)
            if seq == st.seq and stamp == st.identity.stamp:
                return []
            # The log moved or dataset.json is another file: is it still the same dataset?
            # (A log never shrinks: one that did was replaced, by an older copy say.)
            identity = _Identity.of(st.storage.location)
            if seq < st.seq or not st.identity.same_dataset(identity):
                return self._recreated(name)
            st.identity = identity
            if seq == st.seq:
                return []
            return self._changed(name, st, seq)

    def _forget(self, name: str) -> None:
        """Drop everything cached about dataset ``name``; if it comes back, it is
        another incarnation with other nodes."""
        with self._lock:
            self._incs[name] = self._incs.get(name, 0) + 1
            st = self._states.pop(name, None)
            self.cache.drop(lambda k: k[1] == name)
        if st is not None:
            st.close()  # its open record files go back to the pool

    def _recreated(self, name: str) -> list[Invalidation]:
        """``name`` now holds another dataset (deleted and created again): its
        snapshots are other snapshots under the same ids. Forget all of it; the kernel
        forgets the dataset's directory entries, and with them everything under them."""
        log.info("%s: deleted and created again; forgetting the old one", self._path(name))
        self._forget(name)
        if self.catalog:
            return [Invalidation(self.root, name), Invalidation(self.root)]
        return [Invalidation(self.root)] + [Invalidation(self.root, n) for n in (VERSIONS, TAGS, BRANCHES, CURRENT)]

    def _changed(self, name: str, st: _DsState, seq: int) -> list[Invalidation]:
        old, head = st.head, st.storage.log.entry(seq)
        inc = st.inc
        ds_node = self.root if not self.catalog else Node(DS, name, inc=inc)
        out: list[Invalidation] = []
        for kind, refs_old, refs_new in ((TAGS, old.tags, head.tags), (BRANCHES, old.branches, head.branches)):
            d = Node(kind, name, inc=inc)
            for ref in refs_old:
                if refs_new.get(ref) != refs_old[ref]:
                    out.append(Invalidation(d, ref))
                    out.append(Invalidation(Node(TAG if kind == TAGS else BRANCH, name, name=ref, inc=inc)))
            if refs_old != refs_new:
                out.append(Invalidation(d))
        if old.branches.get(DEFAULT_BRANCH) != head.branches.get(DEFAULT_BRANCH):
            out.append(Invalidation(ds_node, CURRENT))
        out += [Invalidation(ds_node), Invalidation(Node(VERSIONS, name, inc=inc))]
        was, now_gone = expired(old), expired(head)
        if now_gone.ranges != was.ranges:  # expiry: the kernel must forget those versions
            out += [Invalidation(Node(VERSIONS, name, inc=inc), str(sid)) for a, b in now_gone.ranges
                    for sid in range(a, b + 1) if sid not in was]
        if old.settings.get("file_layout") != head.settings.get("file_layout"):
            # Only a writer older than per-snapshot layouts changes this setting; it is
            # the layout of snapshots that have none of their own, so theirs changed.
            for sid in range(head.last_snapshot_id + 1):
                v = Node(VER, name, sid, inc=st.inc)
                out += [Invalidation(v, "files"), Invalidation(v, "schema.json")]
            self.cache.drop(lambda k: k[0] == "v" and k[1] == name)
        st.head, st.seq = head, seq
        return out

    def poll(self) -> list[Invalidation]:
        """Look for commits, new and removed datasets since the last poll (cheap: a few
        ``stat`` calls per open dataset). Call it from a worker thread."""
        with self._lock:
            out, self._pending = self._pending, []
        if self.catalog:
            names = set(self._list_datasets())
            for gone in self._seen - names:
                out.append(Invalidation(self.root, gone))
                self._forget(gone)
            if names != self._seen:
                out.append(Invalidation(self.root))
            self._seen = names
        for name, st in list(self._states.items()):
            try:
                out += self._refresh(name, st)
            except (OSError, SpaceError):
                if self.catalog:  # the dataset was deleted or moved away
                    self._forget(name)
                    out.append(Invalidation(self.root, name))
        return out

    def kind_of(self, node: Node) -> str:
        return DIR if node.kind in _DIRS else LINK if node.kind in _LINKS else REG
