"""Snapshot views built from per-index-file pieces (mount/pieces.py) and the cache bounded
by memory that holds them (mount/memlru.py): the same names, rows and times as a view
computed from the whole snapshot at once, each index file's work done once, and the
cache's bytes within its bound however many versions are walked."""

from __future__ import annotations

import gc
import os
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest
from mount_util import mounted

from spacefs import Dataset, DirCatalog, FileOptions
from spacefs.engine.layout import (
    key_names,
    last_wins,
    layout_paths,
    place,
    row_snapshots,
    write_order,
)
from spacefs.engine.reads import read_all
from spacefs.engine.storage import Storage
from spacefs.mount import pieces, snapshot
from spacefs.mount.memlru import MemLRU
from spacefs.mount.tree import FILES, ROWS, Node, Tree, _ns

SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("name", pa.string()), ("img", pa.binary())])
LAYOUT = {"path": "{label}/{name}", "content": "img"}


def history(location: str, commits: int) -> Dataset:
    """A dataset where each commit changes about one row: upserts that move a row to
    another path, new rows, and (every 7th) an append of an existing key at an existing
    path, so names and paths collide across index files and the newest row must win.
    Small files are not merged: versions share most of their files, as the tests want."""
    ds = Dataset.create(location, SCHEMA, ["id"], ["img"], file_layout=LAYOUT)
    r = ds.local(FileOptions(merge_small_files=False))
    r.append({"id": list(range(20)), "label": [f"l{i % 3}" for i in range(20)],
              "name": [f"{i}.bin" for i in range(20)], "img": [b"v0-%d" % i for i in range(20)]})
    for c in range(1, commits):
        if c % 7 == 0:
            r.append({"id": [c % 20], "label": ["l0"], "name": ["0.bin"], "img": [b"dup%d" % c]})
        elif c % 2:
            i = c % 20
            r.upsert({"id": [i], "label": [f"m{c % 5}"], "name": [f"{i}.bin"], "img": [b"u%d" % c]})
        else:
            r.append({"id": [1000 + c], "label": ["new"], "name": [f"{c}.bin"], "img": [b"n%d" % c]})
    return ds


def reference(storage: Storage, sid: int) -> tuple[dict[str, int], dict[str, int], set[str], list[int]]:
    """What a snapshot shows, computed from all its rows at once (the engine's functions,
    no pieces): rows/ names and files/ paths to row numbers, directories, row times."""
    t = read_all(storage, version=sid, reference_read=True).combine_chunks()
    sids = row_snapshots(storage.index_entries(sid), t.num_rows, sid)
    order = write_order(sids)
    by_name, _ = last_wins(key_names(t, storage.primary_keys), order)
    idx = place(layout_paths(t, storage.file_layout(sid)), order)
    times = [_ns(storage.snapshot(int(s))["time"]) for s in sids]
    return by_name, idx.files, set(idx.dirs), times


def listed(tree: Tree, node: Node) -> dict[str, Node]:
    entries = list(tree.children(node))
    out = dict(entries)
    assert len(out) == len(entries), "a name listed twice"
    return out


def check_version(tree: Tree, storage: Storage, sid: int) -> None:
    by_name, files, dirs, times = reference(storage, sid)
    rows = listed(tree, Node(ROWS, storage.name, sid))
    assert {n: node.row for n, node in rows.items()} == by_name
    assert [node.row for node in rows.values()] == sorted(by_name.values())  # rows/ lists in row order
    written = {r: i for i, r in enumerate(write_order(row_snapshots(storage.index_entries(sid), len(times), sid)))}
    for n, node in rows.items():
        assert tree.lookup(Node(ROWS, storage.name, sid), n) == node
        assert tree.attrs(node).mtime_ns == times[node.row]
    got, stack = {}, [""]
    while stack:
        d = stack.pop()
        assert d in dirs
        entries = listed(tree, Node(FILES, storage.name, sid, name=d)).values()
        order = [written[node.row] for node in entries if node.kind != FILES]
        assert order == sorted(order)  # a directory lists its files in write order
        for node in entries:
            if node.kind == FILES:
                stack.append(node.name)
            else:
                got[node.name] = node.row
                assert tree.attrs(node).mtime_ns == times[node.row]
    assert got == files


