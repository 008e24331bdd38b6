"""Ingestion: index files pruned by row-group statistics, partial upserts that keep
stored records by reference."""

from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from spacefs import FileOptions

from conftest import rows


def test_index_files_have_small_row_groups_with_key_statistics(ds):
    r = ds.local(FileOptions(index_row_group_rows=100))
    r.append(rows(range(10_000)))
    (path,) = ds.index_files()
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 100
    stats = meta.row_group(37).column(0).statistics
    assert (stats.min, stats.max) == (3700, 3799)
    # A 1% key range touches 1% of the row groups, and reads return exactly it.
    expr = (pc.field("id") >= 5000) & (pc.field("id") < 5100)
    frag = next(iter(pds.dataset(path, format="parquet").get_fragments()))
    assert len(frag.split_by_row_group(filter=expr)) == 1
    got = r.read_all(filter_=expr)
    assert got.column("id").to_pylist() == list(range(5000, 5100))
    assert got.column("feature").to_pylist() == [f"data{i}".encode() for i in range(5000, 5100)]


def test_default_row_groups(ds):
    ds.local().append(rows(range(20_000)))
    (path,) = ds.index_files()
    assert pq.ParquetFile(path).metadata.num_row_groups == 3  # 8,192 rows each


def test_rewrites_keep_row_groups(ds):
    r = ds.local(FileOptions(index_row_group_rows=1000))
    r.append(rows(range(5000)))
    r.delete(pc.field("id") == 3)
    (path,) = ds.index_files()
    assert pq.ParquetFile(path).metadata.num_row_groups == 5
    assert sorted(r.read_all(fields=["id"]).column("id").to_pylist()) == [i for i in range(5000) if i != 3]

