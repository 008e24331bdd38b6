"""Compaction, snapshot expiry, and the disk cost of small writes."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import cloudpickle
import pyarrow as pa
import pytest

from spacefs import Dataset, DirCatalog, JobResult, errors

from conftest import PYTHON, rows

HERE = os.path.dirname(os.path.abspath(__file__))
OK, SKIPPED = JobResult.State.SUCCEEDED, JobResult.State.SKIPPED
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def content(ds, version=None) -> dict:
    return {r["id"]: (r["image_name"], r["feature"]) for r in ds.local().read_all(version=version).to_pylist()}


def disk_bytes(path: str) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_blocks * 512 for d, _, fs in os.walk(path) for f in fs)


# -- compact -------------------------------------------------------------------
def test_compact_same_rows_fewer_files_empty_diff(ds):
    r = ds.local()
    for i in range(30):
        r.append(rows([i]))
    r.delete("id = 4")
    r.upsert(rows([7], "u"))
    before = content(ds)
    n_index = len(ds.index_files())
    n_records = ds.storage.record_manifest().num_rows
    res = ds.compact()
    assert res.state == OK and res.storage_statistics_update["rows"] == 0
    assert content(ds) == before
    assert len(ds.index_files()) == 1 < n_index
    assert ds.storage.record_manifest().num_rows == 1 < n_records
    assert list(r.diff(res.snapshot_id - 1, res.snapshot_id)) == []
    assert ds.compact().state == SKIPPED  # already compact
    # The two-point diff (across branches) also sees no change in a compaction.
    ds.add_branch("old", res.snapshot_id - 1)
    assert list(r.diff("old", "main")) == []
    # Writes after compaction go on as usual.
    r.upsert(rows([1], "after"))
    assert content(ds)[1][0] == "1after.jpg"


def test_compact_in_groups_keeps_every_row_null_records_and_rewrites(ds):
    """Many small files read in several groups (``max_index_rows``), a delete's rewrite
    (index rows pointing into an older, partly dead record file), null records: the
    same rows come out."""
    from spacefs.engine.options import FileOptions

    r = ds.local()
    r.append(rows(range(40)))
    for i in range(40, 70):
        r.append({"id": [i], "image_name": [f"{i}.jpg"], "feature": [None if i % 3 == 0 else f"f{i}".encode()]})
    r.delete("id IN (3, 17, 55)")
    before = content(ds)
    res = ds.compact(FileOptions(max_index_rows=7))
    assert res.state == OK
    assert content(ds) == before and len(before) == 67
    assert before[42][1] is None and before[43][1] == b"f43"
    assert list(r.diff(res.snapshot_id - 1, res.snapshot_id)) == []


def test_compacted_view_refresh_sees_no_change(tmp_path):
    cat = DirCatalog(str(tmp_path / "cat"))
    src = cat.create_dataset("src", pa.schema([("id", pa.int64()), ("image_name", pa.string()), ("feature", pa.binary())]),
                             ["id"], ["feature"])
    for i in range(5):
        src.local().append(rows([i]))
    mv = cat.materialize("mv", src.filter(lambda row: row["id"] % 2 == 0, input_fields=["id"]))
    mv.local().refresh()
    src.compact()
    res = mv.local().refresh()
    assert res.state in (OK, SKIPPED) and res.storage_statistics_update.get("rows", 0) == 0
    assert sorted(mv.local().read_all().column("id").to_pylist()) == [0, 2, 4]


def test_one_row_write_costs_its_bytes_not_128k(ds):
    ds.local().append(rows(range(1)))  # warm up directories
    before = disk_bytes(ds.location)
    for i in range(20):
        ds.local().append(rows([100 + i]))
    per_write = (disk_bytes(ds.location) - before) / 20
    assert per_write < 48 * 1024, per_write  # was > 128 KiB (the ArrayRecord padding alone)
    assert content(ds)[110][1] == b"data110"


# -- expire --------------------------------------------------------------------
def history(ds, n=5):
    r = ds.local()
    r.append(rows(range(10)))
    ds.add_tag("v1")
    for k in range(n):
        r.upsert(rows(range(10), f"r{k}"))


def test_expire_dry_run_then_apply(ds):
    history(ds)
    last = ds.snapshot_id()
    want = content(ds)
    dry = ds.expire_snapshots("0s")
    assert not dry.applied and dry.snapshot_ids == [0, 2, 3, 4, 5] and dry.files and dry.bytes > 0
    assert all(os.path.exists(os.path.join(ds.location, f)) for f in dry.files)
    assert ds.local().read_all(version=3).num_rows == 10  # nothing happened
    rep = ds.expire_snapshots(timedelta(0), apply=True)
    assert rep.applied and rep.snapshot_ids == dry.snapshot_ids and sorted(rep.files) == sorted(dry.files)
    assert not any(os.path.exists(os.path.join(ds.location, f)) for f in rep.files)
    assert ds.versions().column("snapshot_id").to_pylist() == [last, 1]
    for sid in rep.snapshot_ids:
        with pytest.raises(errors.VersionNotFoundError):
            ds.local().read_all(version=sid)
    assert content(ds) == want and len(content(ds, "v1")) == 10
    # Diff across the expired range compares the two ends.
    assert sum(c.data.num_rows for c in ds.local().diff("v1", "main")) == 20
    # Ids are never reused; vacuum copes with the holes.
    assert ds.local().append(rows([99])).snapshot_id == last + 1
    assert ds.vacuum(timedelta(0)).files == []
    assert ds.expire_snapshots("0s", apply=True).snapshot_ids == [last]


def test_expire_keeps_recent_tags_heads_and_merge_bases(ds):
    history(ds, 3)
    ds.add_branch("dev", 2)
    assert ds.expire_snapshots("1d", apply=True).snapshot_ids == []  # all younger than a day
    rep = ds.expire_snapshots("0s", apply=True)
    heads = {ds.snapshot_id("main"), ds.snapshot_id("dev"), ds.snapshot_id("v1")}
    assert not heads & set(rep.snapshot_ids)
    # The merge base of main and dev (2, dev's head) is kept: the merge still works.
    dev = Dataset.load(ds.location)
    dev.set_current_branch("dev")
    dev.local().upsert(rows([50]))
    assert ds.merge("dev").state == OK and 50 in content(ds)


def test_expire_bad_age(ds):
    for bad in ("soon", "-1d", 5):
        with pytest.raises(errors.UserInputError):
            ds.expire_snapshots(bad)


def test_expire_with_concurrent_writer(ds):
    ds.local().append(rows(range(10)))
    p = subprocess.Popen([PYTHON, os.path.join(HERE, "writer_proc.py"), ds.location, "append", "1000", "40"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline()
        for _ in range(5):
            ds.expire_snapshots("0s", apply=True)
        assert p.wait(timeout=300) == 0
    finally:
        p.kill()
        p.stdout.close()
    ds.expire_snapshots("0s", apply=True)
    got = content(Dataset.load(ds.location))
    assert len(got) == 50 and all(got[1000 + i][1] == f"data{1000 + i}".encode() for i in range(40))


def test_mv_refresh_after_source_expired_its_snapshot(tmp_path):
    cat = DirCatalog(str(tmp_path / "cat"))
    schema = pa.schema([("id", pa.int64()), ("image_name", pa.string()), ("feature", pa.binary())])
    src = cat.create_dataset("src", schema, ["id"], ["feature"])
    src.local().append(rows(range(10)))
    mv = cat.materialize("mv", src.filter(lambda row: row["id"] % 2 == 0, input_fields=["id"]))
    mv.local().refresh()
    reflected = mv.reflects()[0]["snapshot"]
    src.local().upsert(rows([2, 12], "x"))
    src.local().delete("id = 4")
    src.local().append(rows([14]))
    rep = src.expire_snapshots("0s", apply=True)
    assert reflected in rep.snapshot_ids
    mv.local().refresh()
    got = {r["id"]: r["image_name"] for r in mv.local().read_all().to_pylist()}
    want = {r["id"]: r["image_name"] for r in src.local().read_all().to_pylist() if r["id"] % 2 == 0}
    assert got == want and got[2] == "2x.jpg" and 4 not in got


def test_expire_then_compact_gives_space_back(ds):
    r = ds.local()
    blob = lambda ids, k: {"id": list(ids), "image_name": ["x"] * len(ids),  # noqa: E731
                           "feature": [os.urandom(4096) for _ in ids]}
    r.append(blob(range(200), 0))
    for k in range(5):
        r.upsert(blob(range(k * 40, k * 40 + 40), k))  # each rewrite touches a fifth
    ds.compact()
    ds.expire_snapshots("0s", apply=True)
    data = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(ds.location, "data")) for f in fs)
    assert data < 1.2 * 200 * 4096
    assert ds.local().read_all().num_rows == 200


SEEN: list[int] = []


def even(row) -> bool:
    SEEN.append(row["id"])
    return row["id"] % 2 == 0


def test_mv_refresh_over_an_expired_range_stays_incremental(tmp_path):
    cat = DirCatalog(str(tmp_path / "cat"))
    schema = pa.schema([("id", pa.int64()), ("image_name", pa.string()), ("feature", pa.binary())])
    src = cat.create_dataset("src", schema, ["id"], ["feature"])
    src.local().append(rows(range(100)))
    mv = cat.materialize("mv", src.filter(even, input_fields=["id"]))
    mv.local().refresh()
    src.add_tag("reflected")  # keeps the snapshot the MV reflects
    src.local().upsert(rows([2, 3], "x"))
    src.local().delete("id = 4")
    src.local().upsert(rows([6], "y"))
    assert src.expire_snapshots("0s", apply=True).snapshot_ids  # the path in between is gone
    SEEN.clear()
    mv.local().refresh()
    assert sorted(SEEN) == [2, 3, 6]  # only the changed rows went through the view
    got = {r["id"]: r["image_name"] for r in mv.local().read_all().to_pylist()}
    want = {r["id"]: r["image_name"] for r in src.local().read_all().to_pylist() if r["id"] % 2 == 0}
    assert got == want and got[2] == "2x.jpg" and got[6] == "6y.jpg" and 4 not in got
    # The view's own diff over that range works too.
    changes = list(src.filter(even, input_fields=["id"]).local().diff("reflected", "main"))
    assert {k for c in changes if c.change_type.value == "DELETE" for k in c.data.column("id").to_pylist()} >= {2, 4, 6}
