"""Write operations: new data files, and the plans that turn them into commits.

Data files are written before the commit and never modified after. An operation that
only adds files (append) has the same plan whatever the base snapshot; operations that
look at stored rows (insert, upsert, delete) compute their plan against the base and are
re-planned if a concurrent writer moved the branch.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import failpoints
from . import format as fmt
from . import schema as sch
from .errors import PrimaryKeyExistsError, SchemaError
from .filters import predicate
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
        # Where the file is built: in the dataset on disk, a staging file for a bucket
        # (uploaded by ``files.finalize`` once complete).
        return self.storage.files.staging_path(rel)

    def write(self, table: pa.Table) -> list[dict[str, Any]]:
        """Write ``table`` (conforming to the dataset schema); return manifest rows.

        Every write of rows passes here, so this is where null keys are refused (the
        caller removes what it wrote before, so nothing of the write remains)."""
        check_keys_present(table, self.storage.primary_keys, self.storage.name)
        entries: list[dict[str, Any]] = []
        step = self.options.max_index_rows
        for start in range(0, max(table.num_rows, 1), step):
            chunk = table.slice(start, step)
            if chunk.num_rows:
                entries += self._write_chunk(chunk)
        return entries

    def _write_chunk(self, chunk: pa.Table) -> list[dict[str, Any]]:
        index, entries = self.write_records(chunk)
        entries.insert(0, self.write_index(index))
        remember(self.storage.location, entries[0]["path"], chunk)
        return entries

    def write_records(self, chunk: pa.Table) -> tuple[pa.Table, list[dict[str, Any]]]:
        """Write the record fields of ``chunk`` as ArrayRecord files; return the index
        rows (record fields replaced by references) and the record files' manifest rows.

        ``chunk`` may lack some record fields (a partial upsert): the index rows lack them
        too, and the caller fills them in.
        """
        st = self.storage
        entries = []
        cols = []
        names = []
        for f in st.schema:
            if f.name not in chunk.column_names:
                continue
            names.append(f.name)
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
            self.written.append(rel)
            offsets = write_records(self._path(rel), values, self.options.record_options)
            self._sync(rel)
            nbytes = os.path.getsize(self._path(rel))
            self.storage.files.finalize(rel)
            sizes = pc.binary_length(values).cast(pa.int64())
            n = len(values)
            refs = pa.StructArray.from_arrays(
                [_repeat(rel, n), pa.array(np.arange(n, dtype=np.int64)), sizes, pa.array(offsets)],
                fields=list(REF_TYPE),
                mask=pc.invert(valid) if has_nulls else None,
            )
            cols.append(refs)
            entries.append(record_entry(rel, f.name, n, nbytes, -1))
        index = pa.Table.from_arrays(cols, schema=pa.schema([st.index_schema.field(n) for n in names]))
        return index, entries

    def write_index(self, index: pa.Table, rewrite_of: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write an index file. A rewrite (``rewrite_of`` the file it shrinks) keeps the
        parent's min/max and record-file list: still true bounds, and no recomputation."""
        rel = fmt.new_index_file()
        self.written.append(rel)
        pq.write_table(index, self._path(rel), compression=self.options.parquet_compression,
                       use_dictionary=self._dictionary_columns(),
                       row_group_size=max(1, self.options.index_row_group_rows),
                       write_statistics=_stats_columns(self.storage.index_schema, tuple(self.storage.record_fields)),
                       column_encoding=_delta_columns(index.schema, tuple(self._dictionary_columns())))
        self._sync(rel)
        failpoints.hit("write:after_data")
        nbytes = os.path.getsize(self._path(rel))
        self.storage.files.finalize(rel)
        if rewrite_of is not None:
            entry = {k: v for k, v in rewrite_of.items() if k not in ("snapshot_id",)}
            return {**entry, "path": rel, "rows": index.num_rows, "bytes": nbytes, "snapshot_id": -1, "rewrite": True}
        return index_entry(rel, index, nbytes, -1, self.storage.stats_fields, self.storage.record_fields)

    def _dictionary_columns(self) -> list[str]:
        return dictionary_columns(self.storage)

    def _sync(self, rel: str) -> None:
        if self.options.sync:
            fd = os.open(self._path(rel), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def cleanup(self) -> None:
        """Remove every file this writer wrote (the commit provably did not land)."""
        self.storage.files.remove(self.written)
        self.written.clear()


# Rows of the small files this process wrote, by (dataset location, index file): a
# merge of small files at a later commit (engine/autocompact.py) takes them from here
# instead of opening and decoding the files again (about half of a merge's cost).
# Files never change once written (uuid names), so an entry is never stale; the
# cache is bounded by bytes, oldest out first.
RECENT_MAX_BYTES = 32 << 20
RECENT_MAX_ROWS = 8192  # small files only (autocompact.SMALL_INDEX_ROWS)
_recent: OrderedDict[tuple[str, str], pa.Table] = OrderedDict()
_recent_bytes = 0
_recent_lock = threading.Lock()


def remember(location: str, rel: str, rows: pa.Table) -> None:
    """Keep the rows (dataset schema, records as bytes) of the index file ``rel``."""
    global _recent_bytes
    if rows.num_rows >= RECENT_MAX_ROWS or rows.nbytes > RECENT_MAX_BYTES // 8:
        return
    rows = rows.take(pa.array(np.arange(rows.num_rows)))  # a copy: a slice would pin its whole batch
    with _recent_lock:
        _recent[(location, rel)] = rows
        _recent_bytes += rows.nbytes
        while _recent_bytes > RECENT_MAX_BYTES and _recent:
            _recent_bytes -= _recent.popitem(last=False)[1].nbytes


def recently_written(location: str, rel: str) -> pa.Table | None:
    """The rows of index file ``rel`` if this process wrote it lately (see ``remember``)."""
    with _recent_lock:
        return _recent.get((location, rel))


def forget_recent() -> None:
    global _recent_bytes
    with _recent_lock:
        _recent.clear()
        _recent_bytes = 0


def dictionary_columns(st: Storage) -> list[str]:
    """Index columns written dictionary-encoded (readers decode them as dictionaries:
    much cheaper than building every string).

    Dictionaries pay off for strings and the record file names, not for numbers:
    dictionary-encoding unique ints doubled the index write time (measured)."""
    cols = [f"{n}.file" for n in st.record_fields]
    for f in st.schema:
        if f.name not in st.record_fields and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                                               or pa.types.is_binary(f.type)):
            cols.append(f.name)
    return cols


