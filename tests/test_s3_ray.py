"""``ray_dataset`` of a dataset in a bucket: Ray workers read it with the driver's settings."""

from __future__ import annotations

import pyarrow as pa
import pytest
import ray

from spacefs import Dataset

from conftest import SCHEMA, rows


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield


def test_ray_dataset_reads_a_bucket_with_storage_options_only(s3_bucket, moto_server, monkeypatch):
    # Neither the driver nor the workers have the AWS variables: the options travel.
    for key in moto_server.env:
        monkeypatch.delenv(key)
    options = {"endpoint": moto_server.endpoint, "aws_access_key_id": "testing",
               "aws_secret_access_key": "testing", "region": "us-east-1"}
    uri = s3_bucket + "/ds"
    ds = Dataset.create(uri, SCHEMA, primary_keys=["id"], record_fields=["feature"], storage_options=options)
    ds.local().append(rows(range(3000)))
    ds.local().append(rows(range(3000, 3100), tag="b"))
    rds = Dataset.load(uri, storage_options=options).ray_dataset(fields=["id", "feature"])
    got = pa.Table.from_pylist(rds.take_all()).sort_by("id")
    assert got.column("id").to_pylist() == list(range(3100))
    assert got.column("feature").to_pylist() == rows(range(3000))["feature"] + rows(range(3000, 3100), "b")["feature"]
