"""Random access to the rows of one version, for training loops (PyTorch, Grain).

``RandomAccessDataSource`` pins a snapshot when it is built and keeps, per field, the
row order of that snapshot's index together with the record references as numpy arrays.
A batch of rows (``__getitems__``) is then one vectorized lookup plus one copy per record
out of a read-only memory map of its ArrayRecord file (records past ``MMAP_MAX`` take one
``pread`` each; with ``mmap=False`` all go through ``RecordReader.read_batch``'s sorted,
merged ``pread`` calls). Maps and descriptors belong to the process-wide record pool
(``spacefs.engine.recordpool``), which a forked child empties before it runs: the object
pickles small, and DataLoader and Grain worker processes use it as they receive it.
``close()`` (or a ``with`` block, or dropping the source) gives its files back.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from spacefs.engine import Dataset
from spacefs.engine.errors import SchemaError, UserInputError
from spacefs.engine.recordpool import POOL
from spacefs.engine.records import RecordReader
from spacefs.engine.storage import Version

Source = str | os.PathLike | Any  # a location, a Dataset or a MaterializedView

# Records up to this size are copied from memory maps; larger ones are read with pread,
# whose one syscall is small next to the copy and which reads cold data in one request.
MMAP_MAX = 256 << 10


@dataclass
class _Refs:
    """The record references of one field, in the snapshot's row order."""

    files: list[str]
    file_idx: np.ndarray  # int32, index into ``files``
    offset: np.ndarray  # int64, physical offset (-1: compressed file, read by position)
    size: np.ndarray  # int64
    pos: np.ndarray  # int64, position of the record in its file
    valid: np.ndarray | None  # bool, None when no row is null


def _as_dataset(source: Source, field: str) -> Dataset:
    if isinstance(source, (str, os.PathLike)):
        source = Dataset.load(os.fspath(source))
    if not hasattr(source, "storage") and hasattr(source, "dataset"):
        source = source.dataset  # a MaterializedView reads its materialized files
    if not hasattr(source, "storage") or not hasattr(source, "local"):
        raise UserInputError(
            f"field {field!r}: expected a dataset location, a Dataset or a MaterializedView, "
            f"got {type(source).__name__}"
        )
    return source


def _refs_of(column: pa.ChunkedArray | pa.Array) -> _Refs:
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(col) == 0:
        empty = np.empty(0, np.int64)
        return _Refs([], np.empty(0, np.int32), empty, empty, empty, None)
    files = col.field("file").fill_null("").dictionary_encode()
    valid = col.is_valid().to_numpy(zero_copy_only=False) if col.null_count else None

    def num(name: str) -> np.ndarray:
        return np.ascontiguousarray(col.field(name).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)

    return _Refs(
        files.dictionary.to_pylist(),
        np.ascontiguousarray(files.indices.to_numpy(zero_copy_only=False), dtype=np.int32),
        num("offset"),
        num("size"),
        num("pos"),
        valid,
    )


def _index_values(column: pa.ChunkedArray) -> pa.Array | np.ndarray:
    """An index column held for lookups: numpy when that gives the same Python values
    (integers, floats, booleans without nulls), which takes rows ~10x faster than Arrow."""
    arr = column.combine_chunks()
    t = arr.type
    if arr.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        return arr.to_numpy(zero_copy_only=False)
    return arr


class _Group:
    """One dataset read from: its pinned snapshot and its record reader. The reader
    holds no descriptors (the process-wide pool does, and a forked child starts with an
    empty pool), so the group pickles and forks as it is."""

    def __init__(self, ds: Dataset, version: Version, mmap_max: int, cache: tuple[str, int] | None = None):
        self.mmap_max = mmap_max
        self.location = ds.location
        self.name = ds.name
        self.snapshot_id = ds.snapshot_id(version)
        # A dataset in a bucket reads records by range through this chunk cache (dir, size)
        # and this backend (its settings folded in), both set again in every process the
        # source is pickled to: a spawned DataLoader worker needs no AWS variables.
        self.cache = cache if ds.storage.remote else None
        self.backend = ds.storage.backend.portable() if ds.storage.remote else None
        self.reader = self._reader()

    def _reader(self) -> RecordReader:
        if self.cache is not None:
            # This source's own cache: other readers of the location are not affected.
            from spacefs.engine.chunkcache import ChunkCache
            from spacefs.engine.remote_records import RemoteRecordReader

            return RemoteRecordReader(self.location, ChunkCache(*self.cache))  # type: ignore[return-value]
        return RecordReader(self.location, mmap_max=self.mmap_max)

    def record_reader(self) -> RecordReader:
        return self.reader

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "reader"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.backend is not None:  # another process: read with the driver's settings
            from spacefs.engine.backend import register_backend

            register_backend(self.backend)
        self.reader = self._reader()


