"""Diff of any two versions, three-way merge by key, restore."""

from __future__ import annotations

import os
import signal
import subprocess

import pyarrow as pa
import pytest

from spacefs import ChangeType, Dataset, JobResult, errors

from conftest import PYTHON, apply_changes, content, rows

HERE = os.path.dirname(os.path.abspath(__file__))
OK, SKIPPED = JobResult.State.SUCCEEDED, JobResult.State.SKIPPED



def branch(ds, name) -> Dataset:
    h = Dataset.load(ds.location)
    h.set_current_branch(name)
    return h


@pytest.fixture
def forked(ds):
    """main and dev forked from 10 rows."""
    ds.local().append(rows(range(10)))
    ds.add_branch("dev")
    return ds, branch(ds, "dev")



# -- diff ----------------------------------------------------------------------
def test_diff_sibling_branches_and_backwards(forked):
    main, dev = forked
    main.local().upsert(rows([1, 20], "m"))
    dev.local().upsert(rows([2, 30], "d"))
    dev.local().delete("id = 5")
    changes = list(main.local().diff("main", "dev"))
    assert [c.change_type for c in changes] == [ChangeType.DELETE, ChangeType.ADD]
    assert {c.snapshot_id for c in changes} == {dev.snapshot_id()}
    assert sorted(changes[0].data.column("id").to_pylist()) == [1, 2, 5, 20]
    assert sorted(changes[1].data.column("id").to_pylist()) == [1, 2, 30]
    assert apply_changes(content(main), changes) == content(dev)
    # Newer to older, along one branch.
    back = list(main.local().diff("main", 1))
    assert apply_changes(content(main), back) == content(main, 1)
    assert {c.snapshot_id for c in back} == {1}


def test_diff_ancestor_is_still_per_snapshot(forked):
    main, _ = forked
    main.local().upsert(rows([1], "a"))
    main.local().delete("id = 2")
    changes = list(main.local().diff(1, "main"))
    assert [(c.snapshot_id, c.change_type) for c in changes] == [
        (2, ChangeType.DELETE), (2, ChangeType.ADD), (3, ChangeType.DELETE)]


def test_diff_reads_only_files_that_differ(ds, monkeypatch):
    ds.local().append(rows(range(10)))
    ds.local().append(rows(range(100, 200)))  # untouched by both branches
    big = [p for p in ds.index_files() if ds.storage.live_files(2).filter(
        pa.compute.equal(ds.storage.live_files(2).column("snapshot_id"), 2)).column("path")[0].as_py() in p]
    ds.add_branch("dev")
    dev = branch(ds, "dev")
    dev.local().upsert(rows([3], "d"))
    ds.local().append(rows([500]))
    import pyarrow.parquet as pq

    from spacefs.engine.backend import LocalBackend

    read: list[str] = []
    real = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda p, *a, **k: (read.append(str(p)), real(p, *a, **k))[1])
    real_file = pq.ParquetFile
    monkeypatch.setattr(pq, "ParquetFile", lambda p, *a, **k: (read.append(str(p)), real_file(p, *a, **k))[1])
    real_bytes = LocalBackend.read_bytes  # small files read whole (manifests)
    monkeypatch.setattr(LocalBackend, "read_bytes", lambda self, rel: (read.append(str(rel)), real_bytes(self, rel))[1])
    changes = list(ds.local().diff("dev", "main"))
    assert read and big and not any(big[0] in p for p in read)
    assert apply_changes(content(dev), changes) == content(ds)


# -- merge ---------------------------------------------------------------------
def test_merge_fast_forward_and_skipped(forked):
    main, dev = forked
    assert main.merge("dev").state == SKIPPED  # same snapshot
    dev.local().upsert(rows([1], "d"))
    res = main.merge("dev")
    assert res.state == OK and res.fast_forward and res.snapshot_id == dev.snapshot_id()
    assert main.snapshot_id() == dev.snapshot_id()
    assert main.merge("dev").state == SKIPPED
    assert dev.merge("main").state == SKIPPED


def test_merge_three_way_applies_source_changes(forked):
    main, dev = forked
    dev.local().upsert(rows([2, 30], "d"))
    dev.local().delete("id = 5")
    main.local().upsert(rows([1, 40], "m"))
    theirs, ours = dev.snapshot_id(), main.snapshot_id()
    res = main.merge("dev")
    assert res.state == OK and not res.fast_forward
    snap = main.storage.snapshot(res.snapshot_id)
    assert snap["parent"] == ours and snap["merge_parent"] == theirs
    got = content(main)
    assert got[1][0] == "1m.jpg" and got[40][0] == "40m.jpg"
    assert got[2][0] == "2d.jpg" and got[30][0] == "30d.jpg" and 5 not in got
    assert len(got) == 11
    # The merge snapshot is the next merge base: merging again does nothing.
    assert main.merge("dev").state == SKIPPED
    dev.local().upsert(rows([7], "d2"))
    main.merge("dev")
    assert content(main)[7][0] == "7d2.jpg" and content(main)[1][0] == "1m.jpg"


def test_merge_records_are_shared_not_copied(forked):
    main, dev = forked
    dev.local().upsert(rows([2], "d"))
    main.local().upsert(rows([1], "m"))
    dev_records = set(dev.storage.record_manifest(version="dev").column("path").to_pylist())
    res = main.merge("dev")
    after = set(main.storage.record_manifest().column("path").to_pylist())
    assert res.storage_statistics_update["rows"] == 0
    assert after <= dev_records | set(main.storage.record_manifest(version=res.snapshot_id - 1).column("path").to_pylist())


