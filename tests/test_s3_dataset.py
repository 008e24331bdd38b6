"""A real spacefs dataset in a bucket: same layout object for object, read by range, copied back."""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spacefs import Dataset
from spacefs.engine.backend import backend_for
from spacefs.engine.chunkcache import ChunkCache
from spacefs.engine.errors import AlreadyExistsError, NotFoundError
from spacefs.engine.log import MetadataLog
from spacefs.engine.objcopy import copy_dataset
from spacefs.engine.objlog import ObjectLog
from spacefs.engine.remote_records import read_refs

from conftest import SCHEMA, rows


@pytest.fixture
def local_ds(tmp_path) -> Dataset:
    ds = Dataset.create(str(tmp_path / "src"), SCHEMA, primary_keys=["id"], record_fields=["feature"])
    r = ds.local()
    r.append(rows(range(0, 50)))
    r.append({**rows(range(50, 60)), "feature": [os.urandom(150_000) for _ in range(10)]})  # span blocks
    r.upsert(rows(range(10, 20), tag="v2"))
    r.delete("id >= 55")
    ds.add_tag("v1")
    return ds


def sorted_rows(table: pa.Table) -> pa.Table:
    return table.sort_by("id")


def test_dataset_in_a_bucket_reads_by_range_and_copies_back(local_ds, s3_bucket, tmp_path):
    uri = s3_bucket + "/datasets/one"
    report = copy_dataset(local_ds.location, uri)
    assert report.files > 0 and report.bytes > 1_500_000
    b = backend_for(uri)

    # The log reads the same from the bucket.
    head = MetadataLog(local_ds.location).latest()
    assert ObjectLog(b).latest().doc == head.doc
    for sid in range(head.last_snapshot_id + 1):
        assert ObjectLog(b).snapshot_entry(sid) == MetadataLog(local_ds.location).snapshot_entry(sid)

    # The head's index files, read from the bucket, and their records read by range.
    want = sorted_rows(local_ds.local().read_all())
    cache = ChunkCache(str(tmp_path / "cache"), cache_size=64 << 20, chunk_size=256 << 10)
    got_ids, got_features = [], []
    for full in local_ds.index_files():
        rel = os.path.relpath(full, local_ds.location).replace(os.sep, "/")
        index = pq.read_table(io.BytesIO(b.read(rel)))
        values = read_refs(b, index.column("feature").to_pylist(), cache)
        got_ids += index.column("id").to_pylist()
        got_features += values
    order = sorted(range(len(got_ids)), key=got_ids.__getitem__)
    assert [got_ids[i] for i in order] == want.column("id").to_pylist()
    assert [got_features[i] for i in order] == want.column("feature").to_pylist()

    # Copied back to disk, it is a dataset the engine opens, reads and writes.
    back = str(tmp_path / "back")
    copy_dataset(uri, back)
    ds2 = Dataset.load(back)
    assert sorted_rows(ds2.local().read_all()).equals(want)
    assert ds2.versions().equals(local_ds.versions())
    assert sorted_rows(ds2.local().read_all(version="v1")).equals(want)
    ds2.local().append(rows([1000]))
    assert ds2.num_rows() == want.num_rows + 1


def test_copy_refuses_to_mix_datasets(local_ds, s3_bucket, tmp_path):
    uri = s3_bucket + "/ds"
    copy_dataset(local_ds.location, uri)
    with pytest.raises(AlreadyExistsError, match="already holds a dataset log"):
        copy_dataset(local_ds.location, uri)
    # Finishing an interrupted copy of the same dataset skips what is there.
    assert copy_dataset(local_ds.location, uri, overwrite_log=True).files == 0
    with pytest.raises(NotFoundError, match="holds no dataset"):
        copy_dataset(str(tmp_path / "nothing"), s3_bucket + "/other")


def test_a_dataset_copied_to_a_bucket_is_read_and_written_there(local_ds, s3_bucket):
    """Same layout object for object: the engine opens the uploaded dataset in place."""
    uri = s3_bucket + "/ds"
    copy_dataset(local_ds.location, uri)
    remote = Dataset.load(uri)
    want = sorted_rows(local_ds.local().read_all())
    assert sorted_rows(remote.local().read_all()).equals(want)
    assert sorted_rows(remote.local().read_all(version="v1")).equals(want)
    assert remote.versions().equals(local_ds.versions())
    remote.local().append(rows([1000]))
    assert remote.num_rows() == want.num_rows + 1
