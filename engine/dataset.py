"""The ``Dataset`` handle: create, load, write through runners, version management."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .errors import AlreadyExistsError, UserInputError, VersionNotFoundError
from .layout import format_path, layout_fields, validate_layout
from .log import Entry
from .options import FileOptions, RayOptions
from .runners import LocalRunner
from .storage import DEFAULT_BRANCH, Plan, Storage, Version, validate_ref_name
from .types import JobResult

if TYPE_CHECKING:
    from .expire import ExpireReport
    from .vacuum import VacuumReport


class Dataset:
    """A versioned dataset: index fields in Parquet, record fields in ArrayRecord.

    Example::

        ds = Dataset.create("/tmp/ds", schema, primary_keys=["id"], record_fields=["feature"])
        ds.local().append({"id": [1], "image_name": ["1.jpg"], "feature": [b"..."]})
        ds.add_tag("v1")
    """

    def __init__(self, storage: Storage):
        self._storage = storage
        self._branch = DEFAULT_BRANCH

    # -- lifecycle -------------------------------------------------------------
    @classmethod
    def create(cls, location: str, schema: pa.Schema, primary_keys: Sequence[str],
               record_fields: Sequence[str] | None = None, file_layout: dict[str, str] | None = None,
               storage_options: dict[str, Any] | None = None) -> Dataset:
        """Create an empty dataset (snapshot 0) in the new directory ``location``.

        Args:
            location: directory to create; it must not exist yet (or be empty). Or
                ``s3://bucket/prefix`` on any S3-compatible store (OBJECTSTORE.md).
            schema: the Arrow schema of every row.
            primary_keys: field(s) whose values identify a row (insert, upsert, delete, diff).
            record_fields: binary fields stored in ArrayRecord files rather than Parquet.
            file_layout: how rows appear as files in the mount, e.g.
                ``{"path": "{label}/{name}", "content": "image"}`` (see ``set_file_layout``).
            storage_options: settings of a bucket's client (``endpoint``, ``region``,
                ``aws_access_key_id``, ...) overriding the standard AWS variables; kept in
                this process's memory only, never stored.

        Raises:
            AlreadyExistsError: a dataset already exists at ``location``.
            UserInputError: a key or record field is not in the schema, or has a wrong type.
        """
        return cls(Storage.create(str(location), schema, list(primary_keys) if not isinstance(primary_keys, str) else [primary_keys],
                                  list(record_fields or []), file_layout, storage_options=storage_options))

    @classmethod
    def load(cls, location: str, storage_options: dict[str, Any] | None = None) -> Dataset:
        """Open the existing dataset (or materialized view) at ``location`` (a directory
        or ``s3://bucket/prefix``; ``storage_options`` as in ``create``).

        Raises:
            NotFoundError: there is no dataset at ``location``.
        """
        storage = Storage(str(location), storage_options)
        if storage.kind == "mv":
            from .mv import MaterializedView

            return MaterializedView.load(str(location))  # type: ignore[return-value]
        return cls(storage)

    def close(self) -> None:
        """Release the dataset's open files and caches (see ``Storage.close``); the
        handle stays usable and reopens what it needs."""
        self._storage.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- properties ------------------------------------------------------------
    @property
    def storage(self) -> Storage:
        """The low-level ``Storage`` of the dataset (metadata, snapshots, files)."""
        return self._storage

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of the dataset's rows."""
        return self._storage.schema

    @property
    def primary_keys(self) -> list[str]:
        """The primary key fields, in key order."""
        return self._storage.primary_keys

    @property
    def record_fields(self) -> list[str]:
        """The fields stored in ArrayRecord files (the others are Parquet index fields)."""
        return self._storage.record_fields

    @property
    def location(self) -> str:
        """The dataset's directory, absolute."""
        return self._storage.location

    @property
    def name(self) -> str:
        """The dataset's name: its directory's base name (its table name in SQL)."""
        return self._storage.name

    @property
    def current_branch(self) -> str:
        """The branch this handle writes to and reads by default (``main`` unless set)."""
        return self._branch

    # -- runners ---------------------------------------------------------------
    def local(self, file_options: FileOptions | None = None) -> LocalRunner:
        """A runner that reads and writes in this process (on the current branch).

        Its ``append``/``insert``/``upsert``/``delete`` each make one snapshot;
        ``read``/``read_all``/``diff`` read any version.
        """
        return LocalRunner(self._storage, file_options, self._branch)

    def ray(self, ray_options: RayOptions | None = None, file_options: FileOptions | None = None):
        """A runner like ``local()`` whose reads and writes run as Ray tasks.

        Starts a local Ray if none is running (``ray.init`` first to use a cluster).
        ``ray_options.max_parallelism`` bounds the tasks running at once.
        """
        from .ray_runner import RayRunner

        return RayRunner(self._storage, ray_options or RayOptions(), file_options, self._branch)

    # -- versions --------------------------------------------------------------
    def versions(self) -> pa.Table:
        """All snapshots, newest first, one row per tag or branch naming them."""
        return self._storage.versions()

    def add_tag(self, tag: str, snapshot_id: int | None = None) -> None:
        """Name snapshot ``snapshot_id`` (default: the current branch's head) ``tag``.

        Raises:
            AlreadyExistsError: a tag or branch of that name exists.
            VersionNotFoundError: ``snapshot_id`` does not exist.
            UserInputError: ``tag`` is not a valid name.
        """
        validate_ref_name(tag, "tag")

        def change(head: Entry) -> dict[str, Any]:
            if tag in head.tags or tag in head.branches:
                raise AlreadyExistsError(f"{self.name}: a tag or branch named {tag!r} already exists")
            sid = self._storage.resolve(snapshot_id if snapshot_id is not None else self._branch, self._branch, head)
            return {"tags": {**head.tags, tag: sid}}

        self._storage.commit_refs(change, f"add_tag {tag}")

    def remove_tag(self, tag: str) -> None:
        """Remove ``tag`` (the snapshot stays).

        Raises:
            VersionNotFoundError: there is no such tag.
        """
        def change(head: Entry) -> dict[str, Any]:
            if tag not in head.tags:
                raise VersionNotFoundError(f"{self.name}: no tag named {tag!r}")
            return {"tags": {k: v for k, v in head.tags.items() if k != tag}}

        self._storage.commit_refs(change, f"remove_tag {tag}")

    def add_branch(self, branch: str, snapshot_id: Version = None) -> None:
        """Create ``branch`` at ``snapshot_id`` (default: the current branch's head)."""
        validate_ref_name(branch, "branch")

        def change(head: Entry) -> dict[str, Any]:
            if branch in head.tags or branch in head.branches:
                raise AlreadyExistsError(f"{self.name}: a tag or branch named {branch!r} already exists")
            sid = self._storage.resolve(snapshot_id if snapshot_id is not None else self._branch, self._branch, head)
            return {"branches": {**head.branches, branch: sid}}

        self._storage.commit_refs(change, f"add_branch {branch}")

    def remove_branch(self, branch: str) -> None:
        """Remove ``branch`` (its snapshots stay readable by id).

        Raises:
            UserInputError: ``branch`` is ``main`` or this handle's current branch.
            VersionNotFoundError: there is no such branch.
        """
        if branch == DEFAULT_BRANCH:
            raise UserInputError(f"{self.name}: the default branch {DEFAULT_BRANCH!r} cannot be removed")
        if branch == self._branch:
            raise UserInputError(f"{self.name}: cannot remove the current branch {branch!r}; switch first")

        def change(head: Entry) -> dict[str, Any]:
            if branch not in head.branches:
                raise VersionNotFoundError(f"{self.name}: no branch named {branch!r}")
            return {"branches": {k: v for k, v in head.branches.items() if k != branch}}

        self._storage.commit_refs(change, f"remove_branch {branch}")

    def set_current_branch(self, branch: str) -> None:
        """Direct this handle's writes and default reads to ``branch``."""
        if branch not in self._storage.head().branches:
            raise VersionNotFoundError(f"{self.name}: no branch named {branch!r}")
        self._branch = branch

    # -- layout ----------------------------------------------------------------
    @property
    def file_layout(self) -> dict[str, str] | None:
        """The file layout (``{"path": template, "content": field}``) of the current
        branch head, or None."""
        head = self._storage.head()
        return self._storage.file_layout(self._storage.resolve(None, self._branch, head), head)

    def set_file_layout(self, layout: dict[str, str] | None, message: str | None = None) -> JobResult:
        """Set (or clear) the file layout of the current branch.

        The layout belongs to the snapshot: this commits a new snapshot (same rows,
        new layout), so older versions keep showing the tree they showed. Refused if
        two rows of the branch head would land on the same path; SKIPPED when the
        layout is already that one.
        """
        if layout is not None:
            validate_layout(layout, self.schema, self.record_fields)
            fields = sorted(set(layout_fields(layout["path"])))
            t = self.local().read_all(fields=fields)
            seen: dict[str, int] = {}
            for i, row in enumerate(t.to_pylist()):
                p = format_path(layout["path"], row)
                if p in seen:
                    raise UserInputError(f"{self.name}: file_layout puts two rows at {p!r}")
                seen[p] = i

        def plan(base: int) -> Plan | None:
            # Checked against the head the commit lands on, not the one read above.
            return None if self._storage.file_layout(base) == layout else Plan()

        def settings(head: Entry) -> dict[str, Any]:
            # A materialized view's new snapshot reflects the same source snapshots as
            # its parent: carried over, or the next refresh would rebuild from scratch.
            base = head.branches.get(self._branch)
            marks = head.settings.get("mv") or {}
            mark = marks.get(str(base))
            if mark is None and base == 0 and self._storage.kind == "mv":
                mark = [0] * len((self._storage.meta.get("view") or {}).get("sources") or [])
            if mark is None:
                return head.settings
            return {**head.settings, "mv": {**marks, str(head.last_snapshot_id + 1): mark}}

        snap = self._storage.commit_snapshot(self._branch, "set_file_layout", plan, settings, message=message,
                                             snapshot_extra={"file_layout": layout}, keep_empty=True)
        return JobResult.from_snapshot(self._storage, snap)

    # -- inspection ------------------------------------------------------------
    def index_files(self, version: Version = None) -> list[str]:
        """The index Parquet files of ``version`` (default: the current branch), absolute paths.

        Any Parquet reader can read them; record fields appear as references.
        """
        sid = self._storage.resolve(version, self._branch)
        return [self._storage.full_path(r["path"]) for r in self._storage.index_entries(sid)]

    def snapshot_id(self, version: Version = None) -> int:
        """The snapshot id ``version`` (an id, tag or branch; default the current branch) names.

        Raises:
            VersionNotFoundError: no such version.
        """
        return self._storage.resolve(version, self._branch)

    def sql(self, query: str, version: Version = None) -> pa.Table:
        """Run a DuckDB ``query`` over ``version``; the dataset is the table named ``self.name``.

        Record fields appear as references (file, pos, size, offset).

        Raises:
            UserInputError: the query is not valid SQL or reads something else.
        """
        from .sql import query_datasets

        return query_datasets(query, {self.name: (self, version)})

    def ray_dataset(self, version: Version = None, fields: Sequence[str] | None = None,
                    ray_options: RayOptions | None = None):
        """A lazy ``ray.data.Dataset`` of a version: one read task per index file row range."""
        from .ray_source import ray_dataset

        return ray_dataset(self, version, fields, ray_options)

    def num_rows(self, version: Version = None) -> int:
        """The number of rows in ``version`` (from the snapshot's statistics; no file is read)."""
        return self._storage.snapshot(self.snapshot_id(version))["stats"]["rows"]

    # -- training integrations (engine/hf.py) ----------------------------------
    def to_huggingface(self, version: Version = None, fields: Sequence[str] | None = None,
                       cache_dir: str | None = None):
        """A version as a ``datasets.Dataset``, record bytes materialized, features kept."""
        from .hf import to_huggingface

        return to_huggingface(self, version, fields, cache_dir)

    @classmethod
    def from_huggingface(cls, hf_dataset, location: str, primary_keys: Sequence[str] | str,
                         record_fields: Sequence[str] | None = None, batch_size: int = 1000) -> Dataset:
        """Store a ``datasets.Dataset`` as a new dataset at ``location``, in one snapshot."""
        from .hf import from_huggingface

        return from_huggingface(hf_dataset, location, primary_keys, record_fields, batch_size)

    # -- maintenance -----------------------------------------------------------
    def vacuum(self, older_than: timedelta = timedelta(days=1), *, apply: bool = False) -> VacuumReport:
        """Remove files no snapshot references once older than ``older_than``.

        A dry run unless ``apply=True``; returns a ``VacuumReport`` (files, bytes).
        """
        from .vacuum import vacuum

        return vacuum(self._storage, older_than=older_than, apply=apply)

    # -- version control (engine/merge.py, restore.py, compact.py, expire.py) ----
    def merge(self, source: Version, into: str | None = None, on_conflict: str = "fail") -> JobResult:
        """Bring the rows ``source`` changed since the merge base into branch ``into``.

        Fast-forwards when ``into``'s head is an ancestor of ``source``; SKIPPED when
        there is nothing to merge; otherwise one snapshot recording both parents.
        ``on_conflict``: "fail" (raise ``MergeConflictError``), "ours" or "theirs".
        """
        from .merge import merge

        return merge(self._storage, source, into or self._branch, on_conflict)

    def restore(self, version: Version, branch: str | None = None) -> JobResult:
        """A new snapshot on ``branch`` whose rows equal ``version``'s (history kept)."""
        from .restore import restore

        return restore(self._storage, version, branch or self._branch)

    def compact(self, file_options: FileOptions | None = None) -> JobResult:
        """Rewrite the current branch's rows into fewer, larger files (no row changes)."""
        from .compact import compact

        return compact(self._storage, self._branch, file_options)

    def expire_snapshots(self, older_than: timedelta | str, apply: bool = False) -> ExpireReport:
        """Drop snapshots older than ``older_than`` that no tag or branch names, and the
        files only they used. A dry run unless ``apply=True``."""
        from .expire import expire_snapshots

        return expire_snapshots(self._storage, older_than, apply=apply)

    # -- views (engine/views.py) -----------------------------------------------
    def map_batches(self, fn, output_schema: pa.Schema, input_fields: Sequence[str] | None = None,
                    output_record_fields: Sequence[str] | None = None, batch_size: int | None = None):
        """A view applying ``fn`` (a dict of lists -> a dict of lists) to batches of rows.

        Args:
            fn: the UDF; it receives ``input_fields`` (default all) of up to
                ``batch_size`` rows and returns rows of ``output_schema`` (keys kept).
            output_schema: schema of the UDF's output, primary keys included.
            output_record_fields: output fields to store in ArrayRecord when materialized.

        Read it with ``view.local().read_all()`` or store it with ``catalog.materialize``.
        """
        from .views import MapView

        return MapView(self, fn, output_schema, input_fields, output_record_fields, batch_size)

    def filter(self, fn, input_fields: Sequence[str] | None = None):
        """A view of the rows for which ``fn(row_dict)`` is true."""
        from .views import FilterView

        return FilterView(self, fn, input_fields)

    def filter_batches(self, fn, input_fields: Sequence[str] | None = None):
        """A view of the rows ``fn`` keeps; ``fn`` takes a dict of lists and returns one bool per row."""
        from .views import FilterView

        return FilterView(self, fn, input_fields, batched=True)

    def join(self, right, keys: Sequence[str], left_fields: Sequence[str] | None = None,
             right_fields: Sequence[str] | None = None):
        """A view joining this dataset with ``right`` (a dataset or view) on ``keys``.

        ``left_fields``/``right_fields`` select the fields taken from each side.
        """
        from .views import JoinView

        return JoinView(self, right, keys, left_fields, right_fields)

    def __repr__(self) -> str:
        return f"Dataset({self.location!r})"
