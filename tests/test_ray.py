"""The Ray runner, Ray datasets, and views and MVs on Ray: a real local Ray, 2 CPUs."""

from __future__ import annotations

import os
import sys

import cloudpickle
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import ray

from spacefs import Dataset, JobResult, RayOptions, errors
from spacefs.engine.ray_runner import RayRunner
from spacefs.engine.ray_source import _datasource_class

# UDFs defined here run in Ray workers, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("blob", pa.binary())])
OPTS = RayOptions(max_parallelism=2)


@pytest.fixture(scope="session", autouse=True)
def local_ray():
    """One local Ray for the session; ``ray.init(address=...)`` would join a cluster."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield


def rows(ids, tag=""):
    ids = list(ids)
    return {"id": ids, "label": [f"l{i % 3}" for i in ids], "blob": [f"b{i}{tag}".encode() for i in ids]}


@pytest.fixture
def ds(tmp_path):
    d = Dataset.create(str(tmp_path / "ds"), SCHEMA, ["id"], ["blob"])
    d.local().append(rows(range(40_000)))
    return d


def sort(t: pa.Table) -> pa.Table:
    return t.sort_by([(n, "ascending") for n in ("id", "label") if n in t.column_names])


def test_ray_runner_offers_every_write(tmp_path):
    d = Dataset.create(str(tmp_path / "w"), SCHEMA, ["id"], ["blob"])
    r = d.ray(ray_options=OPTS)
    assert isinstance(r, RayRunner)
    assert r.append(rows(range(10))).state == JobResult.State.SUCCEEDED
    r.insert(rows([10, 11]))
    with pytest.raises(errors.PrimaryKeyExistsError):
        r.insert(rows([1]))
    r.upsert(rows([2, 12], tag="u"))
    r.delete(pc.field("id") < 2)
    pq_file = tmp_path / "in.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table(rows([50, 51])), pq_file)
    r.append_parquet(str(pq_file))
    t = sort(r.read_all())
    assert t.column("id").to_pylist() == [2, *range(3, 12), 12, 50, 51]
    assert t.column("blob")[0].as_py() == b"b2u"
    assert t.equals(sort(d.local().read_all()))


def _source(start: int):
    def gen():
        for s in range(start, start + 300, 100):
            batch = rows(range(s, s + 100))
            batch["label"] = [str(os.getpid())] * 100
            yield batch
    return gen


def test_append_from_ingests_in_parallel_ray_tasks(tmp_path):
    d = Dataset.create(str(tmp_path / "af"), SCHEMA, ["id"], ["blob"])
    r = d.ray(ray_options=OPTS).append_from([_source(0), _source(1000), _source(2000), _source(3000)])
    assert r.state == JobResult.State.SUCCEEDED and r.storage_statistics_update["rows"] == 1200
    assert d.snapshot_id() == 1  # one snapshot for all sources
    pids = set(d.local().read_all(fields=["label"]).column("label").to_pylist())
    assert str(os.getpid()) not in pids and len(pids) >= 1  # ingested by Ray workers

    def broken():
        yield rows([9000])
        raise ValueError("source exploded")

    files_before = sorted(os.listdir(os.path.join(d.location, "data", "index")))
    with pytest.raises(ValueError, match="source exploded"):
        d.ray(ray_options=OPTS).append_from([_source(5000), broken])
    assert d.snapshot_id() == 1
    assert sorted(os.listdir(os.path.join(d.location, "data", "index"))) == files_before

    def null_key():
        yield rows([9100])
        yield {"id": [None], "label": ["x"], "blob": [b"x"]}

    with pytest.raises(errors.SchemaError, match="primary key field 'id' is null"):
        d.ray(ray_options=OPTS).append_from([_source(6000), null_key])
    assert d.snapshot_id() == 1
    assert sorted(os.listdir(os.path.join(d.location, "data", "index"))) == files_before


def test_ray_reads_split_into_parallel_blocks(ds):
    r = ds.ray(ray_options=OPTS)
    blocks = list(r.read())
    assert len(blocks) >= 3  # 40,000 rows in one index file, read as several row ranges
    assert pa.concat_tables(blocks).equals(ds.local().read_all())
    t = r.read_all(filter_=pc.field("id") >= 39_990, fields=["id", "blob"])
    assert t.column("blob").to_pylist() == [f"b{i}".encode() for i in range(39_990, 40_000)]
    assert [b.num_rows for b in r.read(batch_size=15_000)] == [15_000, 15_000, 10_000]
    assert r.read_all(filter_="id < 0").num_rows == 0
    # A SQL filter DuckDB evaluates, inside the Ray tasks: same rows as the local reader.
    sql = "id >= 39990 AND (id % 3 = 0 OR label NOT LIKE 'x%') AND label IS NOT NULL"
    assert r.read_all(filter_=sql, fields=["id"]).equals(ds.local().read_all(filter_=sql, fields=["id"]))
    assert [c.change_type.name for c in r.diff(0, None)] == ["ADD"]


def test_ray_dataset_is_lazy_with_read_tasks_per_range(ds):
    rds = ds.ray_dataset(fields=["id", "blob"])
    ds.local().append(rows([99_999]))  # after creation: the Ray dataset is pinned
    got = rds.take_all()
    assert len(got) == 40_000 and set(got[0]) == {"id", "blob"}
    assert sorted(r["id"] for r in got) == list(range(40_000))
    assert {r["id"]: r["blob"] for r in got[:3]} == {r["id"]: f"b{r['id']}".encode() for r in got[:3]}
    assert ds.ray_dataset(version=0, ray_options=OPTS).count() == 0
    # Read tasks: one per row range of each index file, none materialised up front.
    source = _datasource_class()(*_pinned(ds))
    tasks = source.get_read_tasks(4)
    assert len(tasks) == 5  # 40,000 + 1 rows: four ranges of the big file, one small file
    assert sum(t.metadata.num_rows for t in tasks) == 40_001


def _pinned(ds):
    from spacefs.engine.views import as_view

    view = as_view(ds)
    return view, view.resolve_versions(None), list(SCHEMA.names)


def tag_blob(batch):
    batch["blob"] = [b + b"@" + str(os.getpid()).encode() for b in batch["blob"]]
    return batch


def test_views_read_on_ray(ds, tmp_path):
    labels = Dataset.create(str(tmp_path / "labels"), pa.schema([("label", pa.string()), ("name", pa.string())]), ["label"])
    labels.local().append({"label": ["l0", "l1"], "name": ["zero", "one"]})
    view = ds.filter(lambda r: r["id"] % 100 == 0, input_fields=["id"]).join(labels, keys=["label"])
    local = sort(view.local().read_all())
    assert sort(view.ray(OPTS).read_all()).equals(local)
    assert local.num_rows == len([i for i in range(0, 40_000, 100) if i % 3 < 2])
    assert sort(pa.Table.from_pylist(view.ray_dataset().take_all())).select(local.column_names).to_pydict() == local.to_pydict()
    mapped = ds.map_batches(tag_blob, SCHEMA, output_record_fields=["blob"])
    t = mapped.ray(OPTS).read_all(filter_="id < 20000")
    pids = {b.split(b"@")[1] for b in t.column("blob").to_pylist()}
    assert str(os.getpid()).encode() not in pids  # UDFs ran in Ray workers
    assert t.num_rows == 20_000
    start = ds.snapshot_id()
    ds.local().upsert(rows([5, 40_001], tag="d"))
    changes = list(mapped.ray(OPTS).diff(start, None))
    assert [c.change_type.name for c in changes] == ["DELETE", "ADD"]
    assert sorted(changes[1].data.column("id").to_pylist()) == [5, 40_001]
    assert changes[1].data.column("blob")[0].as_py().split(b"@")[0] in (b"b5d", b"b40001d")


def test_mv_refresh_on_ray(ds, tmp_path):
    view = ds.map_batches(tag_blob, SCHEMA, output_record_fields=["blob"])
    mv = view.materialize(str(tmp_path / "mv"))
    r = mv.ray(OPTS).refresh(batch_size=4096)
    assert r.state == JobResult.State.SUCCEEDED and r.storage_statistics_update["rows"] == 40_000
    assert mv.ray(OPTS).refresh().state == JobResult.State.SKIPPED
    ds.local().upsert(rows(range(100, 110), tag="x"))
    ds.local().delete(pc.field("id") < 50)
    ds.local().append(rows(range(50_000, 50_005)))
    r = mv.ray(OPTS).refresh()
    assert r.state == JobResult.State.SUCCEEDED and r.storage_statistics_update["rows"] == -45
    t = sort(mv.local().read_all())
    assert t.column("id").to_pylist() == [*range(50, 40_000), *range(50_000, 50_005)]
    blobs = dict(zip(t.column("id").to_pylist(), t.column("blob").to_pylist(), strict=True))
    assert blobs[105].startswith(b"b105x@") and blobs[50_001].startswith(b"b50001@")
    assert str(os.getpid()).encode() not in {b.split(b"@")[1] for b in blobs.values()}
    # the Ray and local runners agree on what the MV reflects
    assert mv.local().refresh().state == JobResult.State.SKIPPED
    with pytest.raises(errors.UserInputError, match="refresh"):
        mv.ray(OPTS).append(rows([1]))
