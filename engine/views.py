"""Views: datasets derived on read by a map, a filter or a join, composable.

A view is a small tree whose leaves are source datasets (``Source``). Every node knows
three things, and nothing else is needed to read it, diff it or keep a materialized
copy up to date:

- ``_scan(ctx, versions)``: its rows at given source versions, as parts (``view_parts``);
- ``_delta(ctx, start, end)``: the net change between two sets of source versions
  (``view_delta.Delta``): keys to delete, then rows to add;
- ``_lookup(ctx, versions, keys)``: its rows whose columns match a small key table
  (how a join recomputes only the keys that changed on the other side).

Map and filter UDFs run on rows one batch at a time and must not depend on other rows;
a map keeps the source's primary key columns unchanged. Sources are expected to have
unique primary keys (as ``insert``/``upsert`` keep them). Record fields are carried as
references and read only for rows that are kept and fields that are asked for.

``MaterializedView`` (``mv.py``) stores a view's rows and refreshes them from ``_delta``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import schema as sch
from .errors import SchemaError, UserInputError
from .storage import DEFAULT_BRANCH, Storage, Version
from .view_delta import Delta, merge_deletes, source_delta
from .view_parts import (
    DEFAULT_UDF_ROWS,
    Applied,
    Ctx,
    FileRange,
    Part,
    Rows,
    bool_mask,
    collect,
    open_storage,
    ref_schema,
    resolve,
    slices,
    unique_rows,
)
from .writes import key_filter, key_mask

if TYPE_CHECKING:
    from .mv import MaterializedView
    from .options import FileOptions, RayOptions
    from .view_runner import ViewRunner

SourceKey = tuple[str, str]  # (dataset location, branch)
Versions = dict[SourceKey, int]


class View:
    """A derived dataset: ``schema``, ``primary_keys``, ``record_fields``.

    ``ref_roots`` maps the record fields that flow through as references to the
    dataset they point into.
    """

    schema: pa.Schema
    primary_keys: list[str]
    record_fields: list[str]
    ref_roots: dict[str, str]

    # -- structure -------------------------------------------------------------
    def sources(self) -> list[Source]:
        """The distinct source datasets (and branches), in a stable order."""
        out: dict[SourceKey, Source] = {}
        for s in self._leaves():
            out.setdefault(s.key, s)
        return list(out.values())

    def _leaves(self) -> list[Source]:
        raise NotImplementedError

    @property
    def ref_schema(self) -> pa.Schema:
        """The view's schema with record fields as references (file, pos, size, offset)."""
        return ref_schema(self.schema, self.ref_roots)

    @property
    def index_fields(self) -> list[str]:
        """The fields that are not record fields."""
        return [n for n in self.schema.names if n not in self.record_fields]

    def resolve_versions(self, version: Version | dict[Any, Version] = None) -> Versions:
        """Snapshot ids of every source for ``version``: one id, tag or branch for all
        sources, or a dict keyed by source position, dataset name or location."""
        srcs = self.sources()
        if isinstance(version, dict):
            known: set[Any] = set()
            out: Versions = {}
            for i, s in enumerate(srcs):
                names = (i, s.storage.name, s.storage.location)
                known.update(names)
                v = next((version[n] for n in names if n in version), None)
                out[s.key] = s.storage.resolve(v, s.branch)
            unknown = [k for k in version if k not in known]
            if unknown:
                raise UserInputError(f"version names unknown sources {unknown}; sources: {[s.storage.name for s in srcs]}")
            return out
        return {s.key: s.storage.resolve(version, s.branch) for s in srcs}

    # -- the three primitives ----------------------------------------------------
    def _scan(self, ctx: Ctx, versions: Versions) -> Iterator[Part]:
        raise NotImplementedError

    def _delta(self, ctx: Ctx, start: Versions, end: Versions) -> Delta:
        raise NotImplementedError

    def _lookup(self, ctx: Ctx, versions: Versions, keys: pa.Table) -> pa.Table:
        raise NotImplementedError

    def _empty_at(self, versions: Versions) -> bool:
        raise NotImplementedError

    # -- runners -----------------------------------------------------------------
    def local(self, file_options: FileOptions | None = None) -> ViewRunner:
        """Read the view in this process: ``read``, ``read_all``, ``diff``."""
        from .view_parts import LocalExecutor
        from .view_runner import ViewRunner

        return ViewRunner(self, LocalExecutor(), file_options)

    def ray(self, ray_options: RayOptions | None = None, file_options: FileOptions | None = None) -> ViewRunner:
        """Read the view with its parts running as parallel Ray tasks."""
        from .ray_runner import RayExecutor
        from .view_runner import ViewRunner

        return ViewRunner(self, RayExecutor(ray_options), file_options)

    def ray_dataset(self, version: Version | dict[Any, Version] = None, fields: Sequence[str] | None = None,
                    ray_options: RayOptions | None = None):
        """A lazy ``ray.data.Dataset`` of the view: one read task per part."""
        from .ray_source import ray_dataset

        return ray_dataset(self, version, fields, ray_options)

    def materialize(self, location: str) -> MaterializedView:
        """Store this view as a materialized view at ``location`` (empty until refreshed)."""
        from .mv import MaterializedView

        return MaterializedView.create(str(location), self)

    # -- composition -------------------------------------------------------------
    def map_batches(self, fn: Callable[[dict[str, list]], Any], output_schema: pa.Schema,
                    input_fields: Sequence[str] | None = None, output_record_fields: Sequence[str] | None = None,
                    batch_size: int | None = None) -> MapView:
        """A view applying ``fn`` to batches of this view's rows (see ``Dataset.map_batches``)."""
        return MapView(self, fn, output_schema, input_fields, output_record_fields, batch_size)

    def filter(self, fn: Callable[[dict[str, Any]], bool], input_fields: Sequence[str] | None = None) -> FilterView:
        """A view of the rows for which ``fn(row_dict)`` is true."""
        return FilterView(self, fn, input_fields)

    def filter_batches(self, fn: Callable[[dict[str, list]], Any], input_fields: Sequence[str] | None = None) -> FilterView:
        """A view of the rows ``fn`` keeps; ``fn`` takes a dict of lists, returns one bool per row."""
        return FilterView(self, fn, input_fields, batched=True)

    def join(self, right: Any, keys: Sequence[str], left_fields: Sequence[str] | None = None,
             right_fields: Sequence[str] | None = None) -> JoinView:
        """A view joining this view with ``right`` (a dataset or view) on ``keys``."""
        return JoinView(self, right, keys, left_fields, right_fields)


