"""HuggingFace datasets saved on disk (``save_to_disk``), in and out.

Columns become fields as they are, except that a record field may be an ``Image`` or
``Audio`` column: its ``bytes`` are stored (HF keeps them in a ``{bytes, path}`` struct).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import pyarrow as pa

from spacefs.engine.errors import NotFoundError, SchemaError, UserInputError

from .target import (
    ImportResult,
    counted,
    import_target,
    open_dataset,
    output_dir,
    progress,
    write_rows,
)

BATCH_ROWS = 10_000


def load_hf(src: str, split: str | None = None):
    """The ``datasets.Dataset`` saved at ``src`` (one split of a ``DatasetDict``)."""
    import datasets

    if not os.path.isdir(src):
        raise NotFoundError(f"no such folder: {src}")
    try:
        loaded = datasets.load_from_disk(src)
    except (FileNotFoundError, ValueError) as e:
        raise UserInputError(f"{src} is not a HuggingFace dataset saved with save_to_disk: {e}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            if len(loaded) != 1:
                raise UserInputError(f"{src} holds splits {sorted(loaded)}: choose one with --split")
            split = next(iter(loaded))
        if split not in loaded:
            raise NotFoundError(f"{src} has no split {split!r} (splits: {sorted(loaded)})")
        return loaded[split]
    if split is not None:
        raise UserInputError(f"{src} holds a single dataset, not splits; drop --split")
    return loaded


def _record_bytes(col: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """A record column as binary: HF Image/Audio structs give their ``bytes`` child."""
    if pa.types.is_struct(col.type):
        if col.type.get_field_index("bytes") < 0:
            raise SchemaError(f"record field {name!r} is a struct without 'bytes' ({col.type})")
        return pa.chunked_array([c.field("bytes") for c in col.chunks], col.type.field("bytes").type)
    return col


def hf_tables(hf_ds, record_fields: Sequence[str]) -> Iterator[pa.Table]:
    for t in hf_ds.with_format("arrow").iter(batch_size=BATCH_ROWS):
        for name in record_fields:
            if name in t.column_names:
                t = t.set_column(t.column_names.index(name), name, _record_bytes(t.column(name), name))
        yield t.replace_schema_metadata(None)


def import_hf(src: str, location: str, primary_keys: Sequence[str] | None = None,
              record_fields: Sequence[str] | None = None, split: str | None = None,
              mode: str = "append") -> ImportResult:
    """Import a HuggingFace dataset saved with ``save_to_disk`` at ``src`` into the dataset
    at ``location`` (created if absent), in one snapshot."""
    hf_ds = load_hf(src, split)
    existing = os.path.isfile(os.path.join(str(location), "metadata", "dataset.json"))
    records = list(open_dataset(location).record_fields if existing else (record_fields or []))
    missing = [f for f in records if f not in hf_ds.column_names]
    if missing:
        raise SchemaError(f"record field(s) {missing} are not columns of {src} (columns: {hf_ds.column_names})")
    schema = next(hf_tables(hf_ds.select(range(min(1, len(hf_ds)))), records), None)
    schema = schema.schema if schema is not None else _empty_schema(hf_ds, records)
    with import_target(location, schema, primary_keys, records, f"HuggingFace dataset {src}") as (ds, created):
        with progress(len(hf_ds), f"import {os.path.basename(ds.location)}") as bar:
            result = write_rows(ds, counted(hf_tables(hf_ds, records), bar), mode)
    return ImportResult(ds.location, result.snapshot_id, len(hf_ds) if result.snapshot_id is not None else 0, created)


def _empty_schema(hf_ds, records: Sequence[str]) -> pa.Schema:
    schema = hf_ds.features.arrow_schema
    return pa.schema([pa.field(f.name, pa.binary()) if f.name in records else f for f in schema])


def export_hf(location: str, dest: str, version: int | str | None = None,
              fields: Sequence[str] | None = None) -> int:
    """Save a version as a HuggingFace dataset (``save_to_disk`` layout) at ``dest``,
    record bytes inline. Returns the number of rows."""
    ds = open_dataset(location)
    hf_ds = ds.to_huggingface(version=version, fields=list(fields) if fields else None)
    with output_dir(dest) as staging:
        hf_ds.save_to_disk(staging)
    return len(hf_ds)
