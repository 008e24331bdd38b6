"""Parts: the picklable units of work that view reads and refreshes are cut into.

A view turns a read (or the change between two versions) into parts. Calling a part
yields Arrow tables of the view's rows; record fields the view passes through unchanged
stay *references* until whoever consumes the rows resolves them, so record bytes are
read once, only for rows that survive, and only for the fields asked for. The same parts
run in this process (``LocalExecutor``) or as Ray tasks (``RayExecutor`` in
``ray_runner``): nothing in a part depends on where it runs, and a part holds paths and
small tables, never open handles.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import format as fmt
from .backend import is_remote, open_backend
from .errors import NotFoundError, UserInputError
from .filters import Predicate
from .options import FileOptions
from .records import REF_TYPE, RecordReader
from .refs import by_bytes, read_index, ref_columns, resolve  # noqa: F401 (resolve: used by views)
from .storage import Storage
from .writes import FileWriter, key_mask

T = TypeVar("T")

# A map or filter UDF sees at most this many rows per call unless told otherwise.
DEFAULT_UDF_ROWS = 4096
# A refresh writes an index file (and its record files) per this many rows or bytes.
WRITE_ROWS = 262_144
WRITE_BYTES = 256 << 20
# Records are resolved (read into memory) this many bytes at a time.
RESOLVE_BYTES = 64 << 20


class Part:
    """A unit of work; ``rows`` is the number of rows it reads, when known."""

    rows: int | None = None

    def __call__(self) -> Iterator[pa.Table]:
        raise NotImplementedError


class Rows(Part):
    """Rows already computed (by a join, or a lookup) on the planning side."""

    def __init__(self, table: pa.Table):
        self.table = table
        self.rows = table.num_rows

    def __call__(self) -> Iterator[pa.Table]:
        if self.table.num_rows:
            yield self.table


class FileRange(Part):
    """Rows ``[start, start + length)`` of one index file, records as references."""

    def __init__(self, location: str, path: str, schema: pa.Schema, start: int = 0,
                 length: int | None = None, filter_: pc.Expression | None = None, rows: int | None = None):
        self.location = location
        self.path = path
        self.schema = schema
        self.start = start
        self.length = length
        self.filter_ = filter_
        self.rows = rows

    def __call__(self) -> Iterator[pa.Table]:
        if self.start or self.length is not None:
            t = _index_table(self.location, self.path, self.schema).slice(self.start, self.length)
        else:
            t = _read_index(self.location, self.path, self.schema)
        if self.filter_ is not None and t.num_rows:
            t = t.filter(self.filter_)
        if t.num_rows:
            yield t


def _read_index(location: str, path: str, schema: pa.Schema) -> pa.Table:
    return read_index(location, path, schema)


_index_tables: OrderedDict[tuple[str, str], pa.Table] = OrderedDict()


def _index_table(location: str, path: str, schema: pa.Schema) -> pa.Table:
    """An index file read once per process for all its row ranges (files never change)."""
    key = (location, path)
    with _cache_lock:
        t = _index_tables.get(key)
        if t is not None:
            _index_tables.move_to_end(key)
            return t
    t = _read_index(location, path, schema)
    with _cache_lock:
        _index_tables[key] = t
        while len(_index_tables) > 4:
            _index_tables.popitem(last=False)
    return t


class Excluding(Part):
    """Drops the rows whose key matches ``keys``: rows a later snapshot deleted."""

    def __init__(self, inner: Part, keys: pa.Table):
        self.inner = inner
        self.keys = keys
        self.rows = inner.rows

    def __call__(self) -> Iterator[pa.Table]:
        for t in self.inner():
            m = key_mask(t, self.keys)
            if m.any():
                t = t.filter(pa.array(~m))
            if t.num_rows:
                yield t


class Applied(Part):
    """A map or filter view applied to the rows of an inner part."""

    def __init__(self, view: Any, inner: Part, batch_size: int | None):
        self.view = view
        self.inner = inner
        self.batch_size = batch_size
        self.rows = inner.rows

    def __call__(self) -> Iterator[pa.Table]:
        for t in self.inner():
            yield from self.view.apply(t, self.batch_size)


# -- resolving references -------------------------------------------------------
_storages: dict[str, tuple[tuple[int, int], Storage]] = {}
_cache_lock = threading.Lock()


def record_reader(location: str) -> RecordReader:
    """A reader of the dataset at ``location``. Readers hold nothing: open files live in
    the process-wide ``recordpool.POOL``, which closes an evicted file only once the
    last read of it is done."""
    return RecordReader(location)


def open_storage(location: str) -> Storage:
    """A process-wide ``Storage`` per location (Ray tasks reuse it across parts).

    Checked with one ``stat`` of ``dataset.json``: a dataset removed or re-created at
    the same path is never served from the cache.
    """
    try:
        if is_remote(location):  # one HEAD: a re-created dataset has a new etag
            stamp: tuple = (open_backend(location).stat(fmt.DATASET_JSON).etag,)
        else:
            st = os.stat(fmt.dataset_json(location))
            stamp = (st.st_ino, st.st_mtime_ns)
    except FileNotFoundError:
        raise NotFoundError(f"no spacefs dataset at {location}") from None
    with _cache_lock:
        hit = _storages.get(location)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    s = Storage(location)
    with _cache_lock:
        if len(_storages) >= 64:
            _storages.pop(next(iter(_storages)))
        _storages[location] = (stamp, s)
    return s


def ref_schema(schema: pa.Schema, roots: dict[str, str]) -> pa.Schema:
    """``schema`` with the fields carried as references typed as references."""
    return pa.schema([pa.field(f.name, REF_TYPE) if f.name in roots else f for f in schema])


def bounded(t: pa.Table, roots: dict[str, str], limit: int = RESOLVE_BYTES) -> Iterator[pa.Table]:
    """``t`` in slices whose referenced records add up to about ``limit`` bytes, so
    resolving them keeps memory flat however many rows a part holds."""
    return by_bytes(t, ref_columns(t, roots), limit)


def finish(part: Part, filter_: Predicate | None, names: list[str], roots: dict[str, str],
           schema: pa.Schema) -> Iterator[pa.Table]:
    """What a read does with a part: filter on index fields, project, read records."""
    for t in part():
        if filter_ is not None:
            t = filter_.apply(t)
            if not t.num_rows:
                continue
        for piece in bounded(t.select(names), roots):
            yield resolve(piece, roots, schema)


def run(part: Part) -> Iterator[pa.Table]:
    yield from part()


def write_part(part: Part, location: str, file_options: FileOptions | None, roots: dict[str, str],
               schema: pa.Schema) -> Iterator[tuple[list[dict[str, Any]], list[str], int, int]]:
    """Write a part's rows into the dataset at ``location`` (records copied in).

    Yields one ``(manifest entries, files written, rows written, rows read)``; on
    failure the files this call wrote are removed before the error propagates.
    """
    storage = open_storage(location)
    writer = FileWriter(storage, file_options)
    entries: list[dict[str, Any]] = []
    pending: list[pa.Table] = []
    rows = nbytes = total = 0
    try:
        for piece in part():
            for t in bounded(piece, roots):
                t = resolve(t, roots, schema)
                pending.append(t)
                rows += t.num_rows
                nbytes += t.nbytes
                if rows >= WRITE_ROWS or nbytes >= WRITE_BYTES:
                    entries += writer.write(pa.concat_tables(pending))
                    total += rows
                    pending, rows, nbytes = [], 0, 0
        if pending:
            entries += writer.write(pa.concat_tables(pending))
            total += rows
    except BaseException:
        writer.cleanup()
        raise
    yield entries, list(writer.written), total, part.rows or 0


def collect(ctx: Ctx, parts: Iterable[Part], schema: pa.Schema) -> pa.Table:
    """Run ``parts`` and concatenate their rows (references unresolved)."""
    tables = [t for t in ctx.executor.stream(run, parts) if t.num_rows]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


def unique_rows(t: pa.Table) -> pa.Table:
    """Distinct rows of a key table, nulls dropped (a null key never matches)."""
    if t.num_rows == 0:
        return t
    mask = None
    for c in t.columns:
        v = pc.is_valid(c)
        mask = v if mask is None else pc.and_(mask, v)
    t = t.filter(mask)
    return t.group_by(t.column_names).aggregate([])


def slices(t: pa.Table, size: int) -> Iterator[pa.Table]:
    for start in range(0, t.num_rows, max(1, size)):
        yield t.slice(start, size)


def bool_mask(values: Any, n: int, what: str) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pc.fill_null(values, False).to_numpy(zero_copy_only=False)
    mask = np.asarray(values, dtype=bool)
    if mask.shape != (n,):
        raise UserInputError(f"{what} returned a mask of shape {mask.shape}, expected {n} booleans")
    return mask


# -- executors -----------------------------------------------------------------
class LocalExecutor:
    """Runs parts one after another in this process (the embedded default)."""

    parallelism = 1

    def stream(self, fn: Callable[[Any], Iterable[T]], parts: Iterable[Any]) -> Iterator[T]:
        for p in parts:
            yield from fn(p)


@dataclass
class Ctx:
    """How a view read or refresh runs: the executor, the UDF batch size override,
    and how many rows one part of a dataset scan should hold (None: a whole file)."""

    executor: Any = field(default_factory=LocalExecutor)
    batch_size: int | None = None
    part_rows: int | None = None
