"""Datasets created, written and read in a bucket (moto on 127.0.0.1) by the engine itself."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from spacefs import Dataset
from spacefs.engine.backend import backend_for
from spacefs.engine.errors import AlreadyExistsError, NotFoundError
from spacefs.engine.objcopy import copy_dataset

from conftest import SCHEMA, rows


def history(ds: Dataset) -> None:
    """The same writes on any dataset: appends (one crossing block boundaries), an upsert,
    a delete, a tag and a branch with its own commit."""
    r = ds.local()
    r.append(rows(range(0, 50)))
    r.append({**rows(range(50, 60)), "feature": [bytes([i]) * 150_000 for i in range(10)]})
    r.upsert(rows(range(10, 20), tag="v2"))
    r.delete("id >= 55")
    ds.add_tag("v1")
    ds.add_branch("dev")
    ds.set_current_branch("dev")
    ds.local().insert(rows([500]))
    ds.set_current_branch("main")


def by_id(t: pa.Table) -> pa.Table:
    return t.sort_by("id")


def test_create_write_read_in_a_bucket_matches_a_directory(s3_bucket, tmp_path):
    uri = s3_bucket + "/team/ds"
    remote = Dataset.create(uri, SCHEMA, primary_keys=["id"], record_fields=["feature"])
    local = Dataset.create(str(tmp_path / "ds"), SCHEMA, primary_keys=["id"], record_fields=["feature"])
    history(remote)
    history(local)
    assert remote.location == uri and remote.name == "ds"

    again = Dataset.load(uri)  # a fresh handle reads everything from the bucket
    for version in (None, "v1", "dev", 1, 2):
        assert by_id(again.local().read_all(version=version)).equals(by_id(local.local().read_all(version=version)))
    assert again.versions().select(["snapshot_id", "tag_or_branch"]).equals(
        local.versions().select(["snapshot_id", "tag_or_branch"]))
    assert again.num_rows("dev") == local.num_rows("dev") == 56
    got = again.local().read_all(filter_="id >= 9 and id < 12", fields=["id", "feature"])
    assert by_id(got).to_pydict() == {"id": [9, 10, 11], "feature": [b"data9", b"data10v2", b"data11v2"]}
    batches = list(again.local().read(batch_size=7, fields=["id", "feature"]))
    assert [b.num_rows for b in batches[:-1]] == [7] * (len(batches) - 1)
    assert sum(b.num_rows for b in batches) == 55

    # No file of the bucket is unreferenced or missing: same object names as on disk.
    objects = backend_for(uri).list_paths("")
    assert not any(p.startswith("metadata/.conditional") for p in objects)
    referenced = {r["path"] for sid in range(6) for r in again.storage.live_files(sid).to_pylist()}
    assert referenced <= set(objects)
    assert len([p for p in objects if p.startswith("metadata/log/0")]) == 8  # create + 5 writes + tag + branch
    b = backend_for(uri)
    for sid in range(again.snapshot_id("dev") + 1):  # each snapshot copy holds its entry's bytes
        seq = again.storage.log.snapshot_entry(sid).seq
        assert b.read(f"metadata/snapshots/{sid:012d}.json") == b.read(f"metadata/log/{seq:012d}.json")


def test_bucket_dataset_copies_to_disk_and_back(s3_bucket, tmp_path):
    uri = s3_bucket + "/a"
    remote = Dataset.create(uri, SCHEMA, primary_keys=["id"], record_fields=["feature"])
    history(remote)
    copy_dataset(uri, str(tmp_path / "down"))
    down = Dataset.load(str(tmp_path / "down"))
    want = by_id(remote.local().read_all())
    assert by_id(down.local().read_all()).equals(want)
    down.local().append(rows([900]))
    copy_dataset(str(tmp_path / "down"), s3_bucket + "/b")
    up = Dataset.load(s3_bucket + "/b")
    assert up.num_rows() == want.num_rows + 1
    assert by_id(up.local().read_all(version="dev")).equals(by_id(remote.local().read_all(version="dev")))


def test_storage_options_instead_of_the_environment(s3_bucket, moto_server, monkeypatch):
    options = moto_server.storage_options(monkeypatch)
    uri = s3_bucket + "/opts"
    ds = Dataset.create(uri, SCHEMA, primary_keys=["id"], record_fields=["feature"], storage_options=options)
    # Every operation reads and writes through the backend (nothing falls back to a
    # client configured by the environment, which has no settings here).
    history(ds)
    assert Dataset.load(uri, storage_options=options).local().read_all().num_rows == 55
    changes = list(ds.local().diff(0, "main"))
    assert [c.change_type.name for c in changes][:2] == ["ADD", "ADD"]
    assert ds.merge("dev").snapshot_id is not None
    assert by_id(ds.local().read_all()).column("id").to_pylist()[-1] == 500
    ds.restore("v1")
    assert ds.local().read_all().num_rows == 55
    before = by_id(ds.local().read_all())
    ds.compact()
    assert by_id(ds.local().read_all()).equals(before)
    assert ds.sql("SELECT count(*) AS n FROM opts").column("n").to_pylist() == [55]
    # The options are kept in memory only: nothing of them reaches the bucket.
    b = backend_for(uri, options)
    for path in b.list_paths("metadata/"):
        if not path.endswith(".parquet"):
            assert b"testing" not in b.read(path), path


def test_bucket_errors_are_clear(s3_bucket):
    uri = s3_bucket + "/ds"
    Dataset.create(uri, SCHEMA, primary_keys=["id"], record_fields=["feature"])
    with pytest.raises(AlreadyExistsError, match="already exists"):
        Dataset.create(uri, SCHEMA, primary_keys=["id"], record_fields=["feature"])
    with pytest.raises(NotFoundError, match="no spacefs dataset"):
        Dataset.load(s3_bucket + "/nothing")
    # A prefix holding other things is neither a dataset nor a catalog to mount.
    from spacefs.engine.errors import UserInputError
    from spacefs.mount.launch import check_source

    backend_for(s3_bucket + "/other").put("notes.txt", b"hello")
    with pytest.raises(UserInputError, match="neither a spacefs dataset nor a catalog"):
        check_source(s3_bucket + "/other")
    check_source(uri)
    # A create interrupted after dataset.json: creating again says so, nothing else changes.
    b = backend_for(s3_bucket + "/half")
    b.put("metadata/dataset.json", b"{}")
    with pytest.raises(AlreadyExistsError, match="no log"):
        Dataset.create(s3_bucket + "/half", SCHEMA, primary_keys=["id"], record_fields=["feature"])
    assert b.list_paths("") == ["metadata/dataset.json"]
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1")


def test_catalog_sql_and_random_access_on_a_bucket(s3_bucket, moto_server, tmp_path):
    from spacefs import DirCatalog, RandomAccessDataSource

    cat = DirCatalog(s3_bucket + "/cat")
    a = cat.create_dataset("a", SCHEMA, primary_keys=["id"], record_fields=["feature"])
    history(a)
    mark = moto_server.mark()
    b = cat.create_dataset("b", SCHEMA, primary_keys=["id"], record_fields=["feature"])
    # The store was probed for conditional writes by the first create only: dataset.json,
    # entry 0, its snapshot copy and LATEST are all this create puts.
    assert moto_server.requests(mark).get("PUT") == 4
    b.local().append(rows([1, 2]))
    assert [(i.name, i.location) for i in cat.datasets()] == [("a", s3_bucket + "/cat/a"), ("b", s3_bucket + "/cat/b")]
    assert cat.dataset("a").num_rows() == 55
    got = cat.sql("SELECT count(*) AS n FROM a JOIN b USING (id)")
    assert got.column("n").to_pylist() == [2]
    assert a.sql("SELECT max(id) AS m FROM a", version="dev").column("m").to_pylist() == [500]

    source = RandomAccessDataSource({"feature": a.location, "id": a.location}, version="v1",
                                    cache_dir=str(tmp_path / "cache"))
    want = {r["id"]: r["feature"] for r in a.local().read_all(version="v1").to_pylist()}
    picks = [53, 0, 7, 52, 11]
    first = source.__getitems__(picks)
    assert [r["feature"] for r in first] == [want[r["id"]] for r in first]
    mark = moto_server.mark()
    assert source.__getitems__(picks) == first  # the second epoch is served by the cache
    assert moto_server.requests(mark) == {}

    cat.delete_dataset("b")
    assert [i.name for i in cat.datasets()] == ["a"]
    assert backend_for(s3_bucket + "/cat").list_paths("b/") == []
    with pytest.raises(NotFoundError, match="no dataset named 'b'"):
        cat.dataset("b")


def test_vacuum_and_expire_in_a_bucket_remove_only_unreferenced_objects(s3_bucket):
    from datetime import timedelta

    uri = s3_bucket + "/ds"
    ds = Dataset.create(uri, SCHEMA, primary_keys=["id"], record_fields=["feature"])
    history(ds)
    b = backend_for(uri)
    stray = ["data/index/0123abcd.parquet", "data/records/feature/0123abcd.array_record"]
    for rel in stray:  # what a writer killed before its commit leaves
        b.put(rel, b"x" * 10)
    before = set(b.list_paths(""))
    want = {v: by_id(ds.local().read_all(version=v)) for v in range(ds.snapshot_id("dev") + 1)}

    assert ds.vacuum(older_than=timedelta(hours=1)).files == []  # too young
    report = ds.vacuum(older_than=timedelta(0))
    assert report.files == stray and not report.applied
    ds.vacuum(older_than=timedelta(0), apply=True)
    assert set(b.list_paths("")) == before - set(stray)
    for v, t in want.items():
        assert by_id(Dataset.load(uri).local().read_all(version=v)).equals(t)

    # Expire everything unnamed: snapshots 0..3 go (4 is tagged v1 and main, 5 heads dev).
    report = ds.expire_snapshots("0s", apply=True)
    assert report.snapshot_ids == [0, 1, 2, 3] and report.files
    after = set(b.list_paths(""))
    assert not after & set(report.files)
    for v in (4, 5):
        assert by_id(Dataset.load(uri).local().read_all(version=v)).equals(want[v])
    assert ds.vacuum(older_than=timedelta(0)).files == []


def test_cli_on_bucket_locations(s3_bucket, tmp_path):
    """The console script takes s3:// locations, set up by the AWS variables it inherits."""
    import json
    import subprocess
    import sys

    import pyarrow.parquet as pq

    def run(*args: str) -> str:
        p = subprocess.run([sys.executable, "-m", "spacefs.cli", *args], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        return p.stdout

    src = tmp_path / "in.parquet"
    pq.write_table(pa.table(rows(range(20))), src)
    uri = s3_bucket + "/cat/ds"
    run("import", "parquet", str(src), uri, "-k", "id", "-r", "feature")
    run("tag", uri, "v1")
    run("delete", uri, "--where", "id >= 15")
    assert [d["name"] for d in json.loads(run("ls", s3_bucket + "/cat", "--json"))] == ["ds"]
    assert [s["snapshot"] for s in json.loads(run("log", uri, "--json"))] == [2, 1, 0]
    assert json.loads(run("info", uri, "--json"))["stats"]["rows"] == 15
    assert run("sql", uri, "SELECT count(*) AS n FROM ds", "--version", "v1", "--format", "csv").split() == ["n", "20"]
    out = tmp_path / "out"
    run("export", "parquet", uri, str(out), "-v", "v1")
    back = pa.concat_tables(pq.read_table(os.path.join(out, f)) for f in sorted(os.listdir(out)))
    assert by_id(back.select(["id", "feature"])).equals(by_id(pa.table(rows(range(20))).select(["id", "feature"])))
    run("vacuum", uri)
    run("rm", uri, "--yes")
    assert backend_for(uri).list_paths("") == []


def as_list(batch: list) -> list:
    return batch


def test_torch_loader_with_spawned_workers_reads_a_bucket_without_the_variables(s3_bucket, moto_server, monkeypatch):
    """A bucket's S3 client does not survive fork: workers are spawned, and get the
    driver's settings with the source (no AWS variables in their environment)."""
    from torch.utils.data import DataLoader

    from spacefs.torch_data import TorchMapDataset

    options = moto_server.storage_options(monkeypatch)
    uri = s3_bucket + "/ds"
    ds = Dataset.create(uri, SCHEMA, primary_keys=["id"], record_fields=["feature"], storage_options=options)
    ds.local().append(rows(range(40)))
    loader = DataLoader(TorchMapDataset(uri, fields=["id", "feature"]), batch_size=8, num_workers=2,
                        multiprocessing_context="spawn", collate_fn=as_list)
    got = sorted((r["id"], r["feature"]) for batch in loader for r in batch)
    assert got == sorted(zip(range(40), rows(range(40))["feature"], strict=True))


def test_null_records_in_a_bucket(s3_bucket):
    from spacefs import RandomAccessDataSource

    uri = s3_bucket + "/nulls"
    ds = Dataset.create(uri, SCHEMA, primary_keys=["id"], record_fields=["feature"])
    ds.local().append({"id": [1, 2, 3], "image_name": ["a", "b", "c"], "feature": [b"x", None, b"z"]})
    assert by_id(Dataset.load(uri).local().read_all()).column("feature").to_pylist() == [b"x", None, b"z"]
    assert RandomAccessDataSource({"feature": uri})[:] == [b"x", None, b"z"]
