"""Every write refuses null primary-key values: a clear error naming the key field, and
nothing of the write is left (no snapshot, no data file)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from spacefs import Dataset, errors
from spacefs.io import import_parquet

from conftest import SCHEMA, rows


def _with_null_id(ids) -> dict:
    r = rows([i if i is not None else 0 for i in ids])
    r["id"] = list(ids)
    return r


def _data_files(ds: Dataset) -> list[str]:
    out = []
    for d, _, files in os.walk(os.path.join(ds.location, "data")):
        out += [os.path.join(d, f) for f in files]
    return out


def _nothing_written(ds: Dataset, seq: int, ids: list[int]) -> None:
    assert ds.storage.log.head_seq() == seq
    assert sorted(ds.local().read_all(fields=["id"]).column("id").to_pylist()) == ids


@pytest.fixture
def stored(ds):
    ds.local().append(rows([1, 2]))
    return ds, ds.storage.log.head_seq(), set(_data_files(ds))


def _refused(ds, seq, files, call) -> None:
    with pytest.raises(errors.SchemaError, match="primary key field 'id' is null in 1 row"):
        call()
    _nothing_written(ds, seq, [1, 2])
    assert set(_data_files(ds)) == files


@pytest.mark.parametrize("mode", ["append", "insert", "upsert"])
def test_append_insert_upsert_refuse_null_keys(stored, mode):
    ds, seq, files = stored
    _refused(ds, seq, files, lambda: getattr(ds.local(), mode)(_with_null_id([3, None])))
    table = pa.Table.from_pydict(_with_null_id([None, 4]), schema=SCHEMA)
    _refused(ds, seq, files, lambda: getattr(ds.local(), mode)(table))


def test_a_null_key_in_a_later_batch_removes_the_earlier_batches(stored):
    ds, seq, files = stored
    batches = [rows([10, 11]), rows([12]), _with_null_id([None])]
    _refused(ds, seq, files, lambda: ds.local().append(iter(batches)))


def test_append_from_refuses_null_keys(stored):
    ds, seq, files = stored

    def good():
        yield rows([20, 21])

    def bad():
        yield rows([30])
        yield _with_null_id([None])

    _refused(ds, seq, files, lambda: ds.local().append_from([good, bad]))


def test_append_parquet_refuses_null_keys(stored, tmp_path):
    ds, seq, files = stored
    pq.write_table(pa.Table.from_pydict(rows([40]), schema=SCHEMA), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pydict(_with_null_id([None]), schema=SCHEMA), tmp_path / "b.parquet")
    _refused(ds, seq, files, lambda: ds.local().append_parquet(str(tmp_path / "*.parquet")))


def test_append_array_record_refuses_null_keys(stored, tmp_path):
    ds, seq, files = stored
    w = ArrayRecordWriter(str(tmp_path / "in.array_record"), "group_size:1")
    for payload in (b"50", b"none"):
        w.write(payload)
    w.close()

    def index_fn(record: bytes) -> dict:
        return {"id": None if record == b"none" else int(record), "image_name": "x.jpg"}

    _refused(ds, seq, files, lambda: ds.local().append_array_record(str(tmp_path / "*.array_record"), index_fn))


def test_composite_keys_name_the_null_field(tmp_path):
    schema = pa.schema([("shard", pa.string()), ("id", pa.int64()), ("v", pa.binary())])
    ds = Dataset.create(str(tmp_path / "c"), schema, ["shard", "id"], ["v"])
    with pytest.raises(errors.SchemaError, match="primary key field 'shard'"):
        ds.local().upsert({"shard": ["a", None], "id": [1, 2], "v": [b"x", b"y"]})
    assert ds.storage.head().last_snapshot_id == 0 and _data_files(ds) == []


def test_imports_refuse_null_keys(tmp_path):
    src = tmp_path / "src.parquet"
    pq.write_table(pa.table({"id": pa.array([1, None], pa.int64()), "name": ["a", "b"]}), src)
    # Into a new dataset: it is removed again.
    with pytest.raises(errors.SchemaError, match="primary key field 'id'"):
        import_parquet(str(src), str(tmp_path / "new"), primary_keys=["id"])
    assert not os.path.exists(tmp_path / "new")
    # Into an existing one: unchanged.
    ds = Dataset.create(str(tmp_path / "old"), pa.schema([("id", pa.int64()), ("name", pa.string())]), ["id"], [])
    with pytest.raises(errors.SchemaError, match="primary key field 'id'"):
        import_parquet(str(src), ds.location, mode="upsert")
    assert ds.storage.head().last_snapshot_id == 0 and _data_files(ds) == []
