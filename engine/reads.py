"""Reading a version: prune files by stats, read index rows, resolve records lazily.

Index files are read, sliced and resolved by ``refs`` (the code every read path shares:
this one, views and their Ray tasks; random access and the mount read references here).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pyarrow as pa

from .filters import Filter, predicate
from .records import RecordReader
from .refs import as_record_type, by_bytes, read_index, ref_columns, resolve  # noqa: F401 (as_record_type re-exported)
from .schema import check_batch_size, select_fields
from .storage import Storage

# Without a batch size, batches are cut so their record bytes stay near this: large
# enough to stream at disk speed, small enough to keep memory flat.
DEFAULT_BATCH_BYTES = 256 << 20


def resolve_fields(storage: Storage, fields: Sequence[str] | None) -> list[str]:
    return select_fields(storage.schema, fields, storage.name)


def read(storage: Storage, version=None, filter_: Filter = None, fields: Sequence[str] | None = None,
         batch_size: int | None = None, reference_read: bool = False, branch: str = "main",
         reader: RecordReader | None = None) -> Iterator[pa.Table]:
    """The rows of a version as tables (exactly ``batch_size`` rows each if given).

    Arguments are checked now; files are read as the iterator is consumed.
    """
    check_batch_size(batch_size)
    sid = storage.resolve(version, branch)
    pred = predicate(filter_, storage.schema, storage.record_fields, f"{storage.name}: read")
    names = resolve_fields(storage, fields)
    entries = storage.index_entries(sid, pred)
    del reader  # readers hold nothing now (records.RecordReader); kept for callers
    roots = {} if reference_read else record_roots(storage, names)
    limit = DEFAULT_BATCH_BYTES if batch_size is None else None

    def tables() -> Iterator[pa.Table]:
        for entry in entries:
            t = read_index(storage.location, entry["path"], storage.index_schema, names, pred)
            if t.num_rows == 0:
                continue
            for part in by_bytes(t, ref_columns(t, roots), limit) if limit else (t,):
                yield resolve(part, roots, storage.schema)

    return tables() if batch_size is None else _rebatch(tables(), batch_size)


def output_schema(storage: Storage, names: Sequence[str], reference_read: bool) -> pa.Schema:
    src = storage.index_schema if reference_read else storage.schema
    return pa.schema([src.field(n) for n in names])


def record_roots(storage: Storage, names: Sequence[str]) -> dict[str, str]:
    """Reference columns among ``names`` and the dataset their records live in."""
    return {n: storage.location for n in names if n in storage.record_fields}


def resolve_records(storage: Storage, t: pa.Table, reader: RecordReader | None = None) -> pa.Table:
    """Replace reference columns by the record bytes they point at."""
    return resolve(t, record_roots(storage, t.column_names), storage.schema)


def _rebatch(tables: Iterator[pa.Table], size: int) -> Iterator[pa.Table]:
    pending: list[pa.Table] = []
    count = 0
    for t in tables:
        pending.append(t)
        count += t.num_rows
        while count >= size:
            whole = pa.concat_tables(pending)
            yield whole.slice(0, size)
            rest = whole.slice(size)
            pending, count = ([rest] if rest.num_rows else []), rest.num_rows
    if count:
        yield pa.concat_tables(pending)


def read_all(storage: Storage, **kwargs) -> pa.Table:
    names = resolve_fields(storage, kwargs.get("fields"))
    parts = list(read(storage, **kwargs))
    if not parts:
        return output_schema(storage, names, kwargs.get("reference_read", False)).empty_table()
    return pa.concat_tables(parts)


def read_index_file(storage: Storage, rel: str, reference_read: bool, reader: RecordReader | None = None) -> pa.Table:
    t = read_index(storage.location, rel, storage.index_schema)
    return t if reference_read else resolve_records(storage, t)
