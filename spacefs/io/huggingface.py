"""HuggingFace datasets saved on disk (``save_to_disk``), in and out.

The conversion itself is the engine's (``spacefs.engine.hf``): columns become fields as
they are, an ``Image`` or ``Audio`` record field stores its bytes, and the features are
kept so an export decodes images as images again.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pyarrow as pa

from spacefs.engine import Dataset
from spacefs.engine.errors import NotFoundError, SchemaError, UserInputError
from spacefs.engine.hf import _record_bytes as record_bytes

from .target import (
    ImportResult,
    check_mode,
    counted,
    import_target,
    is_dataset,
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


def hf_tables(hf_ds, record_fields: Sequence[str]) -> Iterator[pa.Table]:
    """The rows as Arrow tables, record columns as bytes (Image/Audio structs unpacked)."""
    for t in hf_ds.with_format("arrow").iter(batch_size=BATCH_ROWS):
        cols = [record_bytes(t.column(n)) if n in record_fields else t.column(n) for n in t.column_names]
        yield pa.Table.from_arrays(cols, names=t.column_names)


def import_hf(src: str, location: str, primary_keys: Sequence[str] | None = None,
              record_fields: Sequence[str] | None = None, split: str | None = None,
              mode: str = "insert", *, branch: str | None = None, message: str | None = None) -> ImportResult:
    """Import a HuggingFace dataset saved with ``save_to_disk`` at ``src`` into the dataset
    at ``location`` in one snapshot.

    A new dataset is made by ``Dataset.from_huggingface`` (features kept, so an export
    gives images back as images); ``record_fields`` then defaults to the Image, Audio
    and binary columns. An existing dataset takes the rows if the columns match.
    ``mode``, ``branch`` and ``message`` are as for ``import_parquet`` (default
    ``insert``: a repeated import fails instead of doubling the rows).
    """
    hf_ds = load_hf(src, split)
    if not is_dataset(location):
        if not primary_keys:
            raise UserInputError(f"{location} is not a dataset yet: creating it needs a primary key (--primary-key)")
        check_mode(mode)
        if branch not in (None, "main"):
            raise UserInputError(f"{location} is not a dataset yet: a new dataset has only the branch main")
        ds = Dataset.from_huggingface(hf_ds, location, list(primary_keys), list(record_fields) if record_fields else None)
        sid = ds.snapshot_id()
        return ImportResult(ds.location, sid or None, len(hf_ds) if sid else 0, True)
    records = open_dataset(location).record_fields
    missing = [f for f in records if f not in hf_ds.column_names]
    if missing:
        raise SchemaError(f"schema clash: record field(s) {missing} are not columns of {src} (columns: {hf_ds.column_names})")
    schema = pa.schema([pa.field(f.name, pa.binary()) if f.name in records else f for f in hf_ds.features.arrow_schema])
    with import_target(location, schema, primary_keys, records, f"HuggingFace dataset {src}") as (ds, created):
        with progress(len(hf_ds), f"import {os.path.basename(ds.location)}") as bar:
            result = write_rows(ds, counted(hf_tables(hf_ds, records), bar), mode, branch, message)
    return ImportResult(ds.location, result.snapshot_id, len(hf_ds) if result.snapshot_id is not None else 0, created)


@contextmanager
def _hf_bars(enabled: bool) -> Iterator[None]:
    """HuggingFace's own progress bars only on a terminal, like ours."""
    from datasets.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def export_hf(location: str, dest: str, version: int | str | None = None,
              fields: Sequence[str] | None = None) -> int:
    """Save a version as a HuggingFace dataset (``save_to_disk`` layout) at ``dest``,
    record bytes inline. Returns the number of rows."""
    ds = open_dataset(location)
    with output_dir(dest) as staging:
        # Rows go through a memory-mapped Arrow file, so versions larger than RAM export too.
        cache = tempfile.mkdtemp(prefix=".hf-cache-", dir=os.path.dirname(staging))
        try:
            hf_ds = ds.to_huggingface(version=version, fields=list(fields) if fields else None, cache_dir=cache)
            with _hf_bars(sys.stderr.isatty()):
                hf_ds.save_to_disk(staging)
            n = len(hf_ds)
            del hf_ds
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return n
