"""Reads, versions, diff, catalog, SQL, inspection and schema validation."""

from __future__ import annotations

import os
import shutil

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spacefs import ChangeType, Dataset, DirCatalog, FileOptions, errors

from conftest import SCHEMA, rows


def test_create_refuses_bad_schemas(tmp_path):
    loc = str(tmp_path / "x")
    cases = [
        (SCHEMA, [], ["feature"], "primary key"),
        (SCHEMA, ["feature"], ["feature"], "feature"),
        (SCHEMA, ["id"], ["image_name"], "image_name"),
        (SCHEMA, ["nope"], [], "nope"),
        (SCHEMA, ["id"], ["nope"], "nope"),
        (pa.schema([("l", pa.list_(pa.int64())), ("b", pa.binary())]), ["l"], ["b"], "'l'"),
        (pa.schema([("id", pa.int64()), ("n", pa.null())]), ["id"], [], "'n'"),
        (pa.schema([("id", pa.float64())]), ["id"], [], "'id'"),
        (pa.schema([("a/b", pa.int64())]), ["a/b"], [], "a/b"),
    ]
    for schema, keys, recs, needle in cases:
        with pytest.raises(errors.SchemaError, match=needle):
            Dataset.create(loc, schema, keys, recs)
        assert not os.path.exists(loc)


def test_create_twice_and_load_missing(tmp_path, ds):
    with pytest.raises(errors.AlreadyExistsError):
        Dataset.create(ds.location, SCHEMA, ["id"], ["feature"])
    with pytest.raises(errors.NotFoundError):
        Dataset.load(str(tmp_path / "missing"))


def test_snapshot_zero_is_empty(ds):
    t = ds.local().read_all()
    assert t.num_rows == 0 and t.schema == SCHEMA
    assert ds.local().read_all(filter_="id = 1", fields=["id"]).num_rows == 0


def test_filters_fields_batches_and_references(ds):
    r = ds.local()
    r.append(rows(range(50)))
    r.append(rows(range(50, 100)))
    assert r.read_all(filter_=pc.field("id") < 3).column("id").to_pylist() == [0, 1, 2]
    assert r.read_all(filter_="id between 10 and 12 or image_name = '99.jpg'").column("id").to_pylist() == [10, 11, 12, 99]
    assert r.read_all(fields=["feature"]).column_names == ["feature"]
    sizes = [t.num_rows for t in r.read(batch_size=7)]
    assert sizes == [7] * 14 + [2]
    refs = r.read_all(fields=["id", "feature"], reference_read=True)
    assert pa.types.is_struct(refs.schema.field("feature").type)
    assert refs.column("feature")[0]["size"].as_py() == len(b"data0")
    with pytest.raises(errors.SchemaError):
        r.read_all(fields=["nope"])
    with pytest.raises(errors.FilterError):
        r.read_all(filter_=pc.field("feature") == b"x")


def test_key_filters_prune_files(ds):
    r = ds.local(FileOptions(merge_small_files=False))  # five files, whatever their size
    for i in range(5):
        r.append(rows(range(i * 100, i * 100 + 100)))
    assert len(ds.storage.index_manifest(filter_=pc.field("id") == 250)) == 1
    assert len(ds.storage.index_manifest(filter_="id in (5, 420)")) == 2
    assert len(ds.storage.index_manifest()) == 5


def test_versions_tags_branches_time_travel(ds):
    r = ds.local()
    r.append(rows(range(3)))
    ds.add_tag("v1")
    r.delete("id = 0")
    ds.add_tag("v2")
    with pytest.raises(errors.AlreadyExistsError):
        ds.add_tag("v1")
    with pytest.raises(errors.UserInputError):
        ds.add_tag("bad/name")
    v = ds.versions()
    assert v.column_names == ["snapshot_id", "create_time", "tag_or_branch", "message"]
    assert v.column("snapshot_id").to_pylist() == [2, 2, 1, 0]
    assert set(v.column("tag_or_branch").to_pylist()) == {"v2", "main", "v1", None}
    assert r.read_all(version="v1").num_rows == 3
    assert r.read_all(version=1).num_rows == 3
    with pytest.raises(errors.VersionNotFoundError):
        r.read_all(version=9)
    with pytest.raises(errors.VersionNotFoundError):
        r.read_all(version="nope")
    ds.remove_tag("v1")
    with pytest.raises(errors.VersionNotFoundError):
        r.read_all(version="v1")

    ds.add_branch("dev")
    ds.set_current_branch("dev")
    ds.local().append(rows([10]))
    assert sorted(ds.local().read_all().column("id").to_pylist()) == [1, 2, 10]
    ds.set_current_branch("main")
    assert sorted(ds.local().read_all().column("id").to_pylist()) == [1, 2]
    assert ds.local().read_all(version="dev").num_rows == 3
    ds.local().append(rows([20]))  # snapshot ids are global: 3 on dev, 4 on main
    assert ds.snapshot_id("main") == 4 and ds.snapshot_id("dev") == 3
    with pytest.raises(errors.UserInputError):
        ds.remove_branch("main")
    ds.remove_branch("dev")
    with pytest.raises(errors.VersionNotFoundError):
        ds.set_current_branch("dev")