@functools.lru_cache(maxsize=64)
def _stats_columns(index_schema: pa.Schema, record_fields: tuple[str, ...]) -> list[str]:
    """Parquet leaf columns of the index fields: statistics serve row-group pruning,
    and no filter ever looks at a reference (skipping them saves ~10% of a write)."""
    buf = pa.BufferOutputStream()
    pq.write_table(index_schema.empty_table(), buf)
    paths = [c.path for c in pq.ParquetFile(pa.BufferReader(buf.getvalue())).schema]
    return [p for p in paths if p.split(".", 1)[0] not in record_fields]


@functools.lru_cache(maxsize=64)
def _delta_columns(schema: pa.Schema, dictionary: tuple[str, ...]) -> dict[str, str]:
    """Integer leaf columns of an index file, delta-encoded: keys and record positions
    mostly ascend, so their deltas pack into a few bits. The 200,000-row index of the
    benchmark takes 52 KB instead of 2.5 MB (lz4 over plain values), and is written and
    read faster (measured: write 22 -> 16 ms, whole-file read 20 -> 13 ms of CPU).
    Columns of unordered integers cost about what plain values do."""
    if any(pa.types.is_dictionary(f.type) for f in schema):
        return {}  # Arrow dictionaries go to Parquet dictionary pages, whatever the encoding
    buf = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buf)
    cols = pq.ParquetFile(pa.BufferReader(buf.getvalue())).schema
    return {c.path: "DELTA_BINARY_PACKED" for c in cols
            if c.physical_type in ("INT32", "INT64") and c.path not in dictionary}


def _repeat(text: str, n: int) -> pa.Array:
    """A string array of ``n`` copies of ``text``, built from buffers (no Python list)."""
    raw = text.encode()
    offsets = np.arange(n + 1, dtype=np.int32) * len(raw)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(raw * n)])


