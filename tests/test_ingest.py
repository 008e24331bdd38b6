"""Ingestion: index files pruned by row-group statistics, partial upserts that keep
stored records by reference."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from spacefs import Dataset, FileOptions, JobResult, errors

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



def _record_files(ds) -> set[str]:
    root = os.path.join(ds.location, "data", "records")
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


def _all_files(ds) -> set[str]:
    return {os.path.join(d, f) for d, _, fs in os.walk(ds.location) for f in fs}


def test_partial_upsert_keeps_records_by_reference(ds):
    r = ds.local()
    r.append(rows(range(10)))
    files_before = _record_files(ds)
    (old_index,) = ds.index_files()
    old_refs = pq.read_table(old_index).column("feature").to_pylist()
    res = r.upsert({"id": [3, 7], "image_name": ["relabelled-3", "relabelled-7"]})
    assert res.state == JobResult.State.SUCCEEDED
    assert _record_files(ds) == files_before  # no record bytes written or copied
    got = r.read_all().sort_by("id").to_pydict()
    want = rows(range(10))
    want["image_name"][3], want["image_name"][7] = "relabelled-3", "relabelled-7"
    assert got == want
    refs = r.read_all(reference_read=True, filter_=pc.field("id").isin([3, 7])).sort_by("id").column("feature").to_pylist()
    assert refs == [old_refs[3], old_refs[7]]
    # The record file stays listed while the relabelled rows reference it, even once every
    # original row is gone.
    r.delete(pc.field("id") != 3)
    live = ds.storage.live_files(ds.storage.head().branches["main"]).column("path").to_pylist()
    assert old_refs[3]["file"] in live
    assert r.read_all().to_pydict() == {"id": [3], "image_name": ["relabelled-3"], "feature": [b"data3"]}
    # Older versions still read their own rows.
    assert r.read_all(version=1).sort_by("id").to_pydict() == rows(range(10))


def test_partial_upsert_with_row_dicts_and_batches(ds):
    r = ds.local()
    r.append(rows(range(5)))
    r.upsert([{"id": 1, "image_name": "a"}, {"id": 2, "image_name": "b"}])
    r.upsert(iter([{"id": [3], "image_name": ["c"]}, pa.table({"id": [4], "image_name": ["d"]})]))
    got = r.read_all().sort_by("id").to_pydict()
    assert got["image_name"] == ["0.jpg", "a", "b", "c", "d"]
    assert got["feature"] == [f"data{i}".encode() for i in range(5)]


def test_partial_upsert_of_new_keys_is_refused_and_writes_nothing(ds):
    r = ds.local()
    r.append(rows(range(5)))
    before_files, before_seq = _all_files(ds), ds.storage.head().seq
    with pytest.raises(errors.SchemaError, match=r"\['feature'\].*2 key\(s\) are not stored.*'id': 8"):
        r.upsert({"id": [1, 8, 9], "image_name": ["x", "y", "z"]})
    assert ds.storage.head().seq == before_seq
    assert _all_files(ds) == before_files
    assert r.read_all().sort_by("id").to_pydict() == rows(range(5))


def test_partial_upsert_rules(ds):
    r = ds.local()
    r.append(rows(range(3)))
    with pytest.raises(errors.SchemaError, match="missing fields"):
        r.upsert({"id": [1], "feature": [b"x"]})  # index fields cannot be left out
    with pytest.raises(errors.SchemaError, match="missing fields"):
        r.insert({"id": [7], "image_name": ["x"]})
    with pytest.raises(errors.SchemaError, match="missing fields"):
        r.append({"id": [7], "image_name": ["x"]})
    with pytest.raises(errors.SchemaError, match="same fields"):
        r.upsert(iter([{"id": [1], "image_name": ["a"]}, rows([2])]))
    with pytest.raises(errors.PrimaryKeyExistsError):
        r.upsert({"id": [1, 1], "image_name": ["a", "b"]})
    assert r.read_all().sort_by("id").to_pydict() == rows(range(3))


def test_partial_upsert_with_some_record_fields(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("label", pa.string()), ("image", pa.binary()), ("mask", pa.binary())])
    ds = Dataset.create(str(tmp_path / "two"), schema, ["id"], ["image", "mask"])
    r = ds.local()
    r.append({"id": [1, 2], "label": ["a", "b"], "image": [b"i1", b"i2"], "mask": [b"m1", None]})
    r.upsert({"id": [2, 1], "label": ["B", "A"], "mask": [b"M2", b"M1"]})
    assert r.read_all().sort_by("id").to_pydict() == {
        "id": [1, 2], "label": ["A", "B"], "image": [b"i1", b"i2"], "mask": [b"M1", b"M2"]}
    r.upsert({"id": [1], "label": ["AA"], "image": [None]})
    assert r.read_all().sort_by("id").to_pydict() == {
        "id": [1, 2], "label": ["AA", "B"], "image": [None, b"i2"], "mask": [b"M1", b"M2"]}
    changes = list(r.diff(2, 3))
    assert [c.change_type.name for c in changes] == ["DELETE", "ADD"]
    assert changes[1].data.to_pydict() == {"id": [1], "label": ["AA"], "image": [None], "mask": [b"M1"]}


def test_partial_upsert_of_a_key_stored_twice(ds):
    r = ds.local()
    r.append(rows(range(3)))
    r.append(rows([1], tag="-again"))  # append does not check keys
    r.upsert({"id": [1], "image_name": ["one"]})
    got = r.read_all().sort_by("id").to_pydict()
    assert got["id"] == [0, 1, 2] and got["image_name"] == ["0.jpg", "one", "2.jpg"]
    assert got["feature"][1] in (b"data1", b"data1-again")
