"""A dataset directory: its fixed metadata, its log, snapshots, manifests and commits."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import failpoints
from . import format as fmt
from . import schema as sch
from .backend import is_remote, open_backend
from .datafiles import DataFiles, files_at
from .errors import (
    AlreadyExistsError,
    CommitConflictError,
    NotFoundError,
    SnapshotExpiredError,
    UserInputError,
    VersionNotFoundError,
)
from .filters import Filter, prune_expression, stats_guarantee
from .log import Entry, MetadataLog
from .manifest import INDEX, RECORD, ManifestStore, manifest_schema, removal
from .objlog import ObjectLog
from .recordpool import POOL
from .retention import expired

FORMAT = fmt.FORMAT
DEFAULT_BRANCH = "main"
MAX_COMMIT_ATTEMPTS = 64
_REF_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")

Version = int | str | None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def validate_ref_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _REF_NAME.match(name) or name.endswith(".") or ".." in name:
        raise UserInputError(
            f"{what} name {name!r} is not valid: start with a letter or '_', then letters, digits, '_', '-', '.'"
        )


@dataclass
class Plan:
    """What one commit changes, computed against one base snapshot."""

    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    deleted: str | None = None  # metadata/changes/*.parquet holding deleted keys
    temp_files: list[str] = field(default_factory=list)  # owned by this plan only

    @property
    def empty(self) -> bool:
        return not self.added and not self.removed


class Storage:
    """One dataset, in a directory or a bucket. Cheap to open; every read resolves versions afresh."""

    def __init__(self, location: str, storage_options: dict[str, Any] | None = None):
        # ``storage_options`` configure a bucket's client (OBJECTSTORE.md); kept in memory
        # by ``open_backend`` for this process's other readers of the location, never on disk.
        self.backend = open_backend(location, storage_options)
        self.location = self.backend.root
        self.remote = self.backend.local_path("") is None
        self.files = files_at(self.location) if self.remote else DataFiles(self.backend)
        try:
            self.meta = json.loads(self.backend.read_bytes(fmt.DATASET_JSON))
        except FileNotFoundError:
            raise NotFoundError(f"no spacefs dataset at {self.location}") from None
        if self.meta.get("format") != FORMAT:
            raise NotFoundError(f"{self.location} holds format {self.meta.get('format')!r}, expected {FORMAT!r}")
        self.schema: pa.Schema = sch.schema_from_json(self.meta["schema"])
        self.primary_keys: list[str] = list(self.meta["primary_keys"])
        self.record_fields: list[str] = list(self.meta["record_fields"])
        self.index_schema = sch.index_schema(self.schema, self.record_fields)
        self.index_fields = [n for n in self.schema.names if n not in self.record_fields]
        self.stats_fields = [f for f in self.schema if f.name in self.index_fields and sch.stats_type(f.type)]
        # On a bucket the head is found by one LIST from the hint, not a HEAD per entry.
        self.log = ObjectLog(self.backend) if self.remote else MetadataLog(self.location, backend=self.backend)
        self.manifests = ManifestStore(self.location, manifest_schema(self.stats_fields), files=self.files)
        self._snapshots: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._live: OrderedDict[int, pa.Table] = OrderedDict()
        self._lock = threading.Lock()
        # Open record files belong to the process-wide pool; this Storage is one of the
        # dataset's owners there: the last owner to go (closed or collected) closes them.
        # A bucket's record files are read by range and hold nothing open.
        self._closer = (weakref.finalize(self, _nothing) if self.remote
                        else weakref.finalize(self, POOL.detach, POOL.attach(self.location)))

    def close(self) -> None:
        """Release what this handle holds: its caches and its claim on the open record
        files of the dataset (closed when no other handle of it is left). Idempotent;
        garbage collection does the same for a handle never closed."""
        self._closer()
        with self._lock:
            self._snapshots.clear()
            self._live.clear()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return os.path.basename(self.location)

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "dataset")

    # -- creation --------------------------------------------------------------
    @classmethod
    def create(cls, location: str, schema: pa.Schema, primary_keys: list[str], record_fields: list[str],
               file_layout: dict[str, str] | None = None, kind: str = "dataset",
               extra: dict[str, Any] | None = None, files: dict[str, bytes] | None = None,
               storage_options: dict[str, Any] | None = None) -> Storage:
        """Create a dataset atomically (a directory, or a prefix of a bucket).

        ``files`` (relative path -> bytes) are written into the dataset before it is
        published, e.g. a materialized view's pickled definition, so a crash never
        leaves a dataset without them.
        """
        if isinstance(primary_keys, str):
            primary_keys = [primary_keys]
        record_fields = list(record_fields or [])
        sch.validate(schema, primary_keys, record_fields)
        if file_layout is not None:
            from .layout import validate_layout

            validate_layout(file_layout, schema, record_fields)
        for rel in files or {}:
            norm = os.path.normpath(rel)
            if os.path.isabs(rel) or norm == ".." or norm.startswith(".." + os.sep):
                raise UserInputError(f"extra file {rel!r} lies outside the dataset directory")
        meta = {
            "format": FORMAT,
            "kind": kind,
            "schema": sch.schema_to_json(schema),
            "primary_keys": list(primary_keys),
            "record_fields": record_fields,
            "created": now(),
            # Names this dataset, not its path: one deleted and re-created under the same
            # name is a different dataset (the mount drops what it cached of the old one).
            "uuid": uuid.uuid4().hex,
            **(extra or {}),
        }
        snap0 = {"id": 0, "parent": None, "branch": DEFAULT_BRANCH, "time": meta["created"], "op": "create",
                 "manifests": [], "delta": None, "deleted": None, "stats": {"rows": 0, "index_files": 0, "index_bytes": 0, "record_bytes": 0},
                 "file_layout": file_layout}
        doc = {"seq": 0, "time": meta["created"], "op": "create", "last_snapshot_id": 0,
               "branches": {DEFAULT_BRANCH: 0}, "tags": {}, "settings": {"file_layout": file_layout}, "snapshot": snap0}
        if is_remote(str(location)):
            return cls._create_in_bucket(str(location), storage_options, meta, doc, files or {})
        location = os.path.abspath(location)
        if os.path.exists(os.path.join(location, fmt.METADATA)):
            raise AlreadyExistsError(f"a dataset already exists at {location}")
        # Build in a hidden sibling then rename, so a crash never leaves half a dataset.
        parent = os.path.dirname(location)
        os.makedirs(parent, exist_ok=True)
        staging = os.path.join(parent, f".{os.path.basename(location)}.creating-{os.getpid()}-{random.getrandbits(32):x}")
        for d in fmt.DIRS:
            os.makedirs(os.path.join(staging, d))
        with open(fmt.dataset_json(staging), "wb") as f:
            f.write(sch.dumps(meta))
        for rel, data in (files or {}).items():
            path = os.path.normpath(os.path.join(staging, rel))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        MetadataLog(staging).init(doc)
        try:
            os.makedirs(location, exist_ok=True)
            if os.listdir(location):
                raise AlreadyExistsError(f"{location} exists and is not empty")
            os.rmdir(location)
            os.rename(staging, location)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls(location)

    @classmethod
    def _create_in_bucket(cls, location: str, storage_options: dict[str, Any] | None, meta: dict[str, Any],
                          doc: dict[str, Any], files: dict[str, bytes]) -> Storage:
        """Create on a bucket, which has no atomic directory rename: a dataset exists
        once its log entry 0 exists. ``dataset.json`` is created first with a conditional
        PUT (of two creators, one wins), then the extra files, then entry 0. A crash in
        between leaves ``dataset.json`` without a log: creating again says so."""
        from .objstore import ensure_conditional_writes

        backend = open_backend(location, storage_options)
        if backend.exists(fmt.log_entry(0)):
            raise AlreadyExistsError(f"a dataset already exists at {backend.uri}")
        ensure_conditional_writes(backend)
        if not backend.put_if_absent(fmt.DATASET_JSON, sch.dumps(meta)):
            if backend.exists(fmt.log_entry(0)):
                raise AlreadyExistsError(f"a dataset already exists at {backend.uri}")
            raise AlreadyExistsError(
                f"{backend.uri} holds {fmt.DATASET_JSON} but no log: another create is running there, or one was "
                "interrupted; delete the objects under that prefix to create the dataset again")
        for rel, data in files.items():
            backend.put(os.path.normpath(rel).replace(os.sep, "/"), data)
        ObjectLog(backend).init(doc)
        return cls(location, storage_options)

    # -- versions --------------------------------------------------------------
    def head(self) -> Entry:
        return self.log.latest()

    def resolve(self, version: Version, branch: str = DEFAULT_BRANCH, head: Entry | None = None) -> int:
        """Snapshot id of a version: an id, a tag, a branch; None is ``branch``'s head."""
        if isinstance(version, bool):
            raise UserInputError(f"version must be a snapshot id, tag or branch, got {version!r}")
        if isinstance(version, int):
            head = head or self.head()
            if version < 0 or version > head.last_snapshot_id:
                raise VersionNotFoundError(f"{self.name}: snapshot {version} does not exist (latest is {head.last_snapshot_id})")
            if version in expired(head):
                raise SnapshotExpiredError(f"{self.name}: snapshot {version} was expired (removed by expire_snapshots)")
            return version
        head = head or self.head()
        if version is None:
            version = branch
        if isinstance(version, str):
            if version in head.tags:
                return head.tags[version]
            if version in head.branches:
                return head.branches[version]
            if version.isdigit():
                return self.resolve(int(version), branch, head)
            raise VersionNotFoundError(f"{self.name}: no tag or branch named {version!r}")
        raise UserInputError(f"version must be a snapshot id, tag or branch, got {type(version).__name__}")

    def snapshot(self, sid: int) -> dict[str, Any]:
        with self._lock:
            s = self._snapshots.get(sid)
        if s is None:
            s = self.log.snapshot_entry(sid).doc["snapshot"]
            with self._lock:
                self._snapshots[sid] = s
                while len(self._snapshots) > 4096:
                    self._snapshots.popitem(last=False)
        return s

    def file_layout(self, sid: int, head: Entry | None = None) -> dict[str, str] | None:
        """The file layout of snapshot ``sid``: the one stored with it, or (snapshots
        written before layouts belonged to snapshots) the log settings' ``file_layout``."""
        snap = self.snapshot(sid)
        if "file_layout" in snap:
            return snap["file_layout"]
        return (head or self.head()).settings.get("file_layout")

    def live_files(self, sid: int) -> pa.Table:
        """Manifest rows of the data files (index and record) of snapshot ``sid``."""
        with self._lock:
            t = self._live.get(sid)
        if t is None:
            t = self.manifests.live(self.snapshot(sid)["manifests"])
            with self._lock:
                self._live[sid] = t
                while len(self._live) > 32:
                    self._live.popitem(last=False)
        return t

    def index_entries(self, sid: int, filter_: Filter = None) -> list[dict[str, Any]]:
        """Index files of a snapshot that may hold rows matching ``filter_`` (by stats)."""
        t = self.live_files(sid)
        t = t.filter(pc.equal(t.column("kind"), INDEX))
        rows = t.to_pylist()
        expr = prune_expression(filter_, self.schema, self.record_fields, f"{self.name}: index files")
        if expr is None or not rows:
            return rows
        names = [f.name for f in self.stats_fields]
        return _prune(rows, expr, [stats_guarantee(r, names) for r in rows], self.index_schema, self.location)

    def full_path(self, rel: str) -> str:
        return fmt.data_path(self.location, rel)

    # -- commits ---------------------------------------------------------------
    def commit_refs(self, change: Callable[[Entry], dict[str, Any] | None], op: str) -> Entry | None:
        """Publish a ref change (tags, branches, settings): no snapshot is made."""
        for attempt in range(MAX_COMMIT_ATTEMPTS):
            head = self.head()
            new = change(head)
            if new is None:
                return None
            doc = {"seq": head.seq + 1, "time": now(), "op": op, "last_snapshot_id": head.last_snapshot_id,
                   "branches": head.branches, "tags": head.tags, "settings": head.settings, "snapshot": None, **new}
            if self.log.try_publish(doc):
                return Entry(doc["seq"], doc)
            _backoff(attempt)
        raise CommitConflictError(f"{self.name}: {op} lost to concurrent writers {MAX_COMMIT_ATTEMPTS} times")

    def commit_snapshot(self, branch: str, op: str, plan: Callable[[int], Plan | None],
                        settings: Callable[[Entry], dict[str, Any]] | None = None,
                        message: str | None = None, snapshot_extra: dict[str, Any] | None = None,
                        keep_empty: bool = False) -> dict[str, Any] | None:
        """Publish a new snapshot on ``branch``; ``plan(base_id)`` says what changes.

        Optimistic: the plan is computed against the branch head; if another writer
        lands first, the plan is recomputed on the new head (cached when the head
        snapshot did not change) and the commit retried. ``settings(head)``, if given,
        returns the settings to publish in the same log entry (it may raise to refuse
        the commit): a materialized view moves its "reflects source snapshot N" marker
        atomically with its data this way. ``message`` is kept in the snapshot, for
        people reading the log (like a git commit message). ``snapshot_extra`` adds
        fields to the snapshot doc (a merge's ``merge_parent``); ``keep_empty`` commits a
        plan that changes no file (a merge that records its second parent and nothing else).
        """
        plans: dict[int, Plan | None] = {}
        try:
            for attempt in range(MAX_COMMIT_ATTEMPTS):
                head = self.head()
                if branch not in head.branches:
                    raise VersionNotFoundError(f"{self.name}: no branch named {branch!r}")
                base = head.branches[branch]
                if base not in plans:
                    for old in plans.values():
                        self._discard(old)
                    plans = {base: plan(base)}
                p = plans[base]
                if p is None or (p.empty and not keep_empty):
                    return None
                new_settings = settings(head) if settings else head.settings
                sid = head.last_snapshot_id + 1
                snap, created = self._snapshot_doc(sid, base, branch, op, p)
                snap["file_layout"] = self.file_layout(base, head)  # a snapshot keeps its parent's layout
                if message:
                    snap["message"] = str(message)
                snap.update(snapshot_extra or {})
                failpoints.hit("commit:after_manifest")
                doc = {"seq": head.seq + 1, "time": snap["time"], "op": op, "last_snapshot_id": sid,
                       "branches": {**head.branches, branch: sid}, "tags": head.tags,
                       "settings": new_settings, "snapshot": snap}
                if self.log.try_publish(doc):
                    plans.clear()
                    return snap
                self.files.remove(created)
                _backoff(attempt)
            raise CommitConflictError(f"{self.name}: {op} lost to concurrent writers {MAX_COMMIT_ATTEMPTS} times")
        finally:
            for p in plans.values():
                self._discard(p)

    def _discard(self, p: Plan | None) -> None:
        if p is not None:
            self.files.remove(p.temp_files)

    def _snapshot_doc(self, sid: int, base: int, branch: str, op: str, p: Plan) -> tuple[dict[str, Any], list[str]]:
        base_snap = self.snapshot(base)
        added = [{**a, "snapshot_id": sid} for a in p.added]
        removed = p.removed + self._orphaned_records(base, p)
        delta = self.manifests.write(added + [removal(r) for r in removed])
        manifests, created = self.manifests.append(base_snap["manifests"], delta)
        stats = dict(base_snap["stats"])
        for sign, rows in ((1, added), (-1, removed)):
            for r in rows:
                if r["kind"] == INDEX:
                    stats["rows"] += sign * r["rows"]
                    stats["index_files"] += sign
                    stats["index_bytes"] += sign * r["bytes"]
                elif r["kind"] == RECORD:
                    stats["record_bytes"] += sign * r["bytes"]
        snap = {"id": sid, "parent": base, "branch": branch, "time": now(), "op": op, "manifests": manifests,
                "delta": delta["path"], "deleted": p.deleted, "stats": stats}
        return snap, [delta["path"], *created]

    def _orphaned_records(self, base: int, p: Plan) -> list[dict[str, Any]]:
        """Record files that no index file references once ``p`` applies.

        They leave the snapshot's file list (older snapshots keep them), so manifests
        follow the live data instead of every record file ever written.
        """
        gone = {f for r in p.removed if r["kind"] == INDEX for f in (r.get("record_files") or ())}
        gone -= {f for a in p.added if a["kind"] == INDEX for f in (a.get("record_files") or ())}
        if not gone:
            return []
        # Without the min/max structs: filtering and converting them was most of this.
        live = self.live_files(base).select(["kind", "path", "field", "rows", "bytes", "snapshot_id", "record_files"])
        removed_paths = pa.array([r["path"] for r in p.removed], pa.string())
        still = live.filter(pc.and_(pc.equal(live.column("kind"), INDEX),
                                    pc.invert(pc.is_in(live.column("path"), value_set=removed_paths))))
        gone -= set(pc.unique(pc.list_flatten(still.column("record_files"))).to_pylist())
        if not gone:
            return []
        rec = live.filter(pc.and_(pc.equal(live.column("kind"), RECORD),
                                  pc.is_in(live.column("path"), value_set=pa.array(sorted(gone), pa.string()))))
        return rec.to_pylist()

    # -- inspection ------------------------------------------------------------
    def index_manifest(self, filter_: Filter = None, version: Version = None) -> pa.Table:
        """One row per index file of a version (after pruning by ``filter_``)."""
        sid = self.resolve(version)
        keep = pa.array([r["path"] for r in self.index_entries(sid, filter_)], pa.string())
        t = self.live_files(sid)
        t = t.filter(pc.and_(pc.equal(t.column("kind"), INDEX), pc.is_in(t.column("path"), value_set=keep)))
        return t.drop_columns(["status", "kind", "field"])

    def record_manifest(self, filter_: Filter = None, version: Version = None) -> pa.Table:
        """One row per ArrayRecord file readable from a version."""
        t = self.live_files(self.resolve(version))
        t = t.filter(pc.equal(t.column("kind"), RECORD))
        return t.select(["path", "field", "rows", "bytes", "snapshot_id"])

    def versions(self) -> pa.Table:
        head = self.head()
        names: dict[int, list[str]] = {}
        for kind in (head.tags, head.branches):
            for n, s in kind.items():
                names.setdefault(s, []).append(n)
        ids, times, refs, messages = [], [], [], []
        gone = expired(head)
        for sid in range(head.last_snapshot_id, -1, -1):
            if sid in gone:
                continue
            snap = self.snapshot(sid)
            t = datetime.fromisoformat(snap["time"])
            for n in sorted(names.get(sid, [None]), key=lambda x: (x is None, x)):
                ids.append(sid)
                times.append(t)
                refs.append(n)
                messages.append(snap.get("message"))
        return pa.table({"snapshot_id": pa.array(ids, pa.int64()),
                         "create_time": pa.array(times, pa.timestamp("us", tz="UTC")),
                         "tag_or_branch": pa.array(refs, pa.string()),
                         "message": pa.array(messages, pa.string())})


def _prune(rows: list[dict[str, Any]], expr: pc.Expression, guarantees: list[pc.Expression],
           schema: pa.Schema, root: str) -> list[dict[str, Any]]:
    """Keep the rows whose stats guarantee does not rule ``expr`` out.

    Arrow simplifies the filter against each fragment's partition expression, which is
    exactly "can a row within these min/max bounds match?".
    """
    import pyarrow.dataset as pds
    import pyarrow.fs as pfs

    fmt = pds.ParquetFileFormat()
    fs = pfs.LocalFileSystem()
    try:
        frags = [fmt.make_fragment(os.path.join(root, r["path"]), fs, partition_expression=g)
                 for r, g in zip(rows, guarantees, strict=True)]
        keep = {f.path for f in pds.FileSystemDataset(frags, schema, fmt, fs).get_fragments(filter=expr)}
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return rows
    return [r for r in rows if os.path.join(root, r["path"]) in keep]


def _backoff(attempt: int) -> None:
    # Jittered backoff keeps many writers from colliding in lockstep.
    time.sleep(random.uniform(0, min(0.002 * (2 ** min(attempt, 6)), 0.1)))


def _nothing() -> None:
    pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
