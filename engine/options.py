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
    process crashes are safe without it).
    """

    max_index_rows: int = 1_000_000
    record_options: str = ""
    parquet_compression: str = "lz4"
    sync: bool = False


@dataclass(frozen=True)
class RayOptions:
    """Options of the Ray runner: ``max_parallelism`` bounds concurrent Ray tasks."""

    max_parallelism: int = 8
    num_returns: int = 1
