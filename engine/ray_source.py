"""``ds.ray_dataset()`` and ``view.ray_dataset()``: lazy Ray datasets.

A ``ray.data.Datasource`` whose read tasks are the parts of a scan: row ranges of the
index files of the pinned snapshot (a view wraps them with its UDFs), each task reading
its index rows and their records. Nothing is read until Ray executes the dataset, and
the driver never holds the data (a join is the exception: it is computed over index
rows and references on the driver, then its rows are read by range).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from .backend import register_backend
from .options import RayOptions
from .storage import Version
from .view_parts import Ctx, FileRange, LocalExecutor, Part, Rows, finish
from .view_runner import _names
from .views import View, as_view

# Never cut a dataset into read tasks smaller than this.
MIN_TASK_ROWS = 1024


def _read_block(part: Part, names: list[str], roots: dict[str, str], schema: pa.Schema,
                backends: Sequence[Any] = ()) -> list[pa.Table]:
    for b in backends:  # buckets read through the driver's settings (OBJECTSTORE.md)
        register_backend(b)
    out = list(finish(part, None, names, roots, schema))
    return out or [pa.schema([schema.field(n) for n in names]).empty_table()]


def _datasource_class() -> type:
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class SpacefsDatasource(Datasource):
        """Read tasks over one pinned version of a spacefs dataset or view."""

        def __init__(self, view: View, versions: dict, names: list[str]):
            super().__init__()
            self.view = view
            self.versions = versions
            self.names = names
            self.out_schema = pa.schema([view.schema.field(n) for n in names])

        def get_name(self) -> str:
            return "spacefs"

        def _rows(self) -> int:
            return sum(s.storage.snapshot(self.versions[s.key])["stats"]["rows"] for s in self.view.sources())

        def estimate_inmemory_data_size(self) -> int | None:
            total = 0
            for s in self.view.sources():
                stats = s.storage.snapshot(self.versions[s.key])["stats"]
                total += stats.get("record_bytes", 0) + stats.get("index_bytes", 0)
            return total or None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            rows = max(1, self._rows())
            part_rows = max(MIN_TASK_ROWS, math.ceil(rows / max(1, parallelism)))
            ctx = Ctx(LocalExecutor(), part_rows=part_rows)
            parts = list(self.view._scan(ctx, self.versions))
            backends = [s.storage.backend.portable() for s in self.view.sources() if s.storage.remote]
            fn_args = {"names": self.names, "roots": self.view.ref_roots, "schema": self.view.schema,
                       "backends": backends}
            if not parts:
                parts = [Rows(self.view.ref_schema.empty_table())]
            tasks = []
            for p in parts:
                exact = isinstance(p, Rows) or (isinstance(p, FileRange) and p.filter_ is None)
                meta = BlockMetadata(num_rows=p.rows if exact else None, size_bytes=None, input_files=None,
                                     exec_stats=None)
                kw: dict[str, Any] = {}
                if per_task_row_limit is not None:
                    kw["per_task_row_limit"] = per_task_row_limit
                tasks.append(ReadTask(functools.partial(_read_block, p, **fn_args), meta, schema=self.out_schema, **kw))
            return tasks

    return SpacefsDatasource


def ray_dataset(source: Any, version: Version | dict = None, fields: Sequence[str] | None = None,
                ray_options: RayOptions | None = None):
    """A lazy ``ray.data.Dataset`` of a dataset or view, pinned to ``version`` now."""
    import ray.data

    from .ray_runner import ensure_ray

    view = as_view(source)
    versions = view.resolve_versions(version)
    names = _names(view, fields)
    ensure_ray()
    ds = _datasource_class()(view, versions, names)
    kwargs = {"concurrency": ray_options.max_parallelism} if ray_options is not None else {}
    return ray.data.read_datasource(ds, **kwargs)
