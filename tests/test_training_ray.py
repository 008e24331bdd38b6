"""``ds.ray_dataset(version=...)`` as a training input: record bytes stream through Ray
tasks at a pinned version, and ``map_batches`` runs on them (a real local Ray, 2 CPUs)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import ray

from spacefs import Dataset

SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("blob", pa.binary())])


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield


def blob(i: int, tag: bytes = b"") -> bytes:
    return b"%d:" % i + tag + bytes(i % 97)


def test_ray_dataset_streams_records_at_a_version(tmp_path):
    ds = Dataset.create(str(tmp_path / "ds"), SCHEMA, ["id"], ["blob"])
    ds.local().append({"id": list(range(3000)), "label": ["a"] * 3000, "blob": [blob(i) for i in range(3000)]})
    ds.add_tag("v1")
    ds.local().upsert({"id": list(range(10)), "label": ["b"] * 10, "blob": [blob(i, b"new") for i in range(10)]})
    ds.local().delete(pc.field("id") >= 2000)

    old = ds.ray_dataset(version="v1", fields=["id", "blob"])
    rows = sorted(old.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(3000))
    assert all(r["blob"] == blob(r["id"]) for r in rows)

    def sizes(batch: pa.Table) -> pa.Table:
        lengths = pc.binary_length(batch.column("blob"))
        return pa.table({"id": batch.column("id"), "n": lengths, "new": pc.match_substring(batch.column("blob"), "new")})

    head = ds.ray_dataset(fields=["id", "blob"]).map_batches(sizes, batch_format="pyarrow", batch_size=256)
    out = sorted(head.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in out] == list(range(2000))
    assert [r["n"] for r in out] == [len(blob(i, b"new" if i < 10 else b"")) for i in range(2000)]
    assert sum(r["new"] for r in out) == 10
