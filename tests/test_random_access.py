"""RandomAccessDataSource: order, versions, several fields and datasets, errors, and use
from worker processes (pickled, forked) by PyTorch's DataLoader and Grain."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spacefs import Dataset, FileOptions, RandomAccessDataSource
from spacefs.engine.errors import SchemaError, UserInputError, VersionNotFoundError

SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("blob", pa.binary())])
# Sizes that exercise every read path: empty, tiny, straddling 64 KiB block headers,
# spanning several blocks.
SIZES = [0, 1, 100, 4096, 70_000, 200_000]


def blob(i: int) -> bytes:
    n = SIZES[i % len(SIZES)] if i % 7 else 4096
    return np.random.default_rng(i).bytes(n)


def rows(ids) -> dict:
    ids = list(ids)
    return {"id": ids, "label": [f"l{i}" for i in ids], "blob": [blob(i) for i in ids]}


@pytest.fixture()
def ds(tmp_path) -> Dataset:
    """Three index files, one row deleted, tag v1 before an upsert."""
    ds = Dataset.create(str(tmp_path / "ds"), SCHEMA, ["id"], ["blob"])
    runner = ds.local()
    runner.append(rows(range(0, 300)))
    runner.append(rows(range(300, 500)))
    runner.delete(pc.field("id") == 7)
    ds.add_tag("v1")
    runner.upsert({"id": [1, 600], "label": ["new", "l600"], "blob": [b"new-1", b"new-600"]})
    return ds


def expected(ds: Dataset, version=None) -> pa.Table:
    return ds.local().read_all(version=version)


@pytest.mark.parametrize("mmap", [True, False])
def test_rows_in_index_order(ds, mmap):
    src = RandomAccessDataSource({"blob": ds}, mmap=mmap)
    t = expected(ds)
    want = t.column("blob").to_pylist()
    assert len(src) == t.num_rows == 500
    assert [src[i] for i in range(len(src))] == want
    assert src[-1] == want[-1]
    assert src[10:20] == want[10:20]
    assert src[::97] == want[::97]
    idx = [499, 3, 3, 250, 0, 42]
    assert src.__getitems__(idx) == [want[i] for i in idx]
    assert src.__getitems__(np.array(idx)) == [want[i] for i in idx]
    assert src.__getitems__([]) == []


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("threads", [0, 3])
def test_random_batches_match_read_all(ds, mmap, threads):
    src = RandomAccessDataSource({"blob": ds}, mmap=mmap, threads=threads)
    want = expected(ds).column("blob").to_pylist()
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = rng.integers(0, len(src), size=300)
        assert src.__getitems__(idx.tolist()) == [want[i] for i in idx]


def test_version_is_pinned(ds):
    old = RandomAccessDataSource({"blob": ds, "label": ds}, version="v1")
    new = RandomAccessDataSource({"blob": ds, "label": ds})
    assert len(old) == 499 and len(new) == 500
    old_rows = {r["label"]: r["blob"] for r in old[0:499]}
    new_rows = {r["label"]: r["blob"] for r in new[0:500]}
    assert old_rows["l1"] == blob(1) and "new" not in old_rows
    assert new_rows["new"] == b"new-1" and "l1" not in new_rows
    # A later commit does not move a source already built.
    ds.local().delete(pc.field("id") < 100)
    assert len(new) == 500
    assert [r["blob"] for r in new.__getitems__(range(500))] == list(new_rows.values())
    assert list(new.snapshot_ids.values()) == [ds.snapshot_id() - 1]
    with pytest.raises(VersionNotFoundError):
        RandomAccessDataSource({"blob": ds}, version="nope")


def test_several_fields_give_dicts(ds):
    src = RandomAccessDataSource({"id": ds, "blob": ds.location, "label": ds})
    t = expected(ds)
    assert src[5] == {"id": t["id"][5].as_py(), "blob": t["blob"][5].as_py(), "label": t["label"][5].as_py()}
    assert list(src[5]) == ["id", "blob", "label"]  # the order asked


def test_fields_of_two_datasets_line_up_by_key(ds, tmp_path):
    other = Dataset.create(str(tmp_path / "emb"), pa.schema([("id", pa.int64()), ("emb", pa.binary())]),
                           ["id"], ["emb"])
    ids = expected(ds).column("id").to_pylist()
    shuffled = list(reversed(ids))
    other.local().append({"id": shuffled, "emb": [b"e%d" % i for i in shuffled]})
    src = RandomAccessDataSource({"blob": ds, "emb": other})
    want = expected(ds).column("blob").to_pylist()
    got = src.__getitems__(range(len(src)))
    assert [g["emb"] for g in got] == [b"e%d" % i for i in ids]
    assert [g["blob"] for g in got] == want
    other.local().delete(pc.field("id") == ids[3])
    with pytest.raises(SchemaError, match="keys"):
        RandomAccessDataSource({"blob": ds, "emb": other})


@pytest.mark.parametrize("mmap", [True, False])
def test_nulls_and_compressed_record_files(tmp_path, mmap):
    ds = Dataset.create(str(tmp_path / "c"), SCHEMA, ["id"], ["blob"])
    ds.local(FileOptions(record_options="group_size:8")).append(
        {"id": [0, 1, 2, 3], "label": ["a", "b", "c", "d"], "blob": [b"zero", None, b"", b"three"]})
    ds.local().append({"id": [4, 5], "label": ["e", None], "blob": [None, b"five"]})
    src = RandomAccessDataSource({"blob": ds, "label": ds}, mmap=mmap)
    assert [r["blob"] for r in src[0:6]] == [b"zero", None, b"", b"three", None, b"five"]
    assert src[5]["label"] is None
    assert src.__getitems__([5, 1, 0]) == [src[5], src[1], src[0]]


def test_errors(ds, tmp_path):
    src = RandomAccessDataSource({"blob": ds})
    with pytest.raises(IndexError):
        src[500]
    with pytest.raises(IndexError):
        src[-501]
    with pytest.raises(IndexError):
        src.__getitems__([0, 1000])
    with pytest.raises(TypeError):
        src["a"]
    with pytest.raises(UserInputError, match="plain binary"):
        RandomAccessDataSource({"blob": ds}, deserialize=True)
    with pytest.raises(SchemaError, match="nope"):
        RandomAccessDataSource({"nope": ds})
    with pytest.raises(UserInputError):
        RandomAccessDataSource({})
    with pytest.raises(UserInputError):
        RandomAccessDataSource({"blob": 42})
    with pytest.raises(Exception, match="no spacefs dataset"):
        RandomAccessDataSource({"blob": str(tmp_path / "missing")})
    empty = Dataset.create(str(tmp_path / "empty"), SCHEMA, ["id"], ["blob"])
    e = RandomAccessDataSource({"blob": empty})
    assert len(e) == 0 and e[0:10] == []
    with pytest.raises(IndexError):
        e[0]


def test_pickle_round_trip(ds):
    src = RandomAccessDataSource({"blob": ds, "id": ds})
    src[3]  # opens record files; they must not travel
    copy = pickle.loads(pickle.dumps(src))
    assert copy.__getitems__(range(0, 500, 7)) == src.__getitems__(range(0, 500, 7))


def identity(batch):
    return batch


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_dataloader_workers_fork(ds):
    from torch.utils.data import DataLoader

    src = RandomAccessDataSource({"blob": ds, "id": ds})
    src.__getitems__([0, 1, 2])  # descriptors open in the parent before the fork
    want = {r["id"]: r["blob"] for r in expected(ds).to_pylist()}
    loader = DataLoader(src, batch_size=32, shuffle=True, num_workers=3, collate_fn=identity,
                        multiprocessing_context="fork")
    got = [r for batch in loader for r in batch]
    assert len(got) == 500
    assert {r["id"]: r["blob"] for r in got} == want


def test_grain_workers(ds):
    import grain.python as gp

    src = RandomAccessDataSource({"blob": ds})
    want = sorted(expected(ds).column("blob").to_pylist())
    sampler = gp.IndexSampler(num_records=len(src), shard_options=gp.NoSharding(), shuffle=True,
                              num_epochs=1, seed=3)
    loader = gp.DataLoader(data_source=src, sampler=sampler, worker_count=2)
    assert sorted(loader) == want


def upper(batch):
    batch["blob"] = [b.upper() if b is not None else None for b in batch["blob"]]
    return batch


def test_materialized_view_source(ds, tmp_path):
    view = ds.map_batches(upper, SCHEMA, output_record_fields=["blob"])
    mv = view.materialize(str(tmp_path / "mv"))
    mv.local().refresh()
    want = {r["id"]: r["blob"].upper() for r in expected(ds).to_pylist()}
    for source in (mv, mv.location, mv.dataset):
        src = RandomAccessDataSource({"id": source, "blob": source})
        assert {r["id"]: r["blob"] for r in src.__getitems__(range(len(src)))} == want