def iter_tables(data: Any, schema: pa.Schema, what: str, optional: Sequence[str] = ()) -> Iterable[pa.Table]:
    """A dict/Table/RecordBatch, or an iterable of them, as conforming tables (which
    may lack the fields named in ``optional``)."""
    if isinstance(data, (dict, pa.Table, pa.RecordBatch)) or (isinstance(data, list) and data and isinstance(data[0], dict)):
        yield sch.to_table(data, schema, what, optional)
        return
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        for item in data:
            yield sch.to_table(item, schema, what, optional)
        return
    yield sch.to_table(data, schema, what, optional)


def check_keys_present(table: pa.Table, keys: list[str], what: str) -> None:
    """Refuse rows with a null primary-key value: such a row could never be updated,
    deleted by key or told apart from another."""
    for name in keys:
        n = table.column(name).null_count
        if n:
            raise SchemaError(f"{what}: primary key field {name!r} is null in {n} row(s); every row needs a key")


def check_unique_keys(table: pa.Table, keys: list[str], what: str) -> pa.Table:
    """The key columns of ``table``; refuse a batch that repeats a key (or has a null one)."""
    check_keys_present(table, keys, what)
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


# A survivor of a rewrite larger than twice this is written as several index files at
# once (Parquet encoding releases the GIL): the rewrite of a big file is the bulk of a
# small upsert or delete, and its cost would otherwise not shrink with the change.
SPLIT_ROWS = 65_536
REWRITE_THREADS = 2


