"""Materialized views: a view's rows stored as a dataset, refreshed incrementally.

An MV is an ordinary dataset directory (``kind: mv`` in ``dataset.json``) that also
holds its view's definition, pickled with cloudpickle (UDFs included) in
``metadata/view.pkl``. Source datasets are pickled by path *relative to the MV*, so a
catalog moved or copied as a whole keeps working.

Which source snapshots the MV's rows reflect is kept in the log's settings, keyed by
the MV snapshot that holds those rows; a refresh moves it in the same log entry as its
data (see ``refresh.py``).

Example::

    view = ds.map_batches(fn, output_schema=schema, output_record_fields=["feature"])
    mv = view.materialize("/data/example_mv")   # or catalog.materialize("example_mv", view)
    mv.local().refresh()                        # or mv.ray().refresh("v1", batch_size=64)
    mv.local().read_all()                       # the stored rows, no UDF runs
"""

from __future__ import annotations

import io
import os
import pickle
from typing import TYPE_CHECKING, Any

import cloudpickle

from . import format as fmt
from .backend import is_remote
from .dataset import Dataset
from .errors import CorruptionError, NotFoundError, UserInputError
from .options import FileOptions, RayOptions
from .runners import LocalRunner
from .storage import Storage, Version
from .types import JobResult

if TYPE_CHECKING:
    from .views import View

DEFINITION = fmt.VIEW_DEFINITION
_SOURCE_TAG = "spacefs-source"


def source_ref(source: str, mv_location: str) -> str:
    """How an MV names a source: relative to the MV between directories (the pair moves
    together), as is when either lives in a bucket (a path relative to a URI means nothing)."""
    if is_remote(source) or is_remote(mv_location):
        return source
    return os.path.relpath(source, mv_location)


def dump_view(view: View, mv_location: str) -> bytes:
    """Pickle ``view``, its sources as paths relative to ``mv_location``."""
    from .views import Source

    class Pickler(cloudpickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, Source):
                return (_SOURCE_TAG, source_ref(obj.location, mv_location), obj.branch)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(view)
    return buf.getvalue()


def load_view(data: bytes, mv_location: str) -> View:
    from .views import Source

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            tag, rel, branch = pid
            if tag != _SOURCE_TAG:
                raise pickle.UnpicklingError(f"unknown persistent id {tag!r}")
            path = rel if is_remote(rel) else os.path.normpath(os.path.join(mv_location, rel))
            try:
                return Source.open(path, branch)
            except NotFoundError:
                raise NotFoundError(f"materialized view {os.path.basename(mv_location)}: source dataset "
                                    f"{rel!r} not found at {path}") from None

    return Unpickler(io.BytesIO(data)).load()


class MaterializedView(Dataset):
    """A view's rows stored as a dataset. ``mv.view`` computes rows from the sources
    on every read; ``mv.dataset`` (and ``mv.local().read()``) read the stored rows."""

    def __init__(self, storage: Storage, view: View | None = None):
        super().__init__(storage)
        self._view = view

    @classmethod
    def create(cls, location: str, view: View) -> MaterializedView:
        """Create an empty materialized view of ``view`` at ``location`` (fill it with ``refresh``)."""
        location = str(location).rstrip("/") if is_remote(str(location)) else os.path.abspath(location)
        blob = dump_view(view, location)
        sources = [{"location": source_ref(s.location, location), "branch": s.branch} for s in view.sources()]
        extra = {"view": {"definition": DEFINITION, "type": type(view).__name__, "sources": sources}}
        storage = Storage.create(location, view.schema, view.primary_keys, view.record_fields, kind="mv",
                                 extra=extra, files={DEFINITION: blob})
        return cls(storage, view)

    @classmethod
    def load(cls, location: str) -> MaterializedView:
        """Open the materialized view at ``location``.

        Raises:
            UserInputError: ``location`` is a plain dataset.
        """
        storage = Storage(str(location))
        if storage.kind != "mv":
            raise UserInputError(f"{storage.location} is a dataset, not a materialized view")
        return cls(storage)

    @property
    def view(self) -> View:
        """The view definition (loaded on first use: reading stored rows never needs it)."""
        if self._view is None:
            rel = self.storage.meta.get("view", {}).get("definition", DEFINITION)
            path = self.storage.full_path(rel)
            try:
                data = self.storage.backend.read_bytes(rel)
            except FileNotFoundError:
                raise CorruptionError(f"materialized view {self.name}: definition {path} is missing") from None
            self._view = load_view(data, self.location)
        return self._view

    @property
    def dataset(self) -> Dataset:
        """The stored rows as a plain dataset (writes to it bypass the view)."""
        ds = Dataset(self.storage)
        ds.set_current_branch(self.current_branch)
        return ds

    def local(self, file_options: FileOptions | None = None) -> MVRunner:
        """A runner that reads the stored rows and refreshes in this process."""
        return MVRunner(self, file_options)

    def ray(self, ray_options: RayOptions | None = None, file_options: FileOptions | None = None) -> Any:
        """A runner that reads the stored rows and refreshes with Ray tasks."""
        from .ray_runner import MVRayRunner

        return MVRayRunner(self, ray_options, file_options)

    def reflects(self, version: Version = None) -> list[dict[str, Any]]:
        """The source snapshots the rows of ``version`` (default: the branch head) reflect."""
        from .refresh import recorded_sources

        sid = self.storage.resolve(version, self.current_branch)
        return recorded_sources(self.storage.head(), sid, self.storage.meta["view"]["sources"])

    def __repr__(self) -> str:
        return f"MaterializedView({self.location!r})"


class _Refreshing:
    """Runner methods of an MV: reads come from the stored rows; writes are refused,
    since only ``refresh`` keeps rows and the source marker consistent."""

    mv: MaterializedView
    file_options: FileOptions

    def _executor(self) -> Any:
        raise NotImplementedError

    def refresh(self, version: Version | dict = None, batch_size: int | None = None) -> JobResult:
        """Bring the MV up to ``version`` of its sources (default: their branch heads),
        processing only what changed since the snapshot it reflects."""
        from .refresh import refresh

        return refresh(self.mv, self._executor(), version, batch_size, self.file_options, self.mv.current_branch)

    def _refuse(self, *args: Any, **kwargs: Any) -> JobResult:
        """Refused: an MV is written by ``refresh()`` (raises ``UserInputError``)."""
        raise UserInputError(f"materialized view {self.mv.name} is written by refresh(); "
                             "use mv.dataset.local() to write its rows directly")

    append = insert = upsert = delete = append_from = append_parquet = append_array_record = _refuse


class MVRunner(_Refreshing, LocalRunner):
    """Reads an MV's stored rows in this process and refreshes it locally."""

    def __init__(self, mv: MaterializedView, file_options: FileOptions | None = None):
        LocalRunner.__init__(self, mv.storage, file_options, mv.current_branch)
        self.mv = mv

    def _executor(self) -> Any:
        from .view_parts import LocalExecutor

        return LocalExecutor()
