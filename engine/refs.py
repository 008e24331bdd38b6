"""From index rows to record bytes: the one implementation every read path shares.

Local reads (``reads.py``), diffs, view reads and refreshes (``view_parts.py``, in this
process or in Ray tasks) all read index files with ``read_index``, cut the rows into
slices whose referenced records add up to a bounded number of bytes with ``by_bytes``,
and replace reference columns by record bytes with ``resolve``. Random access and the
mount read the same reference columns (``reference_read=True`` through ``reads.read``)
and then fetch single records through ``records.RecordReader``. Which index files a read
opens at all is decided by ``Storage.index_entries`` (pruning by manifest statistics).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import format as fmt
from .backend import is_remote
from .datafiles import files_at
from .filters import Predicate
from .records import REF_TYPE, RecordReader


def read_index(location: str, rel: str, schema: pa.Schema, columns: Sequence[str] | None = None,
               filter_: pc.Expression | Predicate | None = None) -> pa.Table:
    """Rows of the index file ``rel`` of the dataset at ``location``.

    A ``Predicate`` (a checked filter, SQL ones included) selects exactly its rows; Arrow
    still skips row groups by their statistics through its ``prune`` expression.
    """
    import pyarrow.dataset as pds  # lazy: it imports pandas (slow start-up)

    if is_remote(location):
        # On a bucket the file is fetched whole (one GET: index files are small) and
        # filtered in memory, by the same expressions.
        d = pds.dataset(files_at(location).read_table(rel, schema=schema))
    else:
        d = pds.dataset(fmt.data_path(location, rel), schema=schema, format="parquet")
    if isinstance(filter_, Predicate):
        return filter_.scan(d, list(columns) if columns is not None else schema.names)
    return d.to_table(columns=list(columns) if columns is not None else None, filter=filter_)


def ref_columns(t: pa.Table, roots: Mapping[str, str]) -> list[str]:
    """The columns of ``t`` that hold references to be resolved (named in ``roots``)."""
    return [n for n in t.column_names if n in roots and t.schema.field(n).type == REF_TYPE]


def by_bytes(t: pa.Table, refs: Sequence[str], limit: int) -> Iterator[pa.Table]:
    """``t`` in slices whose records in the ``refs`` columns add up to about ``limit``
    bytes (at least one row each), so resolving them keeps memory flat however many rows
    a file holds."""
    if not refs or t.num_rows <= 1:
        yield t
        return
    sizes = np.zeros(t.num_rows, dtype=np.int64)
    for n in refs:
        sizes += pc.fill_null(t.column(n).combine_chunks().field("size"), 0).to_numpy(zero_copy_only=False)
    cum = np.cumsum(sizes)
    if cum[-1] <= limit:
        yield t
        return
    cuts = np.searchsorted(cum, np.arange(limit, int(cum[-1]), limit), side="right")
    start = 0
    for c in [*cuts.tolist(), t.num_rows]:
        c = max(int(c), start + 1)
        if start < t.num_rows and c > start:
            yield t.slice(start, c - start)
        start = c


def as_record_type(arr: pa.Array, ftype: pa.DataType) -> pa.Array:
    """Record bytes as the field's declared type (binary, large binary or an extension)."""
    if isinstance(ftype, pa.ExtensionType):
        return pa.ExtensionArray.from_storage(ftype, arr.cast(ftype.storage_type))
    return arr if arr.type == ftype else arr.cast(ftype)


def resolve(t: pa.Table, roots: Mapping[str, str], schema: pa.Schema) -> pa.Table:
    """Replace the reference columns named in ``roots`` (column -> dataset location) by
    the record bytes, typed as in ``schema``; other columns pass through."""
    todo = ref_columns(t, roots)
    if not todo:
        return t
    cols, fields = [], []
    for name in t.column_names:
        col = t.column(name)
        f = t.schema.field(name)
        if name in todo:
            f = schema.field(name)
            col = as_record_type(RecordReader(roots[name]).scan_refs(col.combine_chunks()), f.type)
        cols.append(col)
        fields.append(f)
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))