def as_view(x: Any) -> View:
    """A view, or a dataset (or a materialized view's stored rows) as a source."""
    if isinstance(x, View):
        return x
    from .dataset import Dataset

    if isinstance(x, Dataset):
        return Source(x.storage, x.current_branch)
    raise UserInputError(f"expected a Dataset or a view, got {type(x).__name__}")


class Source(View):
    """A dataset at one branch: the leaf of every view."""

    def __init__(self, storage: Storage, branch: str = DEFAULT_BRANCH):
        self.storage = storage
        self.branch = branch
        self.schema = storage.schema
        self.primary_keys = list(storage.primary_keys)
        self.record_fields = list(storage.record_fields)
        self.ref_roots = {f: storage.location for f in self.record_fields}

    @classmethod
    def open(cls, location: str, branch: str = DEFAULT_BRANCH) -> Source:
        return cls(open_storage(location), branch)

    def __reduce__(self):
        # Pickled as a path: storages hold locks and caches; Ray tasks reopen them.
        return (Source.open, (self.storage.location, self.branch))

    @property
    def key(self) -> SourceKey:
        return (self.storage.location, self.branch)

    @property
    def location(self) -> str:
        return self.storage.location

    def _leaves(self) -> list[Source]:
        return [self]

    def scan_parts(self, ctx: Ctx, sid: int, prune: pc.Expression | None = None) -> Iterator[Part]:
        st = self.storage
        for e in st.index_entries(sid, prune):
            n = e["rows"]
            step = ctx.part_rows or n
            if step >= n:
                yield FileRange(st.location, e["path"], st.index_schema, filter_=prune, rows=n)
                continue
            for start in range(0, n, step):
                yield FileRange(st.location, e["path"], st.index_schema, start, step, prune, rows=min(step, n - start))

    def _scan(self, ctx: Ctx, versions: Versions, prune: pc.Expression | None = None) -> Iterator[Part]:
        return self.scan_parts(ctx, versions[self.key], prune)

    def _delta(self, ctx: Ctx, start: Versions, end: Versions) -> Delta:
        return source_delta(self, ctx, start[self.key], end[self.key])

    def lookup_rows(self, sid: int, keys: pa.Table) -> pa.Table:
        from .reads import read_all

        keys = unique_rows(keys)
        if keys.num_rows == 0:
            return self.storage.index_schema.empty_table()
        t = read_all(self.storage, version=sid, filter_=key_filter(keys), reference_read=True)
        if t.num_rows:
            t = t.filter(pa.array(key_mask(t, keys)))
        return t

    def _lookup(self, ctx: Ctx, versions: Versions, keys: pa.Table) -> pa.Table:
        return self.lookup_rows(versions[self.key], keys)

    def _empty_at(self, versions: Versions) -> bool:
        return self.storage.snapshot(versions[self.key])["stats"]["rows"] == 0

    def __repr__(self) -> str:
        return f"Source({self.storage.location!r}, branch={self.branch!r})"


