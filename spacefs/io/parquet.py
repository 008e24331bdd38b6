"""Parquet in and out: files whose columns become a dataset's fields, and back."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

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

READ_BATCH_ROWS = 65_536


def parquet_files(src: str | Sequence[str]) -> list[str]:
    """A file, a directory (every ``*.parquet`` under it) or a glob pattern, sorted."""
    srcs = [src] if isinstance(src, (str, os.PathLike)) else list(src)
    files: list[str] = []
    for s in map(str, srcs):
        if os.path.isdir(s):
            found = sorted(glob.glob(os.path.join(s, "**", "*.parquet"), recursive=True))
            if not found:
                raise NotFoundError(f"no *.parquet files under {s}")
        elif os.path.isfile(s):
            found = [s]
        else:
            found = sorted(glob.glob(s, recursive=True))
            if not found:
                raise NotFoundError(f"no such file or directory: {s}")
        files += found
    return files


def source_schema(files: Sequence[str]) -> pa.Schema:
    """The one schema all files share (metadata dropped); a clear error if they differ."""
    first: pa.Schema | None = None
    for f in files:
        try:
            s = pq.read_schema(f).remove_metadata()
        except (pa.ArrowInvalid, OSError) as e:
            raise UserInputError(f"{f} is not a readable Parquet file: {e}") from None
        if first is None:
            first = s
        elif not s.equals(first):
            raise SchemaError(f"Parquet files disagree on the schema: {files[0]} has {first.names} "
                              f"({first.types}), {f} has {s.names} ({s.types})")
    assert first is not None
    return first


def import_parquet(src: str | Sequence[str], location: str, primary_keys: Sequence[str] | None = None,
                   record_fields: Sequence[str] | None = None, mode: str = "insert", *, branch: str | None = None,
                   message: str | None = None) -> ImportResult:
    """Import Parquet files into the dataset at ``location`` (created if absent), in one snapshot.

    ``mode``: ``insert`` (the default) refuses keys already stored, so importing the
    same files twice fails instead of doubling the rows; ``upsert`` replaces them;
    ``append`` adds rows without a key check. ``branch``: the branch written (default
    main); ``message``: a note kept with the snapshot.

    Example::

        import_parquet("/data/train/", "/ds/train", primary_keys=["id"], record_fields=["image"])
    """
    files = parquet_files(src)
    schema = source_schema(files)
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)

    with import_target(location, schema, primary_keys, record_fields, f"Parquet {files[0]}",
                       omit_records=mode == "upsert") as (ds, created):
        def tables() -> Iterator[pa.Table]:
            for f in files:
                try:
                    for batch in pq.ParquetFile(f).iter_batches(batch_size=READ_BATCH_ROWS):
                        yield pa.Table.from_batches([batch]).replace_schema_metadata(None)
                except (pa.ArrowInvalid, OSError) as e:
                    raise UserInputError(f"cannot read Parquet file {f}: {e}") from None

        with progress(total, f"import {os.path.basename(ds.location)}") as bar:
            result = write_rows(ds, counted(tables(), bar), mode, branch, message)
    return ImportResult(ds.location, result.snapshot_id, total if result.snapshot_id is not None else 0, created)


def export_parquet(location: str, dest: str, version: int | str | None = None, fields: Sequence[str] | None = None,
                   rows_per_file: int = 1_000_000) -> list[str]:
    """Write a version as Parquet files ``dest/part-NNNNN.parquet``, record bytes inline.

    Returns the files written. ``dest`` must not exist (or be empty).
    """
    ds = open_dataset(location)
    runner = ds.local()
    sid = ds.snapshot_id(version)
    total = ds.num_rows(sid)
    out: list[str] = []
    with output_dir(dest) as staging, progress(total, f"export {ds.name}") as bar:
        writer: pq.ParquetWriter | None = None
        in_file = 0
        for t in runner.read(version=sid, fields=fields, batch_size=min(rows_per_file, READ_BATCH_ROWS)):
            if writer is None or in_file >= rows_per_file:
                if writer is not None:
                    writer.close()
                name = f"part-{len(out):05d}.parquet"
                out.append(name)
                writer = pq.ParquetWriter(os.path.join(staging, name), t.schema, compression="zstd")
                in_file = 0
            writer.write_table(t)
            in_file += t.num_rows
            bar.update(t.num_rows)
        if writer is None:  # an empty version still exports its schema
            out.append("part-00000.parquet")
            names = fields or ds.schema.names
            pq.write_table(pa.schema([ds.schema.field(n) for n in names]).empty_table(), os.path.join(staging, out[0]))
        else:
            writer.close()
    return [os.path.join(os.path.abspath(dest), n) for n in out]
