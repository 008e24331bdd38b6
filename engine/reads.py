"""Reading a version: prune files by stats, read index rows, resolve records lazily."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .filters import Filter, predicate
from .records import RecordReader
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
    import pyarrow.dataset as pds  # lazy: it imports pandas (slow start-up)

    check_batch_size(batch_size)
    sid = storage.resolve(version, branch)
    pred = predicate(filter_, storage.schema, storage.record_fields, f"{storage.name}: read")
    names = resolve_fields(storage, fields)
    entries = storage.index_entries(sid, pred)
    reader = reader or RecordReader(storage.location)

    def tables() -> Iterator[pa.Table]:
        for entry in entries:
            d = pds.dataset(storage.full_path(entry["path"]), schema=storage.index_schema, format="parquet")
            t = pred.scan(d, names) if pred is not None else d.to_table(columns=names)
            if t.num_rows == 0:
                continue
            for part in _split(storage, t, names, batch_size):
                yield resolve_records(storage, part, reader) if not reference_read else part

    return tables() if batch_size is None else _rebatch(tables(), batch_size)


def output_schema(storage: Storage, names: Sequence[str], reference_read: bool) -> pa.Schema:
    src = storage.index_schema if reference_read else storage.schema
    return pa.schema([src.field(n) for n in names])


def _split(storage: Storage, t: pa.Table, names: Sequence[str], batch_size: int | None) -> Iterator[pa.Table]:
    rec = [n for n in names if n in storage.record_fields]
    if batch_size is not None or not rec or t.num_rows <= 1:
        yield t
        return
    sizes = np.zeros(t.num_rows, dtype=np.int64)
    for n in rec:
        s = t.column(n).combine_chunks().field("size")
        sizes += pc.fill_null(s, 0).to_numpy(zero_copy_only=False)
    cum = np.cumsum(sizes)
    cuts = np.searchsorted(cum, np.arange(DEFAULT_BATCH_BYTES, int(cum[-1]), DEFAULT_BATCH_BYTES))
    start = 0
    for c in list(cuts) + [t.num_rows]:
        c = max(int(c), start + 1)
        if c > start:
            yield t.slice(start, c - start)
        start = c
        if start >= t.num_rows:
            break


def resolve_records(storage: Storage, t: pa.Table, reader: RecordReader) -> pa.Table:
    """Replace reference columns by the record bytes they point at."""
    cols = []
    for name in t.column_names:
        col = t.column(name)
        if name in storage.record_fields:
            col = as_record_type(reader.scan_refs(col.combine_chunks()), storage.schema.field(name).type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=pa.schema([storage.schema.field(n) for n in t.column_names]))


def as_record_type(arr: pa.Array, ftype: pa.DataType) -> pa.Array:
    """Record bytes as the field's declared type (binary, large binary or an extension)."""
    if isinstance(ftype, pa.ExtensionType):
        return pa.ExtensionArray.from_storage(ftype, arr.cast(ftype.storage_type))
    return arr if arr.type == ftype else arr.cast(ftype)


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


def read_index_file(storage: Storage, rel: str, reference_read: bool, reader: RecordReader) -> pa.Table:
    import pyarrow.dataset as pds  # lazy: it imports pandas (slow start-up)

    t = pds.dataset(storage.full_path(rel), schema=storage.index_schema, format="parquet").to_table()
    return t if reference_read else resolve_records(storage, t, reader)