def _fields(source: View, fields: Sequence[str] | None, what: str) -> list[str]:
    """The asked-for fields with the source's keys first (views carry keys along)."""
    return list(dict.fromkeys([*source.primary_keys, *sch.select_fields(source.schema, fields, what)]))


def _udf_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


class _RowWise(View):
    """A view applying a UDF to each batch of one source's rows (map, filter)."""

    source: View
    input_fields: list[str]
    batch_size: int | None

    def _leaves(self) -> list[Source]:
        return self.source._leaves()

    def apply(self, table: pa.Table, batch_size: int | None = None) -> Iterator[pa.Table]:
        raise NotImplementedError

    def _inputs(self, chunk: pa.Table) -> pa.Table:
        roots = {c: r for c, r in self.source.ref_roots.items() if c in self.input_fields}
        return resolve(chunk.select(self.input_fields), roots, self.source.schema)

    def _scan(self, ctx: Ctx, versions: Versions) -> Iterator[Part]:
        for p in self.source._scan(ctx, versions):
            yield Applied(self, p, ctx.batch_size)

    def _delta(self, ctx: Ctx, start: Versions, end: Versions) -> Delta:
        d = self.source._delta(ctx, start, end)
        return Delta(d.deletes, [Applied(self, p, ctx.batch_size) for p in d.adds], d.from_empty)

    def _apply_all(self, t: pa.Table, ctx: Ctx) -> pa.Table:
        out = list(self.apply(t, ctx.batch_size))
        return pa.concat_tables(out) if out else self.ref_schema.empty_table()

    def _empty_at(self, versions: Versions) -> bool:
        return self.source._empty_at(versions)