class RowRemover:
    """Rewrites the index files of a base snapshot that hold rows to remove.

    Only touched files are rewritten; record files are shared with earlier snapshots.
    Files are probed, read and rewritten by a few threads.
    """

    def __init__(self, storage: Storage, writer: FileWriter):
        self.storage = storage
        self.writer = writer
        # The removed rows (index form, every column) after ``remove``: a partial upsert
        # takes the stored references of the fields it omits from them.
        self.removed_rows: pa.Table | None = None

    def _read_whole(self, rel: str) -> pa.Table:
        """An index file, columns stored as dictionaries decoded as such (much cheaper
        than building every string) and cast back to the dataset's types after filtering."""
        return self.storage.files.read_table(rel, read_dictionary=self.writer._dictionary_columns(), use_threads=False)

    def remove(self, base: int, prune: pc.Expression | None, mask_fn, plan: Plan,
               mask_columns: list[str] | None = None, whole_rows: bool = True) -> int:
        """Remove rows where ``mask_fn`` is true; it sees only ``mask_columns`` first, and
        a file is read whole only when it holds a row to remove (all columns when None).

        The snapshot's changes file (``plan.deleted``) gets the removed rows whole (index
        form: keys, other index columns, record references), and ``removed_rows`` too: a
        diff between siblings or back to an ancestor needs the rows a change replaced,
        and finding them again in the base files means decoding every row group of
        them (1% of the keys touch them all), while here they are at hand. With
        ``whole_rows=False`` (a view rebuild removing every row: a second copy of the
        whole index for a rare diff) the changes file holds the keys only."""
        st = self.storage

        def probe(entry: dict[str, Any]) -> tuple[dict[str, Any], pa.Table, pa.Table] | None:
            path = entry["path"]
            # One thread per file: files are probed in parallel already.
            t = st.files.read_table(path, columns=mask_columns, schema=None if mask_columns else st.index_schema,
                                    use_threads=False)
            mask = mask_fn(t)
            n = int(mask.sum())
            if n == 0:
                return None
            whole = t if mask_columns is None else self._read_whole(path)
            gone = whole.filter(pa.array(mask)).cast(st.index_schema)
            if n == t.num_rows:
                return entry, gone, st.index_schema.empty_table()
            return entry, gone, whole.filter(pa.array(~mask)).cast(st.index_schema)

        entries = st.index_entries(base, prune)
        with ThreadPoolExecutor(REWRITE_THREADS) as ex:
            hits = [h for h in ex.map(probe, entries) if h is not None]
            jobs = []
            for entry, _, survivors in hits:
                plan.removed.append(entry)
                n = survivors.num_rows
                parts = max(1, min(REWRITE_THREADS, n // SPLIT_ROWS))
                step = -(-n // parts) if n else 0
                jobs += [(survivors.slice(i * step, step), entry) for i in range(parts) if n]
            added = list(ex.map(lambda job: self.writer.write_index(*job), jobs))
        if not hits:
            return 0
        new_paths = {e["path"] for e in added}
        plan.added += added
        plan.temp_files += sorted(new_paths)
        self.writer.written[:] = [w for w in self.writer.written if w not in new_paths]
        self.removed_rows = pa.concat_tables([gone for _, gone, _ in hits])
        rel = fmt.new_changes_file()
        changes = self.removed_rows if whole_rows else self.removed_rows.select(st.primary_keys)
        st.files.write_table(changes, rel, compression=self.writer.options.parquet_compression,
                             use_dictionary=self.writer._dictionary_columns(),
                             write_statistics=_stats_columns(st.index_schema, tuple(st.record_fields)))
        plan.deleted = rel
        plan.temp_files.append(rel)
        return self.removed_rows.num_rows


def plan_insert(storage: Storage, keys: pa.Table, new_entries: list[dict[str, Any]], base: int) -> Plan:
    for entry in storage.index_entries(base, key_filter(keys)):
        t = storage.files.read_table(entry["path"], columns=storage.primary_keys)
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


def plan_partial_upsert(storage: Storage, writer: FileWriter, keys: pa.Table, index: pa.Table,
                        new_entries: list[dict[str, Any]], base: int) -> Plan:
    """An upsert whose rows lack some record fields: every key must be stored, and the
    new rows take the stored rows' references for the fields they lack (the record
    bytes are shared, not copied)."""
    st = storage
    pk = st.primary_keys
    missing = [n for n in st.index_schema.names if n not in index.column_names]
    plan = Plan(added=[])
    remover = RowRemover(st, writer)
    try:
        remover.remove(base, key_filter(keys), lambda t: key_mask(t, keys), plan, mask_columns=pk)
        stored = remover.removed_rows
        if stored is None:
            stored = st.index_schema.empty_table()
        rows = index.select(pk).append_column("__row", pa.array(np.arange(index.num_rows, dtype=np.int64)))
        found = stored.select(pk).append_column("__at", pa.array(np.arange(stored.num_rows, dtype=np.int64)))
        joined = rows.join(found, keys=pk, join_type="left outer").sort_by("__row")
        if joined.num_rows > index.num_rows:  # a key stored twice (appends do not check keys)
            _, first = np.unique(joined.column("__row").to_numpy(), return_index=True)
            joined = joined.take(pa.array(first))
        at = joined.column("__at")
        if at.null_count:
            new = joined.filter(pc.is_null(at)).select(pk)
            shown = [{n: new.column(n)[i].as_py() for n in pk} for i in range(min(new.num_rows, 5))]
            raise SchemaError(f"{st.name}: upsert without fields {missing}: {new.num_rows} key(s) are not stored "
                              f"(new rows must carry every field), e.g. {shown}")
        take = at.combine_chunks()
        cols = [index.column(n) if n in index.column_names else stored.column(n).take(take)
                for n in st.index_schema.names]
        full = pa.Table.from_arrays(cols, schema=st.index_schema)
        before = len(writer.written)
        plan.added.append(writer.write_index(full))
        plan.temp_files += writer.written[before:]
        del writer.written[before:]
    except BaseException:
        st._discard(plan)
        raise
    plan.added += new_entries
    return plan


def plan_delete(storage: Storage, writer: FileWriter, filter_: Any, base: int) -> Plan:
    pred = predicate(filter_, storage.schema, storage.record_fields, f"{storage.name}: delete")
    plan = Plan()
    cols = pred.columns if pred.columns is not None else storage.index_fields
    try:
        RowRemover(storage, writer).remove(base, pred.prune, pred.mask, plan,
                                            mask_columns=sorted(set(cols) | set(storage.primary_keys)))
    except BaseException:
        # A filter can fail on a later file (e.g. a cast error): drop the rewrites so far.
        storage.files.remove(plan.temp_files)
        raise
    return plan
