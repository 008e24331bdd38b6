"""Small writes merge small files at commit time: few live files, every version and diff exact.

Each check compares against a plain recomputation: the rows of every version read
back whole, diffs applied to one version's rows and compared to the other's.
"""

from __future__ import annotations

import os
import random

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spacefs import ChangeType, Dataset, DirCatalog, FileOptions
from spacefs.engine import autocompact
from spacefs.engine.manifest import INDEX, RECORD

from conftest import apply_changes, content, rows


def live(ds: Dataset, version=None) -> pa.Table:
    return ds.storage.live_files(ds.snapshot_id(version))


def count(ds: Dataset, kind: str, version=None) -> int:
    t = live(ds, version)
    return t.filter(pc.equal(t.column("kind"), kind)).num_rows


def one_row_appends(ds: Dataset, ids) -> dict[int, dict]:
    """Append one row per id; the expected rows of every snapshot made."""
    expected = {ds.snapshot_id(): content(ds, None)}
    state = dict(expected[ds.snapshot_id()])
    for i in ids:
        ds.local().append(rows([i]))
        state[i] = (f"{i}.jpg", f"data{i}".encode())
        expected[ds.snapshot_id()] = dict(state)
    return expected


def test_one_row_appends_leave_logarithmic_files_and_exact_versions(ds):
    expected = one_row_appends(ds, range(100))
    # About log2(100) files (64, 32, 3 + the newest), not 100.
    assert count(ds, INDEX) <= 8
    assert count(ds, RECORD) <= 8
    assert ds.storage.snapshot(ds.snapshot_id())["stats"]["index_files"] == count(ds, INDEX)
    for sid, want in expected.items():  # time travel to every version
        assert content(ds, sid) == want, sid
    # Every snapshot's own change is exactly its one new row, whatever it merged.
    for sid in range(2, ds.snapshot_id() + 1):
        changes = list(ds.local().diff(sid - 1, sid))
        assert [c.change_type for c in changes] == [ChangeType.ADD], sid
        assert changes[0].data.column("id").to_pylist() == [sid - 1]
        assert changes[0].data.column("feature").to_pylist() == [f"data{sid - 1}".encode()]


def test_merged_files_are_marked_rewrite_and_replace_what_they_merge(ds):
    one_row_appends(ds, range(5))  # the fifth append merges the first four
    delta = ds.storage.manifests.read(ds.storage.snapshot(5)["delta"]).to_pylist()
    adds = [r for r in delta if r["status"] == 1 and r["kind"] == INDEX]
    assert sorted((r["rows"], r["rewrite"]) for r in adds) == [(1, False), (4, True)]
    gone = {r["path"] for r in delta if r["status"] == -1}
    assert {r["path"] for r in live(ds, 4).to_pylist()} <= gone  # every index file and its records
    assert count(ds, INDEX) == 2 and count(ds, RECORD) == 2


def test_diffs_between_any_versions_and_branches(ds):
    rnd = random.Random(3)
    ds.local().append(rows(range(50)))
    ds.add_branch("dev")
    dev = Dataset.load(ds.location)
    dev.set_current_branch("dev")
    for step in range(60):
        h = rnd.choice([ds, dev])
        k = rnd.randrange(200)
        op = rnd.random()
        if op < 0.6:
            h.local().upsert(rows([k], f"s{step}"))  # new keys and keys inside merged files
        elif op < 0.8:
            h.local().delete(f"id = {k}")
        else:
            h.local().append(rows([1000 + step]))
    assert count(ds, INDEX, "main") < 20 and count(ds, INDEX, "dev") < 20
    versions = ds.versions().column("snapshot_id").to_pylist()
    for sid in versions:  # per-snapshot changes along each ancestry
        parent = ds.storage.snapshot(sid)["parent"]
        if parent is not None:
            assert apply_changes(content(ds, parent), ds.local().diff(parent, sid)) == content(ds, sid), sid
    for _ in range(25):  # ancestors, siblings, newer to older
        x, y = rnd.choice(versions), rnd.choice(versions)
        assert apply_changes(content(ds, x), ds.local().diff(x, y)) == content(ds, y), (x, y)
    assert apply_changes(content(ds, "main"), ds.local().diff("main", "dev")) == content(ds, "dev")
    assert apply_changes(content(ds, 1), ds.local().diff(1, "dev")) == content(ds, "dev")
    assert apply_changes(content(ds, "dev"), ds.local().diff("dev", 1)) == content(ds, 1)


def test_merge_restore_expire_after_small_writes(ds):
    ds.local().append(rows(range(10)))
    ds.add_branch("dev")
    dev = Dataset.load(ds.location)
    dev.set_current_branch("dev")
    one_row_appends(dev, range(100, 120))
    one_row_appends(ds, range(200, 220))
    ds.local().upsert(rows([3, 205], "x"))  # keys inside files merged on main
    before = content(ds, None)
    old = ds.snapshot_id()
    ds.merge("dev", on_conflict="ours")
    want = {**content(ds, "dev"), **before}
    assert content(ds, None) == want
    ds.local().append(rows([999]))
    after_merge = ds.snapshot_id()
    ds.restore(old)
    assert content(ds, None) == before
    assert apply_changes(content(ds, after_merge), ds.local().diff(after_merge, None)) == before
    on_dev = content(ds, "dev")
    rep = ds.expire_snapshots("0s", apply=True)
    assert rep.snapshot_ids and rep.files  # the small files merged away are reclaimed
    assert content(ds, None) == before and content(ds, "dev") == on_dev
    ds.compact()
    assert content(ds, None) == before and count(ds, INDEX) == 1