@pytest.mark.parametrize("bound", [256 << 20, 384 << 10])  # (the walk needs ~1.6 MiB: the small one evicts)
@pytest.mark.parametrize("small", [0, 5, 64])  # names looked up in each piece, in the view's dict, or both
def test_views_from_pieces_match_whole_snapshot_reads(tmp_path, monkeypatch, bound, small):
    monkeypatch.setattr(snapshot, "SMALL_PIECE", small)
    ds = history(str(tmp_path / "d"), 60)
    storage = Storage(ds.location)
    with Tree(ds.location, cache_bytes=bound) as tree:
        for sid in range(storage.head().last_snapshot_id + 1):
            check_version(tree, storage, sid)
            assert tree.cache.nbytes <= bound
        assert tree.cache.peak <= bound


def test_names_and_paths_whose_hashes_collide_are_told_apart(tmp_path, monkeypatch):
    """Views find names and paths two files share by their hashes: with a hash where
    names of one length all collide, every candidate is compared as a string."""
    def weak(names: list[str]) -> np.ndarray:
        return np.fromiter(map(len, names), dtype=np.int64, count=len(names))

    monkeypatch.setattr(pieces, "name_hashes", weak)
    monkeypatch.setattr(snapshot, "name_hashes", weak)
    monkeypatch.setattr(snapshot, "SMALL_PIECE", 0)
    ds = history(str(tmp_path / "d"), 30)
    storage = Storage(ds.location)
    with Tree(ds.location) as tree:
        for sid in range(storage.head().last_snapshot_id + 1):
            check_version(tree, storage, sid)


def test_each_index_file_is_built_once_however_many_versions_hold_it(tmp_path):
    ds = history(str(tmp_path / "d"), 100)
    storage = Storage(ds.location)
    last = storage.head().last_snapshot_id
    distinct = {e["path"] for sid in range(last + 1) for e in storage.index_entries(sid) if e["rows"]}
    held = sum(len(storage.index_entries(sid)) for sid in range(last + 1))
    assert held > 5 * len(distinct)  # (the files are shared: the test means something)
    before = dict(pieces.BUILDS)
    with Tree(ds.location) as tree:
        for _ in range(2):
            for sid in range(last + 1):
                listed(tree, Node(ROWS, ds.name, sid))
                listed(tree, Node(FILES, ds.name, sid))
    assert pieces.BUILDS["index"] - before.get("index", 0) == len(distinct)
    assert pieces.BUILDS["files"] - before.get("files", 0) == len(distinct)


def test_the_cache_bound_holds_and_views_pin_their_pieces():
    c = MemLRU(1000)
    c.put("p1", "piece1", 300)
    c.put("p2", "piece2", 300)
    c.put("v", "view", 100, deps=[("p1", "piece1", 300), ("p2", "piece2", 300)])
    c.put("p3", "piece3", 400)  # over the bound: p1, p2 are pinned, the view goes first
    assert c.nbytes <= 1000 and c.get("v") is None and c.get("p3") == "piece3"
    c.put("big", "too big", 5000)  # larger than the bound: kept alone, until the next put
    assert c.get("big") == "too big" and c.nbytes == 5000 and len(c) == 1
    c.put("p3", "piece3", 400)
    assert c.get("big") is None and c.nbytes <= 1000
    c.put("v2", "view2", 100, deps=[("p9", "piece9", 500)])  # a dep evicted meanwhile comes back
    assert c.get("p9") == "piece9" and c.nbytes <= 1000
    c.drop(lambda k: True)
    assert c.nbytes == 0 and len(c) == 0


