"""Diffs between any two versions, checked against the rows themselves on random histories."""

from __future__ import annotations

import random

import pytest

from spacefs import Dataset
from spacefs.engine.keydiff import row_changes

from conftest import apply_changes, content, rows


@pytest.mark.parametrize("seed", range(4))
def test_random_branches_diff_both_ways(ds, seed):
    rnd = random.Random(seed)
    ds.local().append(rows(range(40)))
    ds.local().append(rows(range(40, 80)))
    branches = {"main": ds}
    for name in ("a", "b"):
        ds.add_branch(name)
        h = Dataset.load(ds.location)
        h.set_current_branch(name)
        branches[name] = h
    for step in range(12):
        h = branches[rnd.choice(["main", "a", "b"])]
        op = rnd.random()
        ids = rnd.sample(range(100), rnd.randint(1, 6))
        if op < 0.4:
            h.local().upsert(rows(ids, f"s{seed}x{step}"))
        elif op < 0.6:
            h.local().delete(f"id IN ({', '.join(map(str, ids))})")
        elif op < 0.7:
            h.compact()
        elif op < 0.8:
            h.restore(rnd.randint(1, h.snapshot_id()))
        else:
            other = rnd.choice(["main", "a", "b"])
            if other != h.current_branch:
                h.merge(other, on_conflict=rnd.choice(["ours", "theirs"]))
    versions = sorted(set(ds.versions().column("snapshot_id").to_pylist()))
    for _ in range(15):
        x, y = rnd.choice(versions), rnd.choice(versions)
        got = apply_changes(content(ds, x), ds.local().diff(x, y))
        assert got == content(ds, y), (x, y)
        # The file-list comparison agrees on the net change.
        ch = row_changes(ds.storage, x, y)
        assert ch.new.num_rows <= len(content(ds, y))


def test_sibling_diff_reads_only_row_groups_with_changed_keys(ds):
    """A sibling diff looks the fork-point rows of the other side's keys up in a base
    file of many row groups: groups pruned by key statistics, the rest read per group."""
    from spacefs.engine.options import FileOptions

    small = FileOptions(index_row_group_rows=10)
    ds.local(small).append(rows(range(200)))
    base = ds.snapshot_id()
    heads = {}
    for name in ("a", "b"):
        ds.add_branch(name, base)
        heads[name] = Dataset.load(ds.location)
        heads[name].set_current_branch(name)
    # a touches keys in three row groups (one of them twice, one key also deleted);
    # b touches others and one key a touched too.
    heads["a"].local(small).upsert(rows([3, 7, 55, 150, 42], "a"))
    heads["a"].local(small).delete("id = 55")
    heads["b"].local(small).upsert(rows([120, 7, 199], "b"))
    for x, y in (("a", "b"), ("b", "a")):
        got = apply_changes(content(ds, x), ds.local().diff(x, y))
        assert got == content(ds, y), (x, y)