def test_merge_agreeing_changes_are_no_conflict(forked):
    main, dev = forked
    dev.local().upsert(rows([3], "same"))
    main.local().upsert(rows([3], "same"))
    dev.local().delete("id = 4")
    main.local().delete("id = 4")
    res = main.merge("dev")
    assert res.state == OK
    assert content(main)[3][0] == "3same.jpg" and 4 not in content(main)


CONFLICTS = {
    "update/update": (lambda d: d.local().upsert(rows([3], "d")), lambda m: m.local().upsert(rows([3], "m"))),
    "update/delete": (lambda d: d.local().upsert(rows([3], "d")), lambda m: m.local().delete("id = 3")),
    "delete/update": (lambda d: d.local().delete("id = 3"), lambda m: m.local().upsert(rows([3], "m"))),
    "insert/insert": (lambda d: d.local().insert(rows([50], "d")), lambda m: m.local().insert(rows([50], "m"))),
}


@pytest.mark.parametrize("kind", sorted(CONFLICTS))
@pytest.mark.parametrize("mode", ["fail", "ours", "theirs"])
def test_merge_conflicts(forked, kind, mode):
    main, dev = forked
    on_dev, on_main = CONFLICTS[kind]
    on_dev(dev)
    dev.local().upsert(rows([8], "clean"))  # a non-conflicting change rides along
    on_main(main)
    key = 50 if kind == "insert/insert" else 3
    ours, theirs = content(main), content(dev)
    head = main.storage.head().seq
    if mode == "fail":
        with pytest.raises(errors.MergeConflictError) as e:
            main.merge("dev")
        assert isinstance(e.value.keys, pa.Table) and e.value.keys.to_pylist() == [{"id": key}]
        assert main.storage.head().seq == head  # nothing changed
        assert content(main) == ours
        return
    res = main.merge("dev", on_conflict=mode)
    assert res.state == OK
    got = content(main)
    want = ours if mode == "ours" else theirs
    assert got.get(key) == want.get(key)
    assert got[8][0] == "8clean.jpg"


def test_merge_bad_arguments(forked):
    main, _ = forked
    with pytest.raises(errors.UserInputError):
        main.merge("dev", on_conflict="mine")
    with pytest.raises(errors.VersionNotFoundError):
        main.merge("nope")
    with pytest.raises(errors.VersionNotFoundError):
        main.merge("dev", into="nope")


def test_merge_racing_appends_from_another_process(forked):
    main, dev = forked
    p = subprocess.Popen([PYTHON, os.path.join(HERE, "writer_proc.py"), main.location, "append", "1000", "60"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline()
        merged = []
        for k in range(5):
            dev.local().upsert(rows([k], f"d{k}"))
            res = main.merge("dev")
            assert res.state == OK
            merged.append(res.snapshot_id)
        assert p.wait(timeout=300) == 0
    finally:
        p.kill()
        p.stdout.close()
    got = content(main)
    assert all(1000 + i in got for i in range(60))  # no append lost
    assert all(got[k][0] == f"{k}d{k}.jpg" for k in range(5))  # no merge lost
    for sid in merged:
        assert main.storage.snapshot(sid).get("merge_parent") is not None or main.storage.snapshot(sid)["op"] != "merge"


@pytest.mark.parametrize("point", ["commit:before_publish", "commit:after_publish"])
def test_merge_killed_mid_commit(forked, point):
    main, dev = forked
    dev.local().upsert(rows([2], "d"))
    main.local().upsert(rows([1], "m"))
    before = content(main)
    env = {**os.environ, "SPACEFS_FAILPOINT": point}
    p = subprocess.run([PYTHON, os.path.join(HERE, "writer_proc.py"), main.location, "merge", "dev", "main", "fail"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    fresh = Dataset.load(main.location)
    if point == "commit:before_publish":
        assert content(fresh) == before
        assert fresh.merge("dev").state == OK
    else:
        assert fresh.merge("dev").state == SKIPPED  # it had landed
    got = content(fresh)
    assert got[2][0] == "2d.jpg" and got[1][0] == "1m.jpg"


# -- restore -------------------------------------------------------------------
def test_restore(forked):
    main, _ = forked
    r = main.local()
    r.upsert(rows([1], "x"))
    r.delete("id = 2")
    r.append(rows([77]))
    old = content(main, 1)
    files_before = set(main.storage.live_files(1).column("path").to_pylist())
    res = main.restore(1)
    assert res.state == OK
    assert content(main) == old
    assert set(main.storage.live_files(res.snapshot_id).column("path").to_pylist()) == files_before  # no copy
    assert main.restore(1).state == SKIPPED
    assert content(main, res.snapshot_id - 1)[77]  # history kept
    assert apply_changes(content(main, res.snapshot_id - 1), main.local().diff(res.snapshot_id - 1, res.snapshot_id)) == old
    # Restore forward again re-adds files that were removed before.
    fwd = main.restore(res.snapshot_id - 1)
    assert content(main) == content(main, res.snapshot_id - 1)
    assert main.num_rows() == len(content(main))
    assert fwd.state == OK
    with pytest.raises(errors.VersionNotFoundError):
        main.restore(999)


def test_restore_across_a_compaction_is_skipped(forked):
    main, _ = forked
    main.local().append(rows([40]))
    before = main.snapshot_id()
    assert main.compact().state == OK
    assert main.restore(before).state == SKIPPED  # same rows, other files
