"""``ray_dataset`` of a dataset in a bucket: Ray workers read it with the driver's settings."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator

import cloudpickle
import pyarrow as pa
import pytest
import ray

from spacefs import Dataset

from conftest import SCHEMA, rows

# UDFs defined here run in Ray workers, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def source(k: int) -> Iterator[dict]:
    ids = list(range(k * 100, k * 100 + 100))
    yield {"id": ids, "image_name": [f"{i}.jpg" for i in ids], "feature": [f"data{i}".encode() for i in ids]}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield


def test_ray_dataset_reads_a_bucket_with_storage_options_only(s3_bucket, moto_server, monkeypatch):
    # Neither the driver nor the workers have the AWS variables: the options travel.
    options = moto_server.storage_options(monkeypatch)
    uri = s3_bucket + "/ds"
    ds = Dataset.create(uri, SCHEMA, primary_keys=["id"], record_fields=["feature"], storage_options=options)
    ds.local().append(rows(range(3000)))
    ds.local().append(rows(range(3000, 3100), tag="b"))
    rds = Dataset.load(uri, storage_options=options).ray_dataset(fields=["id", "feature"])
    got = pa.Table.from_pylist(rds.take_all()).sort_by("id")
    assert got.column("id").to_pylist() == list(range(3100))
    assert got.column("feature").to_pylist() == rows(range(3000))["feature"] + rows(range(3000, 3100), "b")["feature"]


def test_ray_runner_writes_and_reads_a_bucket(s3_bucket, moto_server, monkeypatch):
    from spacefs import RayOptions

    options = moto_server.storage_options(monkeypatch)
    ds = Dataset.create(s3_bucket + "/ds", SCHEMA, primary_keys=["id"], record_fields=["feature"],
                        storage_options=options)
    r = ds.ray(ray_options=RayOptions(max_parallelism=2))
    r.append_from([functools.partial(source, k) for k in range(3)])
    got = r.read_all().sort_by("id")
    assert got.column("id").to_pylist() == list(range(300))
    assert got.column("feature").to_pylist() == rows(range(300))["feature"]
