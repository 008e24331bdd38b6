"""Writes: append, insert, upsert, delete, append_from/parquet/array_record."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from spacefs import Dataset, FileOptions, JobResult, errors

from conftest import SCHEMA, rows


def _ids(ds, version=None):
    return sorted(ds.local().read_all(fields=["id"], version=version).column("id").to_pylist())


def test_append_read_roundtrip(ds):
    r = ds.local()
    res = r.append(rows(range(10)))
    assert res.state == JobResult.State.SUCCEEDED and res.snapshot_id == 1
    assert res.storage_statistics_update["rows"] == 10
    t = r.read_all()
    assert t.schema == SCHEMA
    assert t.to_pydict() == rows(range(10))


def test_append_accepts_tables_batches_and_iterables(ds):
    r = ds.local()
    r.append(pa.Table.from_pydict(rows([1, 2]), schema=SCHEMA))
    r.append(pa.RecordBatch.from_pydict(rows([3]), schema=SCHEMA))
    r.append(iter([rows([4]), pa.Table.from_pydict(rows([5]), schema=SCHEMA)]))
    assert _ids(ds) == [1, 2, 3, 4, 5]
    assert ds.versions().column("snapshot_id")[0].as_py() == 3


def test_empty_write_is_skipped(ds):
    r = ds.local()
    assert r.append(rows([])).state == JobResult.State.SKIPPED
    r.append(rows([1]))
    assert r.delete(pc.field("id") == 99).state == JobResult.State.SKIPPED
    assert r.upsert(rows([])).state == JobResult.State.SKIPPED
    assert ds.storage.head().last_snapshot_id == 1


def test_insert_refuses_existing_and_duplicate_keys(ds):
    r = ds.local()
    r.insert(rows(range(5)))
    before = ds.storage.head().seq
    with pytest.raises(errors.PrimaryKeyExistsError, match="3"):
        r.insert(rows([3, 7]))
    with pytest.raises(errors.PrimaryKeyExistsError, match="repeats"):
        r.insert(rows([8, 8]))
    assert ds.storage.head().seq == before
    assert _ids(ds) == list(range(5))
    # Nothing written by the failed attempts stays behind.
    assert len(list((ds.storage.location + "/data/index") and __import__("os").listdir(ds.storage.location + "/data/index"))) == 1


def test_upsert_replaces_every_row_with_key(ds):
    r = ds.local()
    r.append(rows([1, 2, 3]))
    r.append(rows([2]))  # append does no key check: key 2 twice
    r.upsert(rows([2, 4], tag="new"))
    t = r.read_all().sort_by("id").to_pydict()
    assert t["id"] == [1, 2, 3, 4]
    assert t["image_name"] == ["1.jpg", "2new.jpg", "3.jpg", "4new.jpg"]
    assert t["feature"][1] == b"data2new"


def test_upsert_is_linear_in_keys(tmp_path):
    ds = Dataset.create(str(tmp_path / "big"), SCHEMA, ["id"], ["feature"])
    r = ds.local()
    r.append(rows(range(100_000)))
    start = time.perf_counter()
    r.upsert(rows(list(range(0, 100_000, 100)), tag="u"))
    elapsed = time.perf_counter() - start
    assert ds.num_rows() == 100_000
    # A generous bound: the original took minutes for 40 keys; this is about 1,000.
    assert elapsed < 10, elapsed


def test_delete_rewrites_only_touched_files(ds):
    r = ds.local(FileOptions(merge_small_files=False))  # three files, whatever their size
    for i in range(3):
        r.append(rows(range(i * 10, i * 10 + 10)))
    files_before = set(ds.index_files())
    r.delete((pc.field("id") >= 10) & (pc.field("id") < 20))  # exactly one whole file
    assert _ids(ds) == list(range(10)) + list(range(20, 30))
    r.delete("id = 25")
    assert _ids(ds) == list(range(10)) + [20, 21, 22, 23, 24, 26, 27, 28, 29]
    files_after = set(ds.index_files())
    assert len(files_before & files_after) == 1  # the first file was never touched
    assert _ids(ds, version=3) == list(range(30))  # old snapshots unchanged


def test_delete_needs_a_valid_filter(ds):
    r = ds.local()
    r.append(rows([1]))
    with pytest.raises(errors.UserInputError):
        r.delete(None)
    with pytest.raises(errors.FilterError):
        r.delete("id = = 1")
    with pytest.raises(errors.FilterError):
        r.delete(pc.field("nope") == 1)
    assert _ids(ds) == [1]


def test_schema_mismatch_is_refused_cleanly(ds):
    r = ds.local()
    with pytest.raises(errors.SchemaError, match="unknown fields"):
        r.append({**rows([1]), "extra": [1]})
    with pytest.raises(errors.SchemaError, match="missing"):
        r.append({"id": [1]})
    with pytest.raises(errors.SchemaError, match="id"):
        r.append({"id": ["x"], "image_name": ["a"], "feature": [b"a"]})
    assert ds.storage.head().last_snapshot_id == 0


def test_append_from_parallel_sources_one_snapshot(ds):
    def source(k):
        def gen():
            for j in range(3):
                yield rows(range(k * 100 + j * 10, k * 100 + j * 10 + 10))
        return gen

    res = ds.local().append_from([source(k) for k in range(4)])
    assert res.snapshot_id == 1
    assert len(_ids(ds)) == 120


def test_append_from_failure_leaves_nothing(ds):
    def bad():
        yield rows([1])
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        ds.local().append_from([bad])
    assert ds.storage.head().last_snapshot_id == 0
    import os

    assert os.listdir(ds.storage.location + "/data/index") == []


def test_append_parquet_and_diff(ds, tmp_path):
    for k in range(2):
        pq.write_table(pa.Table.from_pydict(rows(range(k * 5, k * 5 + 5)), schema=SCHEMA), tmp_path / f"in{k}.parquet")
    ds.local().append_parquet(str(tmp_path / "in*.parquet"))
    assert _ids(ds) == list(range(10))
    changes = list(ds.local().diff(0, 1))
    assert sum(c.data.num_rows for c in changes) == 10
    with pytest.raises(errors.NotFoundError):
        ds.local().append_parquet(str(tmp_path / "nothing*.parquet"))


def test_append_array_record(tmp_path):
    ds = Dataset.create(str(tmp_path / "ar"), SCHEMA, ["id"], ["feature"])
    w = ArrayRecordWriter(str(tmp_path / "in.array_record"), "group_size:1")
    for i in range(20):
        w.write(f"{i}:payload".encode())
    w.close()

    def index_fn(record: bytes) -> dict:
        i = int(record.split(b":")[0])
        return {"id": i, "image_name": f"{i}.jpg"}

    ds.local().append_array_record(str(tmp_path / "*.array_record"), index_fn)
    t = ds.local().read_all().sort_by("id")
    assert t.column("feature").to_pylist() == [f"{i}:payload".encode() for i in range(20)]


def test_large_and_null_records(tmp_path):
    schema = pa.schema([("k", pa.string()), ("blob", pa.binary())])
    ds = Dataset.create(str(tmp_path / "n"), schema, ["k"], ["blob"])
    big = bytes(range(256)) * 5000  # 1.28 MB, crosses many 64 KiB blocks
    ds.local().append({"k": ["a", "b", "c"], "blob": [big, None, b""]})
    t = ds.local().read_all().sort_by("k")
    assert t.column("blob").to_pylist() == [big, None, b""]


def test_replaced_records_leave_the_file_list(ds):
    r = ds.local()
    r.append(rows(range(10)))
    for i in range(40):
        r.upsert(rows([100], tag=f"v{i}"))
    assert ds.storage.record_manifest().num_rows == 2  # the first append's file + the newest
    live = ds.storage.live_files(ds.snapshot_id())
    assert live.num_rows == 4  # two index files, two record files: history is not in the list
    assert ds.local().read_all(version=5, filter_="id = 100").column("feature").to_pylist() == [b"data100v3"]
    assert ds.storage.snapshot(ds.snapshot_id())["stats"]["record_bytes"] == 2 * 131072  # two small ArrayRecord files


def test_index_integers_are_delta_encoded_and_read_back_exactly(ds):
    """Keys and record references are stored delta-encoded (small files, cheap to write
    and read); scattered, negative and huge keys, rewrites and key-range reads all come
    back exactly."""
    ids = [5, -3, 2**62, 7, -(2**63), 0, 6] + list(range(100, 20_100))
    ds.local().append(rows(ids))
    ds.local().delete(pc.field("id").isin([7, 150]))
    ds.local().upsert(rows([5, 30_000], tag="u"))
    want = sorted(set(ids) - {7, 150} | {30_000})
    assert _ids(ds) == want
    got = ds.local().read_all(filter_=(pc.field("id") >= 1000) & (pc.field("id") < 1003))
    assert got.to_pydict() == rows([1000, 1001, 1002])
    assert ds.local().read_all(filter_=pc.field("id") == 5).to_pydict() == rows([5], tag="u")
    for entry in ds.storage.index_entries(ds.storage.resolve(None)):
        meta = pq.ParquetFile(ds.storage.full_path(entry["path"])).metadata
        cols = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).encodings
                for i in range(meta.num_columns)}
        for name in ("id", "feature.pos", "feature.size", "feature.offset"):
            assert "DELTA_BINARY_PACKED" in cols[name], (name, cols[name])