def test_a_real_mount_walks_rows_of_a_hundred_versions(tmp_path, monkeypatch):
    cat = DirCatalog(str(tmp_path / "cat"))
    ds = cat.create_dataset("d", SCHEMA, ["id"], ["img"], file_layout=LAYOUT)
    ds.local().append({"id": list(range(20)), "label": ["a"] * 20, "name": [f"{i}.bin" for i in range(20)],
                       "img": [b"v0-%d" % i for i in range(20)]})
    for c in range(1, 100):  # each commit changes one row
        i = c % 20
        ds.local().upsert({"id": [i], "label": [f"l{c % 4}"], "name": [f"{i}.bin"], "img": [b"v%d-%d" % (c, i)]})
    mnt = str(tmp_path / "mnt")
    monkeypatch.setenv("SPACEFS_VIEW_CACHE_MIB", "0.25")  # the daemon's cache evicts as it walks
    with mounted(cat.location, mnt):
        for sid in range(1, 101):
            want = ds.local().read_all(version=sid).to_pylist()
            ver = os.path.join(mnt, "d", "versions", str(sid))
            assert sorted(os.listdir(os.path.join(ver, "rows")), key=int) == [str(r["id"]) for r in
                                                                               sorted(want, key=lambda r: r["id"])]
            for r in want:
                row = os.path.join(ver, "rows", str(r["id"]))
                with open(os.path.join(row, "label"), "rb") as f:
                    assert f.read() == r["label"].encode()
                with open(os.path.join(row, "img"), "rb") as f:
                    assert f.read() == r["img"]
            got = {os.path.relpath(os.path.join(d, n), os.path.join(ver, "files"))
                   for d, _, names in os.walk(os.path.join(ver, "files")) for n in names}
            assert got == {f"{r['label']}/{r['name']}" for r in want}


def test_a_view_costs_the_change_not_the_rows(tmp_path):
    """Versions that differ by a row share their large index file: a view of one more
    of them holds memory for its new row and file, not for the 5,000 rows it shows,
    and the cache counts about what it really holds."""
    n = 5000
    ds = Dataset.create(str(tmp_path / "d"), SCHEMA, ["id"], ["img"], file_layout=LAYOUT)
    ds.local().append({"id": list(range(n)), "label": [f"l{i % 10}" for i in range(n)],
                       "name": [f"{i}.bin" for i in range(n)], "img": [b"v0-%d" % i for i in range(n)]})
    for c in range(1, 7):  # the same row each time: the 4,999 others stay in one file
        ds.local().upsert({"id": [0], "label": [f"m{c}"], "name": ["0.bin"], "img": [b"v%d" % c]})

    def load(tree: Tree, sid: int) -> None:
        assert len(listed(tree, Node(ROWS, ds.name, sid))) == n
        assert tree.lookup(Node(ROWS, ds.name, sid), str(n - 1)).row is not None
        assert tree.lookup(Node(FILES, ds.name, sid, name="l9"), f"{n - 1}.bin").kind != FILES
        assert set(listed(tree, Node(FILES, ds.name, sid))) == {f"l{i}" for i in range(1, 10)} | {"l0", f"m{sid - 1}"}

    with Tree(ds.location) as tree:
        for sid in (2, 3):
            load(tree, sid)
        for sid in (4, 5, 6, 7):  # (the storage's own caches of their snapshots, not measured)
            tree.view(ds.name, sid, True)
        gc.collect()
        tracemalloc.start()
        arrow0, counted0 = pa.total_allocated_bytes(), tree.cache.nbytes
        for sid in (4, 5, 6, 7):
            load(tree, sid)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes() - arrow0
        tracemalloc.stop()
        counted = tree.cache.nbytes - counted0
    assert held < 4 * (32 << 10), held  # (a view of all rows: ~300 bytes a row, 1.5 MB each)
    assert held / 2 <= counted <= 2 * held, (counted, held)
