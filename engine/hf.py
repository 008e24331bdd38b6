"""Conversion to and from HuggingFace ``datasets``.

``from_huggingface`` stores a ``datasets.Dataset`` as a spacefs dataset in one snapshot,
streaming it in batches. ``Image`` and ``Audio`` columns (Arrow structs of bytes and a
path) chosen as record fields are stored as their bytes in ArrayRecord. The HuggingFace
features are kept in the schema's metadata, so ``to_huggingface`` gives back a
``datasets.Dataset`` with the same features: images decode as images again.

``datasets`` is imported only when these functions run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from .backend import is_remote
from .errors import SchemaError, UserInputError
from .reads import resolve_fields
from .storage import Version

if TYPE_CHECKING:
    from .dataset import Dataset

# Schema metadata key holding the HuggingFace features (``Features.to_dict()``) as JSON.
# Not HuggingFace's own key: index Parquet files must not make ``load_dataset`` apply an
# ``Image`` feature to a reference struct.
META_KEY = b"spacefs.huggingface"
_BYTES_FEATURES = ("Image", "Audio")  # stored by HuggingFace as struct<bytes, path>
# Input rows are gathered into tables of about this size before they are written, so a
# dataset of many small HuggingFace batches still gets few, large files.
_WRITE_ROWS = 65536
_WRITE_BYTES = 256 << 20


def _progress(total: int | None, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="rows", disable=not sys.stderr.isatty())


# -- to HuggingFace -------------------------------------------------------------------
def stored_features(ds: Dataset) -> dict[str, Any]:
    """The HuggingFace features kept in the schema metadata (empty if none)."""
    raw = (ds.schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


def _hf_table(table: pa.Table, feature_doc: dict[str, Any]) -> pa.Table:
    """A read table in HuggingFace's Arrow layout: extension types to their storage,
    ``Image``/``Audio`` bytes back into their struct."""
    cols, names = [], []
    for name in table.column_names:
        col = table.column(name)
        if isinstance(col.type, pa.ExtensionType):
            col = pa.chunked_array([c.storage for c in col.chunks], col.type.storage_type)
        kind = feature_doc.get(name, {}).get("_type") if isinstance(feature_doc.get(name), dict) else None
        if kind in _BYTES_FEATURES and (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
            arr = col.combine_chunks()
            col = pa.StructArray.from_arrays([arr.cast(pa.binary()), pa.nulls(len(arr), pa.string())],
                                             ["bytes", "path"], mask=arr.is_null() if arr.null_count else None)
        cols.append(col)
        names.append(name)
    return pa.Table.from_arrays(cols, names=names)


def _features(table: pa.Table, feature_doc: dict[str, Any]) -> Any:
    import datasets

    inferred = datasets.Features.from_arrow_schema(table.schema)
    kept = {n: feature_doc[n] for n in table.column_names if n in feature_doc}
    if not kept:
        return inferred
    restored = datasets.Features.from_dict(kept)
    return datasets.Features({n: restored.get(n, inferred[n]) for n in table.column_names})


def to_huggingface(ds: Dataset, version: Version = None, fields: Sequence[str] | None = None,
                   cache_dir: str | None = None) -> Any:
    """One version as a ``datasets.Dataset``, record bytes materialized.

    In memory by default; with ``cache_dir`` the rows are written once to an Arrow file
    there (named by dataset, snapshot and fields, so a second call reuses it) and memory
    mapped, which suits versions larger than RAM.
    """
    import datasets
    from datasets.table import InMemoryTable, table_cast

    sid = ds.snapshot_id(version)
    names = resolve_fields(ds.storage, fields)
    doc = stored_features(ds)
    schema = _hf_table(ds.storage.schema.empty_table().select(names), doc).schema
    features = _features(schema.empty_table(), doc)
    target = features.arrow_schema
    info = datasets.DatasetInfo(features=features)
    rows = ds.num_rows(sid)

    def tables() -> Iterator[pa.Table]:
        with _progress(rows, f"{ds.name}@{sid} to HuggingFace") as bar:
            for t in ds.local().read(fields=names, version=sid):
                yield table_cast(_hf_table(t, doc), target)
                bar.update(t.num_rows)

    # A snapshot never changes, so (location, snapshot, fields) identifies the rows; without
    # it HuggingFace would fingerprint an in-memory table by pickling all of its bytes.
    fingerprint = hashlib.sha1(json.dumps([ds.location, sid, names]).encode()).hexdigest()
    if cache_dir is None:
        parts = list(tables())
        table = pa.concat_tables(parts) if parts else target.empty_table()
        return datasets.Dataset(InMemoryTable(table), info=info, fingerprint=fingerprint)
    digest = fingerprint[:12]
    path = os.path.join(os.path.abspath(cache_dir), f"{ds.name}-{sid}-{digest}.arrow")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_stream(sink, target) as writer:
                for t in tables():
                    writer.write_table(t)
            os.replace(tmp, path)  # a snapshot never changes: the file stays valid
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return datasets.Dataset.from_file(path, info=info)


# -- from HuggingFace -----------------------------------------------------------------
def _feature_kind(features: Any, name: str) -> str | None:
    if features is None or name not in features:
        return None
    return type(features[name]).__name__


def _storage_schema(hf_schema: pa.Schema, features: Any, record_fields: list[str], meta: bytes) -> pa.Schema:
    fields = []
    for f in hf_schema:
        if f.name in record_fields:
            kind = _feature_kind(features, f.name)
            t = f.type
            if kind in _BYTES_FEATURES or pa.types.is_binary(t) or pa.types.is_large_binary(t):
                fields.append(pa.field(f.name, pa.binary()))
                continue
            raise SchemaError(f"record field {f.name!r} has HuggingFace type {kind or t}; record fields "
                              "must be binary, Image or Audio columns")
        fields.append(f.remove_metadata())
    return pa.schema(fields, metadata={META_KEY: meta})


def _record_bytes(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The bytes of an ``Image``/``Audio`` struct column; files named only by path are read."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_struct(arr.type):
        return arr.cast(pa.binary())
    data = arr.field("bytes").cast(pa.binary())
    missing = pc.and_(pc.is_null(data), pc.is_valid(arr.field("path"))).to_numpy(zero_copy_only=False)
    if missing.any():
        values = data.to_pylist()
        paths = arr.field("path").to_pylist()
        for i in missing.nonzero()[0].tolist():
            with open(paths[i], "rb") as f:
                values[i] = f.read()
        data = pa.array(values, pa.binary())
    if arr.null_count:
        data = pc.if_else(arr.is_valid(), data, pa.scalar(None, pa.binary()))
    return data


def from_huggingface(hf_dataset: Any, location: str, primary_keys: Sequence[str] | str,
                     record_fields: Sequence[str] | None = None, batch_size: int = 1000) -> Dataset:
    """Store a ``datasets.Dataset`` at ``location`` as a new spacefs dataset.

    ``record_fields`` defaults to the ``Image``, ``Audio`` and binary columns. All rows
    land in one snapshot; if anything fails, no dataset is left behind.
    """
    import datasets

    from .dataset import Dataset

    if isinstance(hf_dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise UserInputError(f"from_huggingface takes one split; got splits {list(hf_dataset)}: pass e.g. ds['train']")
    if not isinstance(hf_dataset, datasets.Dataset):
        raise UserInputError(f"from_huggingface takes a datasets.Dataset, got {type(hf_dataset).__name__}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise UserInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    features = hf_dataset.features
    hf_schema = features.arrow_schema
    if record_fields is None:
        record_fields = [f.name for f in hf_schema if _feature_kind(features, f.name) in _BYTES_FEATURES
                         or pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    record_fields = [record_fields] if isinstance(record_fields, str) else list(record_fields)
    unknown = [f for f in record_fields if f not in hf_schema.names]
    if unknown:
        raise SchemaError(f"record fields {unknown} are not columns of the HuggingFace dataset ({hf_schema.names})")
    schema = _storage_schema(hf_schema, features, record_fields, json.dumps(features.to_dict()).encode())
    location = os.fspath(location)
    location = location if is_remote(location) else os.path.abspath(location)
    ds = Dataset.create(location, schema, primary_keys, record_fields)

    def tables() -> Iterator[pa.Table]:
        pending: list[pa.Table] = []
        rows = size = 0
        with _progress(len(hf_dataset), f"HuggingFace to {ds.name}") as bar:
            for t in hf_dataset.with_format("arrow").iter(batch_size=batch_size):
                cols = [_record_bytes(t.column(n)) if n in record_fields else t.column(n) for n in t.column_names]
                pending.append(pa.Table.from_arrays(cols, names=t.column_names))
                rows += t.num_rows
                size += pending[-1].nbytes
                bar.update(t.num_rows)
                if rows >= _WRITE_ROWS or size >= _WRITE_BYTES:
                    yield pa.concat_tables(pending)
                    pending, rows, size = [], 0, 0
        if pending:
            yield pa.concat_tables(pending)

    try:
        ds.local().append(tables())
    except BaseException:
        shutil.rmtree(location, ignore_errors=True)
        raise
    return ds
