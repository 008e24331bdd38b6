"""Options of runners and file writers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileOptions:
    """How data files are written.

    ``max_index_rows`` bounds the rows of one index Parquet file (and of the ArrayRecord
    files written beside it). ``record_options`` overrides the ArrayRecord writer options;
    the default (uncompressed chunks of about 4 MiB) lets records be read with one
    ``pread``. ``sync`` fsyncs data files before commit (durability against power loss;
    process crashes are safe without it). ``index_row_group_rows`` bounds the rows of
    one Parquet row group of an index file: readers skip row groups by their min/max
    statistics, so a narrow key range reads a few groups instead of the whole file
    (8,192 rows measured as cheap to write and to scan as one big group).
    ``merge_small_files``: a write's commit also merges small files earlier writes left
    (``engine/autocompact.py``), so many small writes leave O(log n) files, not n.
    """

    max_index_rows: int = 1_000_000
    record_options: str = ""
    parquet_compression: str = "lz4"
    sync: bool = False
    index_row_group_rows: int = 8192
    merge_small_files: bool = True


@dataclass(frozen=True)
class RayOptions:
    """Options of the Ray runner: ``max_parallelism`` bounds concurrent Ray tasks."""

    max_parallelism: int = 8
    num_returns: int = 1
