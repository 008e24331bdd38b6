"""Sibling and backward diffs checked against a brute-force diff of the two full reads.

The sibling diff replays both branches' change records from their merge base and takes
the rows a change replaced from its changes file (older changes files hold keys only:
then it looks them up). Whatever path it takes, applying it to one side must give the
other, and it must touch no key whose row is the same on both sides, except a key both
sides left with equal rows (it cancels) or one side rewrote to equal content.
"""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spacefs import ChangeType, Dataset

from conftest import rows

SCHEMA2 = pa.schema([("shard", pa.string()), ("n", pa.int32()), ("note", pa.string()), ("blob", pa.binary())])


def branch(ds, name, at=None) -> Dataset:
    ds.add_branch(name, at)
    h = Dataset.load(ds.location)
    h.set_current_branch(name)
    return h


def full(ds, version, pk) -> dict:
    t = ds.local().read_all(version=version)
    return {tuple(r[k] for k in pk): r for r in t.to_pylist()}


def check(ds, x, y, pk) -> tuple[set, set]:
    """Diff x -> y against the full reads; returns the (deleted, added) keys.

    A diff along one ancestry is per snapshot (a key may come and go on the way); any
    other is one DELETE and one ADD, which must name only rows of x and y."""
    before, after = full(ds, x, pk), full(ds, y, pk)
    changes = list(ds.local().diff(x, y))
    deleted, added, out = set(), set(), dict(before)
    for c in changes:
        if c.change_type == ChangeType.DELETE:
            assert c.data.column_names == pk  # keys only, whatever the changes file holds
            for r in c.data.to_pylist():
                k = tuple(r[n] for n in pk)
                deleted.add(k)
                out.pop(k, None)
        else:
            keys = [tuple(r[n] for n in pk) for r in c.data.to_pylist()]
            assert len(set(keys)) == len(keys), f"a key added twice by one change: {keys}"
            for k, r in zip(keys, c.data.to_pylist(), strict=True):
                added.add(k)
                out[k] = r
    assert out == after, (x, y)
    # Brute force: every key whose row differs is in the diff; deletes name rows of x.
    differ = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert differ <= deleted | added
    if len({c.snapshot_id for c in changes}) == 1 and len(changes) <= 2:
        assert deleted <= before.keys()
        assert added <= after.keys()
    return deleted, added


def test_sibling_diff_deletes_upserts_and_identical_changes(ds):
    ds.local().append(rows(range(50)))
    base = ds.snapshot_id()
    a, b = branch(ds, "a", base), branch(ds, "b", base)
    a.local().upsert(rows([1, 2, 3, 60], "a"))        # 60 is new
    a.local().delete("id IN (4, 5)")
    b.local().upsert(rows([2, 7, 70], "b"))           # 2: both upserted, differently
    b.local().delete("id IN (5, 8)")                  # 5: both deleted
    a.local().upsert(rows([10, 11], "same"))          # identical changes on both sides
    b.local().upsert(rows([10, 11], "same"))
    a.local().upsert(rows([3], "again"))              # a key changed twice
    for x, y in (("a", "b"), ("b", "a")):
        deleted, added = check(ds, x, y, ["id"])
        assert not {(5,), (10,), (11,)} & (deleted | added)
    deleted, added = check(ds, "a", "b", ["id"])
    assert deleted == {(1,), (2,), (3,), (60,), (7,), (8,)} and added == {(1,), (2,), (3,), (4,), (7,), (70,)}
    # Backwards along one branch, and sibling against the fork point both ways.
    check(ds, "a", base, ["id"])
    check(ds, base, "b", ["id"])


