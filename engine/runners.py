"""Runners: how operations execute. ``LocalRunner`` runs them in this process."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import diff as diff_mod
from . import reads
from .autocompact import with_merges
from .errors import NotFoundError, SchemaError, UserInputError
from .filters import Filter
from .options import FileOptions
from .recordpool import iter_file_records
from .storage import Plan, Storage, Version
from .types import ChangeData, JobResult
from .writes import (
    FileWriter,
    check_unique_keys,
    iter_tables,
    plan_delete,
    plan_insert,
    plan_partial_upsert,
    plan_upsert,
)


class LocalRunner:
    """Runs reads and writes of one dataset in the calling process.

    Each write makes exactly one snapshot on the handle's current branch, or none
    (SKIPPED) when it changes nothing; a write that fails leaves no trace.
    """

    def __init__(self, storage: Storage, file_options: FileOptions | None = None, branch: str = "main"):
        self.storage = storage
        self.file_options = file_options or FileOptions()
        self.branch = branch
        if self.file_options.sync:
            storage.log.sync = True

    # -- writes ----------------------------------------------------------------
    def _write_new(self, data: Any, what: str) -> tuple[FileWriter, list[dict[str, Any]]]:
        """Write ``data`` (anything ``iter_tables`` takes) as new files, streaming."""
        return self._write_tables(iter_tables(data, self.storage.schema, f"{self.storage.name}: {what}"))

    def _write_tables(self, tables: Iterable[pa.Table]) -> tuple[FileWriter, list[dict[str, Any]]]:
        writer = FileWriter(self.storage, self.file_options)
        entries: list[dict[str, Any]] = []
        try:
            for t in tables:
                if t.num_rows:
                    entries += writer.write(t)
        except BaseException:
            writer.cleanup()
            raise
        return writer, entries

    def _commit(self, op: str, writer: FileWriter, plan: Callable[[int], Plan | None],
                message: str | None = None) -> JobResult:
        try:
            snap = self.storage.commit_snapshot(self.branch, op, with_merges(self.storage, plan, self.file_options),
                                                message=message)
        except BaseException:
            writer.cleanup()
            raise
        if snap is None:
            writer.cleanup()
        return JobResult.from_snapshot(self.storage, snap)

    def append(self, data: Any, *, message: str | None = None) -> JobResult:
        """Add rows without a key check, in one snapshot.

        ``data``: a ``pyarrow.Table``, a dict of lists, or an iterable of either.
        ``message`` is kept with the snapshot (``ds.versions()``, ``spacefs log``).

        Raises:
            SchemaError: the data does not match the dataset's schema.
        """
        writer, entries = self._write_new(data, "append")
        return self._commit("append", writer, lambda base: Plan(added=entries), message)

    def insert(self, data: Any, *, message: str | None = None) -> JobResult:
        """Add rows; fails (changing nothing) if any key is already stored or repeated.

        Raises:
            PrimaryKeyExistsError: a key is already stored, or repeated in ``data``.
            SchemaError: the data does not match the dataset's schema.
        """
        writer, entries, keys = self._keyed(data, "insert")
        return self._commit("insert", writer, lambda base: plan_insert(self.storage, keys, entries, base) if entries else None,
                            message)

    def upsert(self, data: Any, *, message: str | None = None) -> JobResult:
        """Add rows, replacing every stored row with the same key.

        Rows may leave out record fields (all rows alike): they then update stored keys
        only, keeping those keys' stored records by reference (a relabel round resends
        no image). A key that is not stored yet needs every field.
        """
        st = self.storage
        what = f"{st.name}: upsert"
        tables = list(iter_tables(data, st.schema, what, optional=st.record_fields))
        if len({tuple(t.column_names) for t in tables}) > 1:
            raise SchemaError(f"{what}: every batch must carry the same fields")
        if not tables or tables[0].num_columns == len(st.schema):
            writer, entries, keys = self._keyed_table(tables, st.schema, what)
            return self._commit("upsert", writer, lambda base: plan_upsert(st, writer, keys, entries, base) if entries else None,
                                message)
        table = pa.concat_tables(tables)
        keys = check_unique_keys(table, st.primary_keys, what)
        writer = FileWriter(st, self.file_options)
        try:
            index, entries = writer.write_records(table) if table.num_rows else (table, [])
        except BaseException:
            writer.cleanup()
            raise
        return self._commit("upsert", writer, lambda base: plan_partial_upsert(st, writer, keys, index, entries, base)
                            if table.num_rows else None, message)

    def _keyed(self, data: Any, what: str) -> tuple[FileWriter, list[dict[str, Any]], pa.Table]:
        what = f"{self.storage.name}: {what}"
        return self._keyed_table(list(iter_tables(data, self.storage.schema, what)), self.storage.schema, what)

    def _keyed_table(self, tables: list[pa.Table], schema: pa.Schema, what: str) -> tuple[FileWriter, list[dict[str, Any]], pa.Table]:
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        keys = check_unique_keys(table, self.storage.primary_keys, what)
        writer, entries = self._write_tables([table])  # already conformed: no second check
        return writer, entries, keys

    def delete(self, filter_: Filter, *, message: str | None = None) -> JobResult:
        """Remove the rows matching ``filter_`` (only touched index files are rewritten).

        ``filter_``: a SQL predicate (``"id = 1"``) or a pyarrow expression.

        Raises:
            FilterError: the filter is not valid or names an unknown field.
        """
        if filter_ is None:
            raise UserInputError(f"{self.storage.name}: delete needs a filter")
        writer = FileWriter(self.storage, self.file_options)
        return self._commit("delete", writer, lambda base: plan_delete(self.storage, writer, filter_, base),
                            message)

    def append_from(self, source_fns: Callable[[], Iterable[Any]] | Sequence[Callable[[], Iterable[Any]]],
                    max_workers: int | None = None, *, message: str | None = None) -> JobResult:
        """Ingest several sources (callables returning iterables of batches) in parallel.

        All of them land in one snapshot, or none does.
        """
        fns = [source_fns] if callable(source_fns) else list(source_fns)
        writers: list[FileWriter] = []

        def ingest(fn: Callable[[], Iterable[Any]]) -> list[dict[str, Any]]:
            w = FileWriter(self.storage, self.file_options)
            writers.append(w)
            entries = []
            for t in iter_tables(fn(), self.storage.schema, f"{self.storage.name}: append_from"):
                if t.num_rows:
                    entries += w.write(t)
            return entries

        all_writer = FileWriter(self.storage, self.file_options)
        try:
            with ThreadPoolExecutor(max_workers or min(8, max(1, len(fns)))) as ex:
                results = list(ex.map(ingest, fns))
        except BaseException:
            for w in writers:
                w.cleanup()
            raise
        for w in writers:
            all_writer.written += w.written
        entries = [e for r in results for e in r]
        return self._commit("append_from", all_writer, lambda base: Plan(added=entries), message)

    def append_parquet(self, pattern: str | Sequence[str], *, message: str | None = None) -> JobResult:
        """Append the rows of Parquet files matching ``pattern`` (files are copied in)."""
        files = _glob(pattern)

        def tables() -> Iterator[pa.Table]:
            for f in files:
                yield pq.read_table(f)

        writer, entries = self._write_new(tables(), f"append_parquet({pattern})")
        return self._commit("append_parquet", writer, lambda base: Plan(added=entries), message)

    def append_array_record(self, pattern: str | Sequence[str], index_fn: Callable[[bytes], dict[str, Any]], *,
                            message: str | None = None) -> JobResult:
        """Append ArrayRecord files: each record becomes a row, ``index_fn(record)``
        giving its index fields; the dataset must have exactly one record field."""
        rec = self.storage.record_fields
        if len(rec) != 1:
            raise SchemaError(f"{self.storage.name}: append_array_record needs exactly one record field, the dataset has {rec}")
        files = _glob(pattern)

        def tables() -> Iterator[pa.Table]:
            for f in files:
                rows: dict[str, list[Any]] = {n: [] for n in self.storage.schema.names}
                for record in iter_file_records(f):
                    idx = index_fn(record)
                    for n in self.storage.schema.names:
                        rows[n].append(record if n == rec[0] else idx.get(n))
                    if len(rows[rec[0]]) >= 65536:
                        yield rows
                        rows = {n: [] for n in self.storage.schema.names}
                if rows[rec[0]]:
                    yield rows

        writer, entries = self._write_new(tables(), f"append_array_record({pattern})")
        return self._commit("append_array_record", writer, lambda base: Plan(added=entries), message)

    # -- reads -----------------------------------------------------------------
    def read(self, filter_: Filter = None, fields: Sequence[str] | None = None, version: Version = None,
             batch_size: int | None = None, reference_read: bool = False) -> Iterator[pa.Table]:
        """Rows of ``version`` (default: the runner's branch) as a stream of Arrow tables.

        Args:
            filter_: a SQL predicate (``"label = 'cat'"``) or a pyarrow expression.
            fields: the fields to read (default all); record fields are read from
                ArrayRecord unless ``reference_read``, which gives their references.
            batch_size: rows per table at most.

        Raises:
            VersionNotFoundError: no such version.
            UserInputError: an unknown field or a bad filter.
        """
        return reads.read(self.storage, version, filter_, fields, batch_size, reference_read, self.branch)

    def read_all(self, filter_: Filter = None, fields: Sequence[str] | None = None, version: Version = None,
                 batch_size: int | None = None, reference_read: bool = False) -> pa.Table:
        """Like ``read``, as one ``pyarrow.Table``."""
        return reads.read_all(self.storage, version=version, filter_=filter_, fields=fields,
                              batch_size=batch_size, reference_read=reference_read, branch=self.branch)

    def diff(self, start_version: Version, end_version: Version) -> Iterator[ChangeData]:
        """The changes from ``start_version`` to ``end_version``, snapshot by snapshot.

        Yields ``ChangeData(snapshot_id, change_type, data)``: per snapshot, the deleted
        rows' keys (``DELETE``) then the added rows (``ADD``).

        Raises:
            UserInputError: ``end_version`` does not descend from ``start_version``.
        """
        return diff_mod.diff(self.storage, start_version, end_version, self.branch)


def _glob(pattern: str | Sequence[str]) -> list[str]:
    patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    files: list[str] = []
    for p in patterns:
        found = sorted(glob.glob(str(p), recursive=True))
        if not found:
            raise NotFoundError(f"no files match {p!r}")
        files += found
    return files
