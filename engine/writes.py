"""Write operations: new data files, and the plans that turn them into commits.

Data files are written before the commit and never modified after. An operation that
only adds files (append) has the same plan whatever the base snapshot; operations that
look at stored rows (insert, upsert, delete) compute their plan against the base and are
re-planned if a concurrent writer moved the branch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import failpoints
from . import format as fmt
from . import schema as sch
from .errors import PrimaryKeyExistsError
from .filters import check_fields, referenced_fields, to_expression
from .manifest import index_entry, record_entry
from .options import FileOptions
from .records import REF_TYPE, write_records
from .storage import Plan, Storage


class FileWriter:
    """Writes tables as index Parquet files plus one ArrayRecord file per record field."""

    def __init__(self, storage: Storage, options: FileOptions | None = None):
        self.storage = storage
        self.options = options or FileOptions()
        self.written: list[str] = []

    def _path(self, rel: str) -> str:
        return self.storage.full_path(rel)

    def write(self, table: pa.Table) -> list[dict[str, Any]]:
        """Write ``table`` (conforming to the dataset schema); return manifest rows."""
        entries: list[dict[str, Any]] = []
        step = self.options.max_index_rows
        for start in range(0, max(table.num_rows, 1), step):
            chunk = table.slice(start, step)
            if chunk.num_rows:
                entries += self._write_chunk(chunk)
        return entries

    def _write_chunk(self, chunk: pa.Table) -> list[dict[str, Any]]:
        st = self.storage
        entries = []
        cols = []
        for f in st.schema:
            col = chunk.column(f.name)
            if f.name not in st.record_fields:
                cols.append(col)
                continue
            values = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
            if isinstance(values, pa.ExtensionArray):
                values = values.storage
            if values.type != pa.binary():
                values = values.cast(pa.binary())
            valid = values.is_valid()
            has_nulls = values.null_count > 0
            if has_nulls:
                values = pc.if_else(valid, values, pa.scalar(b"", pa.binary()))
            rel = fmt.new_record_file(f.name)
            os.makedirs(os.path.dirname(self._path(rel)), exist_ok=True)
            self.written.append(rel)
            offsets = write_records(self._path(rel), values, self.options.record_options)
            self._sync(rel)
            sizes = pc.binary_length(values).cast(pa.int64())
            n = len(values)
            refs = pa.StructArray.from_arrays(
                [_repeat(rel, n), pa.array(np.arange(n, dtype=np.int64)), sizes, pa.array(offsets)],
                fields=list(REF_TYPE),
                mask=pc.invert(valid) if has_nulls else None,
            )
            cols.append(refs)
            entries.append(record_entry(rel, f.name, n, os.path.getsize(self._path(rel)), -1))
        index = pa.Table.from_arrays(cols, schema=st.index_schema)
        entries.insert(0, self.write_index(index))
        return entries

    def write_index(self, index: pa.Table, rewrite_of: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write an index file. A rewrite (``rewrite_of`` the file it shrinks) keeps the
        parent's min/max and record-file list: still true bounds, and no recomputation."""
        rel = fmt.new_index_file()
        self.written.append(rel)
        pq.write_table(index, self._path(rel), compression=self.options.parquet_compression,
                       use_dictionary=self._dictionary_columns())
        self._sync(rel)
        failpoints.hit("write:after_data")
        nbytes = os.path.getsize(self._path(rel))
        if rewrite_of is not None:
            entry = {k: v for k, v in rewrite_of.items() if k not in ("snapshot_id",)}
            return {**entry, "path": rel, "rows": index.num_rows, "bytes": nbytes, "snapshot_id": -1, "rewrite": True}
        return index_entry(rel, index, nbytes, -1, self.storage.stats_fields, self.storage.record_fields)

    def _dictionary_columns(self) -> list[str]:
        # Dictionaries pay off for strings and the record file names, not for numbers:
        # dictionary-encoding unique ints doubled the index write time (measured).
        st = self.storage
        cols = [f"{n}.file" for n in st.record_fields]
        for f in st.schema:
            if f.name not in st.record_fields and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                                                   or pa.types.is_binary(f.type)):
                cols.append(f.name)
        return cols

    def _sync(self, rel: str) -> None:
        if self.options.sync:
            fd = os.open(self._path(rel), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def cleanup(self) -> None:
        """Remove every file this writer wrote (the commit provably did not land)."""
        for rel in self.written:
            try:
                os.unlink(self._path(rel))
            except FileNotFoundError:
                pass
        self.written.clear()


def _repeat(text: str, n: int) -> pa.Array:
    """A string array of ``n`` copies of ``text``, built from buffers (no Python list)."""
    raw = text.encode()
    offsets = np.arange(n + 1, dtype=np.int32) * len(raw)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(raw * n)])


def iter_tables(data: Any, schema: pa.Schema, what: str) -> Iterable[pa.Table]:
    """A dict/Table/RecordBatch, or an iterable of them, as conforming tables."""
    if isinstance(data, (dict, pa.Table, pa.RecordBatch)) or (isinstance(data, list) and data and isinstance(data[0], dict)):
        yield sch.to_table(data, schema, what)
        return
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        for item in data:
            yield sch.to_table(item, schema, what)
        return
    yield sch.to_table(data, schema, what)


