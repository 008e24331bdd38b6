"""Reading views (and, on Ray, datasets): ``read``, ``read_all``, ``diff``.

One function, ``read_view``, serves both runners: the executor decides whether parts
run here or as Ray tasks; the rows, their order and their batching are the same.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from .filters import Filter, predicate
from .options import FileOptions
from .reads import _rebatch
from .schema import check_batch_size, select_fields
from .storage import Version
from .types import ChangeData, ChangeType
from .view_delta import merge_deletes
from .view_parts import Ctx, finish
from .views import Source, View


def _names(view: View, fields: Sequence[str] | None) -> list[str]:
    return select_fields(view.schema, fields, "read")


def read_view(view: View, executor: Any, version: Version | dict = None, filter_: Filter = None,
              fields: Sequence[str] | None = None, batch_size: int | None = None,
              reference_read: bool = False, part_rows: int | None = None) -> Iterator[pa.Table]:
    """Rows of ``view`` at ``version``; arguments are checked now, work done lazily."""
    check_batch_size(batch_size)
    versions = view.resolve_versions(version)
    pred = predicate(filter_, view.schema, view.record_fields, "read")
    names = _names(view, fields)
    ctx = Ctx(executor, part_rows=part_rows)
    roots = {} if reference_read else view.ref_roots
    # A dataset prunes files by their stats; a derived view filters its output rows.
    prune = pred.prune if pred is not None else None
    parts = view._scan(ctx, versions, prune) if isinstance(view, Source) else view._scan(ctx, versions)
    fn = functools.partial(finish, filter_=pred, names=names, roots=roots, schema=view.schema)
    tables = executor.stream(fn, parts)
    return tables if batch_size is None else _rebatch(tables, batch_size)


def output_schema(view: View, fields: Sequence[str] | None, reference_read: bool) -> pa.Schema:
    names = _names(view, fields)
    s = view.ref_schema if reference_read else view.schema
    return pa.schema([s.field(n) for n in names])


class ViewRunner:
    """Reads a view: its rows are computed from its sources on every read."""

    def __init__(self, view: View, executor: Any, file_options: FileOptions | None = None):
        self.view = view
        self.executor = executor
        self.file_options = file_options or FileOptions()

    def read(self, filter_: Filter = None, fields: Sequence[str] | None = None, version: Version | dict = None,
             batch_size: int | None = None, reference_read: bool = False) -> Iterator[pa.Table]:
        """Rows of the view; ``version`` applies to every source (or a dict per source)."""
        return read_view(self.view, self.executor, version, filter_, fields, batch_size, reference_read,
                         getattr(self.executor, "part_rows", None))

    def read_all(self, filter_: Filter = None, fields: Sequence[str] | None = None, version: Version | dict = None,
                 batch_size: int | None = None, reference_read: bool = False) -> pa.Table:
        """Like ``read``, as one ``pyarrow.Table``."""
        parts = [t for t in self.read(filter_, fields, version, batch_size, reference_read) if t.num_rows]
        if not parts:
            return output_schema(self.view, fields, reference_read).empty_table()
        return pa.concat_tables(parts)

    def diff(self, start_version: Version | dict, end_version: Version | dict) -> Iterator[ChangeData]:
        """The net change of the view: DELETE tables (primary key columns, or one side's
        key for a join) then ADD tables, all labelled with the end snapshot id."""
        view = self.view
        start = view.resolve_versions(start_version)
        end = view.resolve_versions(end_version)
        sid = end[view.sources()[0].key]
        ctx = Ctx(self.executor, part_rows=getattr(self.executor, "part_rows", None))
        delta = view._delta(ctx, start, end)
        fn = functools.partial(finish, filter_=None, names=list(view.schema.names), roots=view.ref_roots,
                               schema=view.schema)

        def changes() -> Iterator[ChangeData]:
            for keys in merge_deletes(delta.deletes):
                yield ChangeData(sid, ChangeType.DELETE, keys)
            for t in self.executor.stream(fn, delta.adds):
                if t.num_rows:
                    yield ChangeData(sid, ChangeType.ADD, t)

        return changes()