class MapView(_RowWise):
    """Rows transformed by ``fn(batch) -> batch``, batches as dicts of lists.

    ``fn`` receives ``input_fields`` (default all; primary keys always) with record
    fields as bytes, and returns a dict of lists/arrays, a ``pa.Table`` or a pandas
    DataFrame with the fields of ``output_schema``; output fields it leaves out are
    taken from the source row when it returns as many rows as it got. It may drop rows, but
    must keep each kept row's primary key.
    """

    def __init__(self, source: Any, fn: Callable[[dict[str, list]], Any], output_schema: pa.Schema,
                 input_fields: Sequence[str] | None = None, output_record_fields: Sequence[str] | None = None,
                 batch_size: int | None = None):
        self.source = as_view(source)
        if not callable(fn):
            raise UserInputError(f"map_batches: fn must be callable, got {type(fn).__name__}")
        if not isinstance(output_schema, pa.Schema):
            raise SchemaError(f"map_batches: output_schema must be a pyarrow.Schema, got {type(output_schema).__name__}")
        sch.check_batch_size(batch_size)
        what = f"map_batches({_udf_name(fn)})"
        for k in self.source.primary_keys:
            if k not in output_schema.names:
                raise SchemaError(f"{what}: output_schema must keep primary key {k!r} of the source")
            if output_schema.field(k).type != self.source.schema.field(k).type:
                raise SchemaError(f"{what}: primary key {k!r} has type {output_schema.field(k).type} in output_schema, "
                                  f"{self.source.schema.field(k).type} in the source")
        rec = list(output_record_fields or [])
        sch.validate(output_schema, self.source.primary_keys, rec)
        self.fn = fn
        self.schema = output_schema
        self.primary_keys = list(self.source.primary_keys)
        self.record_fields = rec
        self.ref_roots = {}
        self.input_fields = _fields(self.source, input_fields, what)
        self.batch_size = batch_size
        self._what = what

    def apply(self, table: pa.Table, batch_size: int | None = None) -> Iterator[pa.Table]:
        size = batch_size or self.batch_size or DEFAULT_UDF_ROWS
        for chunk in slices(table, size):
            inputs = self._inputs(chunk)
            t = self._conform(self.fn(inputs.to_pydict()), inputs, chunk)
            if t.num_rows:
                yield t

    def _conform(self, out: Any, inputs: pa.Table, chunk: pa.Table) -> pa.Table:
        if out is None:
            raise SchemaError(f"{self._what} returned None; return the output batch")
        if isinstance(out, pa.RecordBatch):
            out = pa.Table.from_batches([out])
        elif hasattr(out, "to_dict") and hasattr(out, "columns") and not isinstance(out, pa.Table):
            out = pa.Table.from_pandas(out, preserve_index=False)
        if isinstance(out, pa.Table):
            cols = {n: out.column(n) for n in out.column_names}
            n = out.num_rows
        elif isinstance(out, dict):
            cols = dict(out)
            n = len(next(iter(cols.values()))) if cols else 0
        else:
            raise SchemaError(f"{self._what} returned {type(out).__name__}; expected a dict of lists, a pyarrow Table or a DataFrame")
        if n == inputs.num_rows:
            missing = [m for m in self.schema.names if m not in cols and m in chunk.column_names]
            unseen = [m for m in missing if m not in inputs.column_names]
            passed = resolve(chunk.select(unseen), self.source.ref_roots, self.source.schema)
            for name in missing:
                cols[name] = passed.column(name) if name in unseen else inputs.column(name)
        return sch.to_table({k: v for k, v in cols.items() if k in self.schema.names}, self.schema, self._what)

    def _lookup(self, ctx: Ctx, versions: Versions, keys: pa.Table) -> pa.Table:
        if set(keys.column_names) <= set(self.primary_keys):
            return self._apply_all(self.source._lookup(ctx, versions, keys), ctx)
        # The UDF may change any other column: compute everything, then match.
        t = collect(ctx, self._scan(ctx, versions), self.ref_schema)
        return t.filter(pa.array(key_mask(t, keys))) if t.num_rows else t

    def __repr__(self) -> str:
        return f"MapView({self._what}, {self.source!r})"