def test_stale_handle_cannot_roll_back(tmp_path, ds):
    stale = Dataset.load(ds.location)
    ds.local().append(rows([1]))
    ds.add_tag("a")
    stale.add_tag("b")  # from a handle opened before both changes
    head = ds.storage.head()
    assert head.tags == {"a": 1, "b": 1}
    assert head.branches["main"] == 1


def test_diff_deletes_then_adds(ds):
    r = ds.local()
    r.append(rows([1, 2, 3]))
    r.upsert(rows([2, 4], tag="x"))
    r.delete("id = 1")
    changes = list(r.diff(0, 3))
    kinds = [(c.snapshot_id, c.change_type) for c in changes]
    assert kinds == [(1, ChangeType.ADD), (2, ChangeType.DELETE), (2, ChangeType.ADD), (3, ChangeType.DELETE)]
    assert changes[1].data.column_names == ["id"] and changes[1].data.column("id").to_pylist() == [2]
    assert sorted(changes[2].data.column("id").to_pylist()) == [2, 4]
    assert changes[2].data.column("feature").to_pylist()[0].startswith(b"data")
    assert list(r.diff(3, 3)) == []


def test_dataset_is_relocatable(tmp_path, ds):
    ds.local().append(rows(range(5)))
    ds.add_tag("t")
    dest = str(tmp_path / "moved")
    shutil.copytree(ds.location, dest)
    shutil.rmtree(ds.location)
    moved = Dataset.load(dest)
    assert moved.local().read_all(version="t").to_pydict() == rows(range(5))
    moved.local().append(rows([9]))
    assert moved.num_rows() == 6


def test_sql_and_manifests_readable_by_duckdb(tmp_path):
    cat = DirCatalog(str(tmp_path / "cat"))
    a = cat.create_dataset("a", SCHEMA, ["id"], ["feature"])
    a.local().append(rows(range(10)))
    b = cat.create_dataset("b", pa.schema([("id", pa.int64()), ("label", pa.string())]), ["id"], [])
    b.local().append({"id": [1, 2], "label": ["cat", "dog"]})
    assert a.sql("select count(*) as n from a").column("n")[0].as_py() == 10
    assert a.sql("select count(*) as n from a", version=0).column("n")[0].as_py() == 0
    j = cat.sql("select b.label from a join b on a.id = b.id order by 1")
    assert j.column("label").to_pylist() == ["cat", "dog"]
    ref = a.sql("select feature.size as s from a where id = 3")
    assert ref.column("s")[0].as_py() == len(b"data3")
    with pytest.raises(errors.UserInputError):
        a.sql("select nope from a")
    man = a.storage.index_manifest()
    assert man.column("rows").to_pylist() == [10]
    path = os.path.join(a.location, a.storage.snapshot(1)["manifests"][0]["path"])
    assert duckdb.sql(f"select sum(rows) as n from read_parquet('{path}') where kind = 'index'").to_arrow_table().column("n")[0].as_py() == 10
    assert a.storage.record_manifest().column("rows").to_pylist() == [10]
    assert all(os.path.isfile(f) for f in a.index_files())


def test_catalog_names_and_delete(tmp_path):
    cat = DirCatalog(str(tmp_path / "cat"))
    for bad in ["../x", "a/b", ".hidden", "", "..", "x" * 200]:
        with pytest.raises(errors.UserInputError):
            cat.create_dataset(bad, SCHEMA, ["id"], ["feature"])
    assert os.listdir(tmp_path / "cat") == []
    cat.create_dataset("one", SCHEMA, ["id"], ["feature"])
    assert [d.name for d in cat.datasets()] == ["one"]
    assert cat.dataset("one").name == "one"
    with pytest.raises(errors.NotFoundError):
        cat.dataset("two")
    cat.delete_dataset("one")
    assert cat.datasets() == []