def test_changes_file_holds_removed_rows_and_old_key_only_files_still_work(ds):
    """An upsert's changes file holds the replaced rows whole; a changes file of an older
    writer (keys only) makes the diff look the rows up instead, with the same result."""
    ds.local().append(rows(range(20)))
    base = ds.snapshot_id()
    a, b = branch(ds, "a", base), branch(ds, "b", base)
    a.local().upsert(rows([1, 2], "a"))
    a.local().delete("id = 3")
    b.local().upsert(rows([9], "b"))
    st = ds.storage
    rel = st.snapshot(a.snapshot_id() - 1)["deleted"]
    t = pq.read_table(st.full_path(rel))
    assert t.column_names == st.index_schema.names and sorted(t.column("id").to_pylist()) == [1, 2]
    expected = {xy: check(ds, *xy, ["id"]) for xy in (("a", "b"), ("b", "a"), ("a", base))}
    for sid in range(base + 1, a.snapshot_id() + 1):  # rewrite a's changes files as keys only
        rel = st.snapshot(sid).get("deleted")
        if rel:
            path = st.full_path(rel)
            pq.write_table(pq.read_table(path, columns=["id"]), path)
    fresh = Dataset.load(ds.location)
    for xy, want in expected.items():
        assert check(fresh, *xy, ["id"]) == want


def test_sibling_diff_after_restore_and_merge(ds):
    ds.local().append(rows(range(30)))
    base = ds.snapshot_id()
    a, b = branch(ds, "a", base), branch(ds, "b", base)
    a.local().upsert(rows([1, 2], "a"))
    a.restore(base)                                   # keys-only changes file
    a.local().delete("id = 4")
    b.local().upsert(rows([2, 6], "b"))
    b.merge("main")
    for x, y in (("a", "b"), ("b", "a"), ("a", "main"), ("b", base)):
        check(ds, x, y, ["id"])


def test_sibling_diff_composite_key(tmp_path):
    ds = Dataset.create(str(tmp_path / "c"), SCHEMA2, primary_keys=["shard", "n"], record_fields=["blob"])

    def data(keys, tag):
        return {"shard": [s for s, _ in keys], "n": [n for _, n in keys], "note": [f"{tag}{n}" for _, n in keys],
                "blob": [f"{s}{n}{tag}".encode() for s, n in keys]}

    ds.local().append(data([(s, n) for s in "xy" for n in range(10)], ""))
    base = ds.snapshot_id()
    a, b = branch(ds, "a", base), branch(ds, "b", base)
    a.local().upsert(data([("x", 1), ("y", 1), ("z", 0)], "a"))
    a.local().delete("shard = 'y' AND n > 7")
    b.local().upsert(data([("x", 1), ("x", 2)], "b"))
    b.local().upsert(data([("y", 1)], "a"))           # same as a's
    for x, y in (("a", "b"), ("b", "a")):
        deleted, added = check(ds, x, y, ["shard", "n"])
        assert ("y", 1) not in deleted | added  # the same change on both sides cancels
    check(ds, "a", base, ["shard", "n"])


@pytest.mark.parametrize("seed", range(6))
def test_random_sibling_diffs_match_full_reads(ds, seed):
    rnd = random.Random(1000 + seed)
    ds.local().append(rows(range(60)))
    base = ds.snapshot_id()
    heads = {"a": branch(ds, "a", base), "b": branch(ds, "b", base)}
    for step in range(14):
        name = rnd.choice("ab")
        h = heads[name]
        op = rnd.random()
        ids = rnd.sample(range(80), rnd.randint(1, 8))
        if op < 0.45:
            # Some tags repeat across branches: identical changes on both sides.
            h.local().upsert(rows(ids, rnd.choice(["s", f"{name}{step}"])))
        elif op < 0.75:
            h.local().delete(f"id IN ({', '.join(map(str, ids))})")
        elif op < 0.85:
            h.compact()
        else:
            h.local().append(rows([1000 + step * 10 + name.encode()[0] % 2], name))
    for x, y in (("a", "b"), ("b", "a"), ("a", base), (base, "b"), ("b", base)):
        check(ds, x, y, ["id"])