def test_mv_refresh_after_small_appends_equals_a_rebuild(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("label", pa.string()), ("blob", pa.binary())])
    cat = DirCatalog(str(tmp_path / "cat"))
    src = cat.create_dataset("src", schema, ["id"], ["blob"])
    src.local().append({"id": [0], "label": ["a"], "blob": [b"b0"]})
    mv = cat.materialize("mv", src.filter(lambda r: r["id"] % 3 != 1))
    mv.local().refresh()
    for i in range(1, 60):
        src.local().append({"id": [i], "label": [f"l{i % 4}"], "blob": [f"b{i}".encode()]})
        if i % 7 == 0:
            src.local().upsert({"id": [i // 2], "label": ["u"], "blob": [b"new"]})
        if i % 20 == 0:
            mv.local().refresh()
    mv.local().refresh()
    got = mv.local().read_all().sort_by("id")
    want = [r for r in src.local().read_all().sort_by("id").to_pylist() if r["id"] % 3 != 1]
    assert got.to_pylist() == [{n: r[n] for n in got.column_names} for r in want]
    rebuilt = cat.materialize("mv2", src.filter(lambda r: r["id"] % 3 != 1))
    rebuilt.local().refresh()
    assert rebuilt.local().read_all().sort_by("id").to_pydict() == got.to_pydict()


def test_null_records_and_large_files_are_handled(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("image_name", pa.string()), ("feature", pa.binary())])
    ds = Dataset.create(str(tmp_path / "ds"), schema, ["id"], ["feature"])
    big = autocompact.SMALL_INDEX_ROWS
    ds.local().append(rows(range(big)))  # too many rows to be small: never rewritten
    big_file = ds.index_files()
    for i in range(big, big + 9):
        ds.local().append({"id": [i], "image_name": [None], "feature": [None if i % 2 else b"x"]})
    assert set(big_file) <= set(ds.index_files())
    got = ds.local().read_all(filter_=f"id >= {big}").sort_by("id").to_pydict()
    assert got["feature"] == [None if i % 2 else b"x" for i in range(big, big + 9)]
    assert got["image_name"] == [None] * 9
    assert count(ds, INDEX) <= 5


def test_merges_can_be_turned_off(ds):
    r = ds.local(FileOptions(merge_small_files=False))
    for i in range(5):
        r.append(rows([i]))
    assert count(ds, INDEX) == 5 and count(ds, RECORD) == 5


@pytest.mark.parametrize("sizes,expected", [
    ([1], []), ([1, 1, 1], []), ([1, 1, 1, 1], [0, 1, 2, 3]),  # the lowest tier merges in fours
    ([2, 1, 1, 1], []), ([4, 1, 1, 1, 1], [0, 1, 2, 3, 4]),  # ... and carries into the next tier
    ([8, 4, 2, 1, 1, 1, 1], [0, 1, 3, 4, 5, 6]),  # the carry goes up (past the 2): one file written
    ([16, 8, 3, 1, 1], []), ([16, 16, 1], [0, 1]),  # above the lowest tier, two files are full
    ([9000, 1, 1, 1, 1], [1, 2, 3, 4]),  # a large file never takes part
])
def test_pick_merges_a_full_tier_and_its_carry(sizes, expected):
    entries = [{"path": f"f{i}", "rows": n, "snapshot_id": i, "record_files": [f"r{i}"]} for i, n in enumerate(sizes)]
    record_bytes = {f"r{i}": 10 * n for i, n in enumerate(sizes)}
    assert [e["path"] for e in autocompact.pick(entries, record_bytes)] == [f"f{i}" for i in expected]
    # Too many record bytes make a file large too.
    heavy = {k: autocompact.SMALL_RECORD_BYTES for k in record_bytes}
    assert autocompact.pick(entries, heavy) == []


def test_mount_lists_merged_files_and_rows_of_every_version(tmp_path):
    from mount_util import make_catalog, mounted
    from mount_util import rows as mount_rows

    c, ds = make_catalog(str(tmp_path), n=3)
    for i in range(3, 12):
        ds.local().append(mount_rows([i]))
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    with mounted(c.location, mnt):
        versions = os.path.join(mnt, "pets", "versions")
        for sid in range(1, ds.snapshot_id() + 1):
            listed = sorted(os.listdir(os.path.join(versions, str(sid), "index")))
            assert listed == sorted(os.path.basename(p) for p in ds.index_files(sid)), sid
            ids = sorted(int(n) for n in os.listdir(os.path.join(versions, str(sid), "rows")))
            assert ids == list(range(sid + 2)), sid


def test_small_writes_merge_in_a_bucket(s3_bucket):
    from conftest import SCHEMA

    ds = Dataset.create(f"{s3_bucket}/ds", SCHEMA, primary_keys=["id"], record_fields=["feature"])
    expected = one_row_appends(ds, range(12))
    ds.local().upsert(rows([2, 7], "u"))
    assert count(ds, INDEX) <= 5 and count(ds, RECORD) <= 5
    for sid, want in expected.items():
        assert content(ds, sid) == want, sid
    assert content(ds, None) == {**expected[12], 2: ("2u.jpg", b"data2u"), 7: ("7u.jpg", b"data7u")}
    assert apply_changes(content(ds, 5), ds.local().diff(5, None)) == content(ds, None)


def test_small_manifest_cancel_agrees_with_arrow():
    """Manifest lists of up to SMALL_CANCEL_ROWS rows are cancelled in Python: the same
    rows as the Arrow version, legacy removals (null snapshot id) and nulls included."""
    from spacefs.engine.manifest import _cancel_arrow, _cancel_small

    rnd = random.Random(1)
    for _ in range(500):
        n = rnd.randint(0, 30)
        t = pa.table({
            "status": pa.array([rnd.choice([1, -1, 1, 0]) for _ in range(n)], pa.int8()),
            "path": pa.array([None if rnd.random() < 0.05 else rnd.choice("abcd") for _ in range(n)], pa.string()),
            "snapshot_id": pa.array([rnd.choice([1, 2, 3, None]) for _ in range(n)], pa.int64()),
            "row": pa.array(range(n), pa.int64()),
        })
        want = _cancel_arrow(t)
        assert _cancel_small(t).equals(want), t.to_pylist()
        assert _cancel_small(t, adds_only=True).equals(want.filter(pc.equal(want.column("status"), 1))), t.to_pylist()


def test_reads_keep_the_order_rows_were_written_in(ds):
    one_row_appends(ds, range(70))
    assert ds.local().read_all(fields=["id"]).column("id").to_pylist() == list(range(70))


def test_merges_read_files_written_by_other_processes(ds):
    """A merge takes the rows this process wrote lately from memory; files it did not
    write (another process, or forgotten) are read back: the same rows either way."""
    from spacefs.engine.writes import forget_recent

    expected = {}
    for i in range(9):
        ds.local().append(rows([i]))
        if i % 2:
            forget_recent()  # half of the files are merged from disk
        expected[ds.snapshot_id()] = content(ds, None)
    assert count(ds, INDEX) <= 4
    for sid, want in expected.items():
        assert content(ds, sid) == want
    assert ds.local().read_all(fields=["id"]).column("id").to_pylist() == list(range(9))


def test_manifest_list_of_a_small_live_set_is_one_file(ds):
    """Few live files: every snapshot lists one manifest holding exactly its live files."""
    one_row_appends(ds, range(60))
    for sid in range(1, ds.snapshot_id() + 1):
        snap = ds.storage.snapshot(sid)
        assert len(snap["manifests"]) == 1, sid
        on_disk = ds.storage.manifests._read(snap["manifests"][0]["path"])  # the file, not the cache
        assert on_disk.num_rows == snap["manifests"][0]["entries"]
        assert set(on_disk.column("status").to_pylist()) <= {1}  # removals cancelled away
        assert sorted(on_disk.column("path").to_pylist()) == sorted(live(ds, sid).column("path").to_pylist())


def test_manifest_list_of_a_large_live_set_stays_logarithmic(ds):
    from spacefs.engine.manifest import SMALL_LIST_ENTRIES

    runner = ds.local(file_options=FileOptions(merge_small_files=False))
    n = SMALL_LIST_ENTRIES + 45  # two entries (index + record file) a write: past the bound
    for i in range(n):
        runner.append(rows([i]))
    manifests = ds.storage.snapshot(ds.snapshot_id())["manifests"]
    assert sum(m["entries"] for m in manifests) >= 2 * n
    assert 1 < len(manifests) <= n.bit_length() + 1
    assert sorted(ds.local().read_all().column("id").to_pylist()) == list(range(n))


def test_rows_kept_for_merges_stay_within_their_bound(ds, monkeypatch):
    """The in-memory copy of recent small writes is bounded by bytes, keeps no big
    file, and never pins the batch a small write was sliced from."""
    from spacefs.engine import writes

    writes.forget_recent()
    monkeypatch.setattr(writes, "RECENT_MAX_BYTES", 64 << 10)
    big = {"id": list(range(1000, 1300)), "image_name": ["x.jpg"] * 300, "feature": [b"x" * 4096] * 300}
    ds.local().append(big)  # ~1.2 MB: above the per-file bound, not kept
    assert writes._recent_bytes == 0
    for i in range(40):  # 40 x ~5 KiB rows: more than the 64 KiB bound
        ds.local().append({"id": [i], "image_name": [f"{i}.jpg"], "feature": [b"y" * 5000]})
    assert 0 < writes._recent_bytes <= 64 << 10
    assert all(t.get_total_buffer_size() <= 2 * t.nbytes + 4096 for t in writes._recent.values())
    writes.forget_recent()