class FilterView(_RowWise):
    """The rows for which ``fn(row)`` is true (``batched``: ``fn(batch)`` gives a mask)."""

    def __init__(self, source: Any, fn: Callable[[Any], Any], input_fields: Sequence[str] | None = None,
                 batched: bool = False):
        self.source = as_view(source)
        if not callable(fn):
            raise UserInputError(f"filter: fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.batched = batched
        self._what = f"{'filter_batches' if batched else 'filter'}({_udf_name(fn)})"
        self.input_fields = _fields(self.source, input_fields, self._what)
        self.batch_size = None
        self.schema = self.source.schema
        self.primary_keys = list(self.source.primary_keys)
        self.record_fields = list(self.source.record_fields)
        self.ref_roots = dict(self.source.ref_roots)

    def apply(self, table: pa.Table, batch_size: int | None = None) -> Iterator[pa.Table]:
        size = batch_size or DEFAULT_UDF_ROWS
        for chunk in slices(table, size):
            inputs = self._inputs(chunk)
            if self.batched:
                mask = bool_mask(self.fn(inputs.to_pydict()), chunk.num_rows, self._what)
            else:
                mask = np.fromiter((bool(self.fn(r)) for r in inputs.to_pylist()), dtype=bool, count=chunk.num_rows)
            if mask.any():
                yield chunk.filter(pa.array(mask))

    def _lookup(self, ctx: Ctx, versions: Versions, keys: pa.Table) -> pa.Table:
        return self._apply_all(self.source._lookup(ctx, versions, keys), ctx)

    def __repr__(self) -> str:
        return f"FilterView({self._what}, {self.source!r})"


class JoinView(View):
    """The inner join of two views on ``keys`` (any index fields both sides have).

    Output: the keys, then the left fields, then the right fields; the primary key is
    the union of both sides' primary keys (one output row per pair of joined rows).
    Record fields stay references into their own datasets until read.
    """

    def __init__(self, left: Any, right: Any, keys: Sequence[str], left_fields: Sequence[str] | None = None,
                 right_fields: Sequence[str] | None = None):
        self.left = as_view(left)
        self.right = as_view(right)
        keys = [keys] if isinstance(keys, str) else list(keys or [])
        if not keys:
            raise UserInputError("join: at least one key field is required")
        for side, v in (("left", self.left), ("right", self.right)):
            for k in keys:
                if k not in v.schema.names:
                    raise SchemaError(f"join: key {k!r} is not a field of the {side} side (fields: {v.schema.names})")
                if k in v.record_fields:
                    raise SchemaError(f"join: key {k!r} is a record field of the {side} side; join on index fields")
        for k in keys:
            lt, rt = self.left.schema.field(k).type, self.right.schema.field(k).type
            if lt != rt:
                raise SchemaError(f"join: key {k!r} has type {lt} on the left and {rt} on the right")
        self.keys = keys
        lf = _fields(self.left, left_fields, "join left_fields")
        rf = _fields(self.right, right_fields, "join right_fields")
        self.left_cols = list(dict.fromkeys([*keys, *lf]))
        self.right_cols = [c for c in dict.fromkeys(rf) if c not in keys]
        clash = sorted(set(self.left_cols) & set(self.right_cols))
        if clash:
            raise SchemaError(f"join: field(s) {clash} exist on both sides and are not join keys; "
                              "choose left_fields/right_fields or rename with map_batches first")
        self.schema = pa.schema([self.left.schema.field(n) for n in self.left_cols]
                                + [self.right.schema.field(n) for n in self.right_cols])
        self.primary_keys = list(dict.fromkeys([*self.left.primary_keys, *self.right.primary_keys]))
        self.record_fields = ([n for n in self.left_cols if n in self.left.record_fields]
                              + [n for n in self.right_cols if n in self.right.record_fields])
        self.ref_roots = {**{n: r for n, r in self.left.ref_roots.items() if n in self.left_cols},
                          **{n: r for n, r in self.right.ref_roots.items() if n in self.right_cols}}

    def _leaves(self) -> list[Source]:
        return self.left._leaves() + self.right._leaves()

    def _join(self, left: pa.Table, right: pa.Table) -> pa.Table:
        """Hash-join key columns with row numbers, then gather: payload columns of any
        type (references are structs) never go through the join itself."""
        if left.num_rows == 0 or right.num_rows == 0:
            return self.ref_schema.empty_table()
        lk = left.select(self.keys).append_column("__l", pa.array(np.arange(left.num_rows)))
        rk = right.select(self.keys).append_column("__r", pa.array(np.arange(right.num_rows)))
        j = lk.join(rk, keys=self.keys, join_type="inner", use_threads=False)
        if j.num_rows == 0:
            return self.ref_schema.empty_table()
        j = j.sort_by([("__l", "ascending"), ("__r", "ascending")])
        li, ri = j.column("__l"), j.column("__r")
        lt = left.select(self.left_cols).take(li)
        rt = right.select(self.right_cols).take(ri)
        cols = lt.columns + rt.columns
        return pa.Table.from_arrays(cols, schema=self.ref_schema)

    def _scan(self, ctx: Ctx, versions: Versions) -> Iterator[Part]:
        left = collect(ctx, self.left._scan(ctx, versions), self.left.ref_schema)
        right = collect(ctx, self.right._scan(ctx, versions), self.right.ref_schema)
        out = self._join(left, right)
        for t in slices(out, ctx.part_rows or 1 << 20):
            yield Rows(t)

    def _empty_at(self, versions: Versions) -> bool:
        return self.left._empty_at(versions) or self.right._empty_at(versions)

    def _delta(self, ctx: Ctx, start: Versions, end: Versions) -> Delta:
        # new = join(L', R'); rows not already kept are those with a new left row or a new
        # right row: join(A_L, R') + join(L' - A_L, A_R), each found by key lookups.
        if self._empty_at(start):
            return Delta(adds=list(self._scan(ctx, end)), from_empty=True)
        dl = self.left._delta(ctx, start, end)
        dr = self.right._delta(ctx, start, end)
        al = collect(ctx, dl.adds, self.left.ref_schema)
        ar = collect(ctx, dr.adds, self.right.ref_schema)
        parts: list[pa.Table] = []
        if al.num_rows:
            rk = self.right._lookup(ctx, end, al.select(self.keys))
            parts.append(self._join(al, rk))
        if ar.num_rows:
            lk = self.left._lookup(ctx, end, ar.select(self.keys))
            if al.num_rows and lk.num_rows:
                seen = key_mask(lk, unique_rows(al.select(self.left.primary_keys)))
                lk = lk.filter(pa.array(~seen))
            parts.append(self._join(lk, ar))
        out = pa.concat_tables(parts) if parts else self.ref_schema.empty_table()
        adds = [Rows(t) for t in slices(out, ctx.part_rows or 1 << 20)]
        return Delta(merge_deletes(dl.deletes + dr.deletes), adds)

    def _lookup(self, ctx: Ctx, versions: Versions, keys: pa.Table) -> pa.Table:
        cols = keys.column_names
        lcols = [c for c in cols if c in self.left_cols]
        if lcols:
            lt = self.left._lookup(ctx, versions, keys.select(lcols))
            rt = self.right._lookup(ctx, versions, lt.select(self.keys)) if lt.num_rows else self.right.ref_schema.empty_table()
        else:
            rt = self.right._lookup(ctx, versions, keys)
            lt = self.left._lookup(ctx, versions, rt.select(self.keys)) if rt.num_rows else self.left.ref_schema.empty_table()
        out = self._join(lt, rt)
        if out.num_rows and len(lcols) not in (0, len(cols)):
            out = out.filter(pa.array(key_mask(out, keys)))
        return out

    def __repr__(self) -> str:
        return f"JoinView({self.left!r}, {self.right!r}, keys={self.keys})"


def __getattr__(name: str) -> Any:
    # ``MaterializedView`` lives in mv.py (it builds on Dataset); reachable here too.
    if name == "MaterializedView":
        from .mv import MaterializedView

        return MaterializedView
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