def check_unique_keys(table: pa.Table, keys: list[str], what: str) -> pa.Table:
    """The key columns of ``table``; refuse a batch that repeats a key."""
    k = table.select(keys)
    if k.num_rows < 2:
        return k
    counts = k.group_by(keys).aggregate([([], "count_all")])
    dup = counts.filter(pc.greater(counts.column("count_all"), 1))
    if dup.num_rows:
        first = {n: dup.column(n)[0].as_py() for n in keys}
        raise PrimaryKeyExistsError(f"{what}: the data repeats primary key {first} ({dup.num_rows} duplicated keys)")
    return k


def key_filter(keys: pa.Table) -> pc.Expression:
    """A superset filter of rows with these keys: used to prune files by stats."""
    expr = None
    for name in keys.column_names:
        term = pc.field(name).isin(pc.unique(keys.column(name)))
        expr = term if expr is None else expr & term
    return expr


def key_mask(file_keys: pa.Table, keys: pa.Table) -> np.ndarray:
    """Which rows of ``file_keys`` have a key in ``keys`` (a hash lookup, linear)."""
    names = keys.column_names
    if len(names) == 1:
        m = pc.is_in(file_keys.column(names[0]), value_set=keys.column(names[0]).combine_chunks())
        return m.to_numpy(zero_copy_only=False)
    idx = file_keys.select(names).append_column("__row", pa.array(np.arange(file_keys.num_rows)))
    joined = idx.join(keys.select(names), keys=names, join_type="inner")
    mask = np.zeros(file_keys.num_rows, dtype=bool)
    mask[joined.column("__row").to_numpy()] = True
    return mask


def expr_mask(table: pa.Table, expr: pc.Expression) -> np.ndarray:
    import pyarrow.dataset as pds  # lazy: it imports pandas (slow start-up)

    col = pds.dataset(table).to_table(columns={"m": expr}).column("m")
    return pc.fill_null(col, False).to_numpy(zero_copy_only=False)


class RowRemover:
    """Rewrites the index files of a base snapshot that hold rows to remove.

    Only touched files are rewritten; record files are shared with earlier snapshots.
    """

    def __init__(self, storage: Storage, writer: FileWriter):
        self.storage = storage
        self.writer = writer

    def remove(self, base: int, prune: pc.Expression | None, mask_fn, plan: Plan,
               mask_columns: list[str] | None = None) -> int:
        """Remove rows where ``mask_fn`` is true; it sees only ``mask_columns`` first, and
        a file is read whole only when it holds a row to remove (all columns when None)."""
        st = self.storage
        deleted: list[pa.Table] = []
        for entry in st.index_entries(base, prune):
            path = st.full_path(entry["path"])
            probe = pq.read_table(path, columns=mask_columns, schema=None if mask_columns else st.index_schema)
            mask = mask_fn(probe)
            n = int(mask.sum())
            if n == 0:
                continue
            deleted.append(probe.filter(pa.array(mask)).select(st.primary_keys)
                           if mask_columns is None or all(k in mask_columns for k in st.primary_keys)
                           else pq.read_table(path, columns=st.primary_keys).filter(pa.array(mask)))
            plan.removed.append(entry)
            if n < probe.num_rows:
                table = probe if mask_columns is None else pq.read_table(path, schema=st.index_schema)
                before = len(self.writer.written)
                plan.added.append(self.writer.write_index(table.filter(pa.array(~mask)), rewrite_of=entry))
                plan.temp_files += self.writer.written[before:]
                del self.writer.written[before:]
        if not deleted:
            return 0
        keys = pa.concat_tables(deleted)
        rel = fmt.new_changes_file()
        pq.write_table(keys, st.full_path(rel))
        plan.deleted = rel
        plan.temp_files.append(rel)
        return keys.num_rows


def plan_insert(storage: Storage, keys: pa.Table, new_entries: list[dict[str, Any]], base: int) -> Plan:
    for entry in storage.index_entries(base, key_filter(keys)):
        t = pq.read_table(storage.full_path(entry["path"]), columns=storage.primary_keys)
        mask = key_mask(t, keys)
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            k = {n: t.column(n)[i].as_py() for n in storage.primary_keys}
            raise PrimaryKeyExistsError(f"{storage.name}: insert refused, primary key {k} already exists")
    return Plan(added=list(new_entries))


def plan_upsert(storage: Storage, writer: FileWriter, keys: pa.Table, new_entries: list[dict[str, Any]], base: int) -> Plan:
    plan = Plan(added=[])
    RowRemover(storage, writer).remove(base, key_filter(keys), lambda t: key_mask(t, keys), plan,
                                        mask_columns=storage.primary_keys)
    plan.added += new_entries
    return plan


def plan_delete(storage: Storage, writer: FileWriter, filter_: Any, base: int) -> Plan:
    expr = to_expression(filter_)
    check_fields(expr, storage.index_fields, storage.record_fields, f"{storage.name}: delete")
    plan = Plan()
    cols = referenced_fields(expr, storage.index_fields) or storage.index_fields
    RowRemover(storage, writer).remove(base, expr, lambda t: expr_mask(t, expr), plan,
                                        mask_columns=sorted(set(cols) | set(storage.primary_keys)))
    return plan