def _detach(roots: list[str]) -> None:
    for r in roots:
        POOL.detach(r)


class RandomAccessDataSource:
    """Rows of one version of one or several datasets, by index.

    ``access_config`` maps each wanted field to where it lives: a dataset location, a
    ``Dataset`` or a ``MaterializedView`` (its materialized data). Fields of different
    datasets are lined up by primary key, in the row order of the first dataset named.
    Record fields are read lazily from ArrayRecord; index fields are held in memory.

    Records up to ``MMAP_MAX`` bytes are copied out of read-only memory maps of the record
    files (no syscall per record: about 3x cheaper than ``pread`` on page cache); larger
    ones are read with ``pread``. ``mmap=False`` reads everything with ``pread``, which
    can suit cold random reads of data far larger than memory (no fault read-around).
    With ``mmap=False``, ``threads`` > 1 spreads the reads of large batches over threads.

    With one field an item is that field's value; with several it is a dict. With
    ``deserialize=True`` record fields of a ``TfFeatures`` type come back as nested
    numpy dicts (plain binary fields have nothing to deserialize and are refused).

    Datasets in a bucket (``s3://...``) are read by ranged GETs; with ``cache_dir`` their
    record chunks are kept in that directory (at most ``cache_size`` bytes, shared by
    processes), so a second epoch makes no request. A torch ``DataLoader`` over such a
    source needs ``multiprocessing_context="spawn"`` (the S3 client does not survive fork).

    Example::

        source = RandomAccessDataSource({"feature": "/data/example_ds"}, version="v1")
        len(source), source[2], source.__getitems__([5, 1, 9])
    """

    def __init__(self, access_config: Mapping[str, Source], deserialize: bool = False,
                 version: Version = None, threads: int = 0, mmap: bool = True,
                 cache_dir: str | None = None, cache_size: int = 1 << 30):
        if not isinstance(access_config, Mapping) or not access_config:
            raise UserInputError("access_config must be a non-empty dict of {field: dataset location or Dataset}")
        self.deserialize = bool(deserialize)
        self.threads = int(threads)
        self.fields = list(access_config)
        groups: dict[str, tuple[Dataset, list[str]]] = {}
        for field, source in access_config.items():
            ds = _as_dataset(source, field)
            if field not in ds.schema.names:
                raise SchemaError(f"{ds.name}: no field {field!r} (fields: {ds.schema.names})")
            groups.setdefault(ds.location, (ds, []))[1].append(field)
        self._types = {f: ds.schema.field(f).type for ds, fs in groups.values() for f in fs}
        if self.deserialize:
            plain = [f for ds, fs in groups.values() for f in fs
                     if f in ds.record_fields and not hasattr(self._types[f], "deserialize")]
            if plain:
                raise UserInputError(
                    f"deserialize=True needs record fields with a serializer (TfFeatures); "
                    f"{plain} are plain binary: pass deserialize=False to get their bytes"
                )
        # Pin every version first, so a bad version fails before anything is read.
        cache = (os.path.abspath(cache_dir), int(cache_size)) if cache_dir else None
        self._groups = [_Group(ds, version, MMAP_MAX if mmap else 0, cache) for ds, _ in groups.values()]
        self._own()
        self._refs: dict[str, tuple[_Group, _Refs]] = {}
        self._values: dict[str, pa.Array | np.ndarray] = {}
        self._keys: list[str] = []
        self._len = 0
        base: pa.Table | None = None
        for (ds, fields), group in zip(groups.values(), self._groups, strict=True):
            t = self._read_group(ds, fields, group.snapshot_id, base)
            if base is None:
                base = t.select(ds.primary_keys) if len(groups) > 1 else t.select([])
                self._keys = ds.primary_keys
                self._len = t.num_rows
            for f in fields:
                if f in ds.record_fields:
                    self._refs[f] = (group, _refs_of(t.column(f)))
                else:
                    self._values[f] = _index_values(t.column(f))

    def _read_group(self, ds: Dataset, fields: list[str], sid: int, base: pa.Table | None) -> pa.Table:
        """The fields' index columns (references for record fields) of snapshot ``sid``,
        aligned with ``base``'s primary keys when this is not the first dataset."""
        if base is None:
            cols = list(dict.fromkeys(ds.primary_keys + fields))
            return ds.local().read_all(fields=cols, version=sid, reference_read=True)
        if ds.primary_keys != self._keys:
            raise SchemaError(f"{ds.name}: primary keys {ds.primary_keys} differ from {self._keys}; "
                              "fields of several datasets are lined up by the same primary keys")
        cols = list(dict.fromkeys(ds.primary_keys + fields))
        t = ds.local().read_all(fields=cols, version=sid, reference_read=True)
        # Arrow joins only carry flat columns: join row numbers on the keys, then take.
        right = t.select(self._keys).append_column("_spacefs_pos", pa.array(np.arange(t.num_rows)))
        left = base.append_column("_spacefs_row", pa.array(np.arange(base.num_rows)))
        joined = left.join(right, self._keys, join_type="left outer").sort_by("_spacefs_row")
        pos = joined.column("_spacefs_pos")
        if joined.num_rows != base.num_rows or pos.null_count:
            raise SchemaError(f"{ds.name}: at snapshot {sid} its keys do not match the first dataset's "
                              f"({pos.null_count} missing, {t.num_rows} rows against {base.num_rows}); fields of "
                              "several datasets are lined up by primary key")
        return t.take(pos)

    # -- ownership -----------------------------------------------------------------
    def _own(self) -> None:
        # One claim per dataset on the pool's open files, given back by ``close`` or when
        # the source is collected: a dropped source leaves no descriptor behind.
        self._closer = weakref.finalize(self, _detach, [POOL.attach(g.location) for g in self._groups])

    def close(self) -> None:
        """Give back this source's claim on the open record files (closed once no other
        reader of their datasets is left). Reading again afterwards still works."""
        self._closer()

    def __enter__(self) -> RandomAccessDataSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_closer"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._own()

    # -- sizes and versions ----------------------------------------------------
    def __len__(self) -> int:
        return self._len

    @property
    def snapshot_ids(self) -> dict[str, int]:
        """The pinned snapshot of each dataset read, by location."""
        return {g.location: g.snapshot_id for g in self._groups}

    # -- access ------------------------------------------------------------------
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return self.__getitems__(range(*index.indices(self._len)))
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int or a slice, got {type(index).__name__}")
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """Many rows at once: each record file is read in one sorted pass."""
        columns = self.columns(indices)
        if len(self.fields) == 1:
            return columns[self.fields[0]]
        names = self.fields
        return [dict(zip(names, row, strict=True)) for row in zip(*(columns[f] for f in names), strict=True)]

    def columns(self, indices: Sequence[int]) -> dict[str, list[Any]]:
        """The rows at ``indices`` as one list per field (a columnar batch)."""
        idx = self._check(indices)
        return {f: self._column(f, idx) for f in self.fields}

    def _check(self, indices: Sequence[int]) -> np.ndarray:
        try:
            idx = np.asarray(indices)
        except (TypeError, ValueError):
            raise TypeError("indices must be a sequence of ints") from None
        if idx.size == 0:
            return np.empty(0, np.int64)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"indices must be ints, got {idx.dtype}")
        idx = idx.astype(np.int64, copy=False).ravel()
        bad = (idx >= self._len) | (idx < -self._len)
        if bad.any():
            raise IndexError(f"index {int(idx[bad][0])} out of range for {self._len} rows")
        return np.where(idx < 0, idx + self._len, idx)

    def _column(self, field: str, idx: np.ndarray) -> list[Any]:
        if field in self._values:
            values = self._values[field]
            if isinstance(values, np.ndarray):
                return values[idx].tolist()
            return values.take(pa.array(idx)).to_pylist()
        group, refs = self._refs[field]
        valid = refs.valid
        want = idx if valid is None else idx[valid[idx]]
        vals = group.record_reader().read_batch(
            refs.files, refs.file_idx[want], refs.offset[want], refs.size[want], refs.pos[want], self.threads
        )
        if self.deserialize:
            decode = self._types[field].deserialize
            vals = [decode(v) for v in vals]
        if valid is None or len(want) == len(idx):
            return vals
        out: list[Any] = [None] * len(idx)
        for i, v in zip(np.flatnonzero(valid[idx]).tolist(), vals, strict=True):
            out[i] = v
        return out

    def __repr__(self) -> str:
        where = ", ".join(f"{g.name}@{g.snapshot_id}" for g in self._groups)
        return f"RandomAccessDataSource(fields={self.fields}, rows={self._len}, {where})"
