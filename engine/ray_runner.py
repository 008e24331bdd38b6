"""The Ray runner: the local runner's operations, with the heavy parts as Ray tasks.

- Writes: every write of ``LocalRunner``; ``append_from`` ingests each source in its
  own Ray task (each task writes its data files, the driver commits them all in one
  snapshot, or removes them all if any source fails).
- Reads: a version is cut into parts (row ranges of index files), each read with its
  records by a Ray task; at most ``RayOptions.max_parallelism`` run at once and the
  rows come back in order.
- Views and materialized views: the same parts (UDFs included) run as Ray tasks;
  ``mv.ray().refresh()`` writes the MV's new files from the tasks.

Where Ray runs: if Ray is not initialised, the first use calls ``ray.init()``, which
starts a local Ray on this machine, or connects to the cluster named by the
``RAY_ADDRESS`` environment variable. To use a cluster explicitly, initialise Ray
before using the runner::

    import ray
    ray.init(address="ray://head-node:10001")   # or "auto" on a cluster node
    ds.ray(ray_options=RayOptions(max_parallelism=64)).append_from(sources)

On a cluster, every node must see the dataset directories at the same path (a shared
filesystem) and have spacefs installed; UDFs travel with cloudpickle, so the modules
they import must be installed on the workers too.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import pyarrow as pa

from .backend import portable_backends, register_backend
from .filters import Filter
from .options import FileOptions, RayOptions
from .runners import LocalRunner
from .storage import Plan, Storage, Version
from .types import JobResult
from .view_parts import open_storage
from .writes import FileWriter, iter_tables

T = TypeVar("T")

# Rows per read task of a dataset scan: big enough to amortise a task, small enough
# that a task's output (records included) stays a modest object.
RAY_PART_ROWS = 16_384


def ensure_ray() -> None:
    """Start (or connect to) Ray once per process; a no-op if already initialised."""
    import ray

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False)


_remote_run = None


def _run_list(fn: Callable[[Any], Iterable[T]], item: Any, backends: Sequence[Any] = ()) -> list[T]:
    for b in backends:  # the driver's buckets, with its settings (OBJECTSTORE.md)
        register_backend(b)
    return list(fn(item))


def _remote() -> Any:
    global _remote_run
    if _remote_run is None:
        import ray

        _remote_run = ray.remote(_run_list)
    return _remote_run


class RayExecutor:
    """Runs parts as Ray tasks, at most ``max_parallelism`` at a time, results in order."""

    def __init__(self, ray_options: RayOptions | None = None, part_rows: int = RAY_PART_ROWS):
        self.options = ray_options or RayOptions()
        self.parallelism = max(1, int(self.options.max_parallelism))
        self.part_rows = part_rows
        ensure_ray()

    def stream(self, fn: Callable[[Any], Iterable[T]], parts: Iterable[Any]) -> Iterator[T]:
        import ray

        remote = _remote()
        fn_ref = ray.put(fn)  # shipped once, not once per task
        backends_ref = ray.put(portable_backends())
        pending: deque = deque()
        it = iter(parts)
        try:
            for item in it:
                pending.append(remote.remote(fn_ref, item, backends_ref))
                if len(pending) >= self.parallelism:
                    yield from ray.get(pending.popleft())
            while pending:
                yield from ray.get(pending.popleft())
        finally:
            # On error or early exit, let running tasks finish: their written files
            # are cleaned up by the task itself on failure, or are unreferenced.
            for ref in pending:
                ray.cancel(ref)


def _ingest(location: str, file_options: FileOptions | None, fn: Callable[[], Iterable[Any]]) -> Iterator[tuple[list, list[str]]]:
    storage = open_storage(location)
    writer = FileWriter(storage, file_options)
    entries: list[dict[str, Any]] = []
    try:
        for t in iter_tables(fn(), storage.schema, f"{storage.name}: append_from"):
            if t.num_rows:
                entries += writer.write(t)
    except BaseException:
        writer.cleanup()
        raise
    yield entries, list(writer.written)


class RayRunner(LocalRunner):
    """Runs a dataset's operations with Ray tasks (see the module docstring)."""

    def __init__(self, storage: Storage, ray_options: RayOptions | None = None,
                 file_options: FileOptions | None = None, branch: str = "main"):
        super().__init__(storage, file_options, branch)
        self.ray_options = ray_options or RayOptions()
        self._executor_obj: RayExecutor | None = None

    def _executor(self) -> RayExecutor:
        if self._executor_obj is None:
            self._executor_obj = RayExecutor(self.ray_options)
        return self._executor_obj

    def append_from(self, source_fns: Callable[[], Iterable[Any]] | Sequence[Callable[[], Iterable[Any]]],
                    max_workers: int | None = None, *, message: str | None = None) -> JobResult:
        """Ingest each source in its own Ray task; all land in one snapshot, or none."""
        fns = [source_fns] if callable(source_fns) else list(source_fns)
        ex = self._executor()
        if max_workers:
            ex = RayExecutor(RayOptions(max_parallelism=max_workers))
        fn = functools.partial(_ingest, self.storage.location, self.file_options)
        entries: list[dict[str, Any]] = []
        writer = FileWriter(self.storage, self.file_options)
        try:
            for e, w in ex.stream(fn, fns):
                entries += e
                writer.written += w
        except BaseException:
            writer.cleanup()
            raise
        return self._commit("append_from", writer, lambda base: Plan(added=entries), message)

    def read(self, filter_: Filter = None, fields: Sequence[str] | None = None, version: Version = None,
             batch_size: int | None = None, reference_read: bool = False) -> Iterator[pa.Table]:
        """Rows of a version, read in parallel blocks (row ranges of index files)."""
        from .view_runner import read_view
        from .views import Source

        ex = self._executor()
        return read_view(Source(self.storage, self.branch), ex, version, filter_, fields, batch_size,
                         reference_read, ex.part_rows)

    def read_all(self, filter_: Filter = None, fields: Sequence[str] | None = None, version: Version = None,
                 batch_size: int | None = None, reference_read: bool = False) -> pa.Table:
        """Like ``read``, as one ``pyarrow.Table``."""
        from .reads import output_schema, resolve_fields

        parts = [t for t in self.read(filter_, fields, version, batch_size, reference_read) if t.num_rows]
        if not parts:
            return output_schema(self.storage, resolve_fields(self.storage, fields), reference_read).empty_table()
        return pa.concat_tables(parts)


class MVRayRunner(RayRunner):
    """Reads an MV's stored rows with Ray and refreshes it with Ray tasks."""

    def __init__(self, mv: Any, ray_options: RayOptions | None = None, file_options: FileOptions | None = None):
        super().__init__(mv.storage, ray_options, file_options, mv.current_branch)
        self.mv = mv

    def refresh(self, version: Version | dict = None, batch_size: int | None = None) -> JobResult:
        """Like ``mv.local().refresh``, with the UDFs and file writes in Ray tasks."""
        from .refresh import refresh

        return refresh(self.mv, self._executor(), version, batch_size, self.file_options, self.mv.current_branch)

    def _refuse(self, *args: Any, **kwargs: Any) -> JobResult:
        """Refused: an MV is written by ``refresh()`` (raises ``UserInputError``)."""
        from .errors import UserInputError

        raise UserInputError(f"materialized view {self.mv.name} is written by refresh(); "
                             "use mv.dataset.ray() to write its rows directly")

    append = insert = upsert = delete = append_from = append_parquet = append_array_record = _refuse
