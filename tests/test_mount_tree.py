"""Tier 1: the mount tree (SPEC section 4) in plain Python, no kernel, no pyfuse3."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest
from mount_util import LAYOUT, PYTHON, SCHEMA, image_bytes, make_catalog, rows

from spacefs import Dataset, DirCatalog
from spacefs.engine.records import RecordReader
from spacefs.mount.snapshot import SnapshotView
from spacefs.mount.tree import (
    BRANCHES,
    DS,
    FILE,
    FILES,
    ROOT,
    TAGS,
    VER,
    VERSIONS,
    Invalidation,
    NeedsIO,
    Node,
    Tree,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def walk(tree: Tree, path: str) -> Node:
    node = tree.root
    for part in [p for p in path.split("/") if p]:
        node = tree.lookup(node, part)
        while node.kind in ("tag", "branch", "current"):  # follow symlinks like the kernel
            target = tree.readlink(node)
            parent = path_parent(tree, node)
            node = walk_from(tree, parent, target)
    return node


def path_parent(tree: Tree, node: Node) -> Node:
    return Node(TAGS, node.ds) if node.kind == "tag" else Node(BRANCHES, node.ds) if node.kind == "branch" else Node(DS, node.ds)


def walk_from(tree: Tree, start: Node, rel: str) -> Node:
    node = start
    for part in rel.split("/"):
        node = Node(DS, node.ds) if part == ".." else tree.lookup(node, part)
    return node


def names(tree: Tree, path: str) -> list[str]:
    return [n for n, _ in tree.children(walk(tree, path))]


def content(tree: Tree, path: str) -> bytes:
    node = walk(tree, path)
    return tree.read(node, 0, tree.attrs(node).size + 10)


@pytest.fixture
def cat(tmp_path):
    return make_catalog(str(tmp_path))


def test_catalog_layout_matches_spec(cat):
    c, ds = cat
    t = Tree(c.location)
    assert t.root == Node(ROOT)
    assert names(t, "") == ["pets"]
    assert names(t, "pets") == ["versions", "tags", "branches", "current"]
    assert names(t, "pets/versions") == ["0", "1"]
    assert names(t, "pets/tags") == ["v1"]
    assert t.readlink(walk_from(t, Node(TAGS, "pets"), "v1")) == "../versions/1"
    assert t.readlink(walk_from(t, Node(BRANCHES, "pets"), "main")) == "../versions/1"
    assert t.readlink(t.lookup(Node(DS, "pets"), "current")) == "branches/main"
    assert names(t, "pets/versions/1") == ["schema.json", "index", "rows", "files"]
    assert names(t, "pets/versions/0/rows") == []
    assert sorted(names(t, "pets/versions/1/rows"), key=int) == [str(i) for i in range(30)]
    assert t.attrs(walk(t, "pets/versions/1")).immutable
    assert not t.attrs(walk(t, "pets/tags")).immutable


def test_single_dataset_root(cat):
    _, ds = cat
    t = Tree(ds.location)
    assert t.root == Node(DS, "pets")
    assert names(t, "") == ["versions", "tags", "branches", "current"]
    assert content(t, "current/rows/3/label") == b"cat"


def test_field_files_follow_the_spec_encoding(cat):
    _, ds = cat
    t = Tree(ds.location)
    r = "versions/1/rows/5"
    assert names(t, r) == [n for n in SCHEMA.names if n != "tags"]  # null tags: no file
    assert content(t, f"{r}/id") == b"5\n"
    assert content(t, f"{r}/label") == b"bird"  # strings: UTF-8, no newline
    assert content(t, f"{r}/score") == b"1.25\n"
    assert content(t, f"{r}/ok") == b"false\n"
    assert content(t, f"{r}/meta") == b'{"w": 5, "src": "s5"}\n'
    assert content(t, f"{r}/raw") == b"\x00\xffraw5"  # binary: raw
    assert content(t, f"{r}/image") == image_bytes(5)
    assert names(t, "versions/1/rows/6") == SCHEMA.names
    assert content(t, "versions/1/rows/6/tags") == b'["t6", "x"]\n'
    # a null value has no file
    assert "tags" not in names(t, "versions/1/rows/10")
    with pytest.raises(FileNotFoundError):
        walk(t, "versions/1/rows/10/tags")


def test_keys_are_names_byte_for_byte_and_composite_keys_joined(tmp_path):
    schema = pa.schema([("a", pa.string()), ("b", pa.int64()), ("v", pa.binary())])
    ds = Dataset.create(str(tmp_path / "k"), schema, ["a", "b"], ["v"])
    keys = ["x/y", "50%", "a,b", ".hidden", "tab\there", "é ü", "..", "", "%2C", "n\0ul"]
    ds.local().append({"a": keys, "b": list(range(len(keys))), "v": [k.encode() for k in keys]})
    t = Tree(ds.location)
    got = set(names(t, "versions/1/rows"))
    # only "/", NUL, the join separator and "%" before hex digits are escaped
    assert got == {"x%2Fy,0", "50%,1", "a%2Cb,2", ".hidden,3", "tab\there,4", "é ü,5", "..,6", ",7", "%252C,8",
                   "n%00ul,9"}
    assert content(t, "versions/1/rows/x%2Fy,0/v") == b"x/y"
    assert content(t, "versions/1/rows/a%2Cb,2/a") == b"a,b"


def test_single_keys_keep_commas_and_dots_only_dot_components_escaped(tmp_path):
    schema = pa.schema([("a", pa.string()), ("v", pa.binary())])
    ds = Dataset.create(str(tmp_path / "k"), schema, ["a"], ["v"])
    keys = ["a,b", "100%", ".", "..", "", ".x"]
    ds.local().append({"a": keys, "v": [k.encode() for k in keys]})
    t = Tree(ds.location)
    assert set(names(t, "versions/1/rows")) == {"a,b", "100%", "%2E", "%2E%2E", "%~empty", ".x"}
    assert content(t, "versions/1/rows/%2E%2E/a") == b".."


def test_stat_is_exact_without_reading_records(cat, monkeypatch):
    _, ds = cat

    def boom(*a, **k):
        raise AssertionError("a record was read")

    monkeypatch.setattr(RecordReader, "read_range", boom)
    monkeypatch.setattr(RecordReader, "read_one", boom)
    t = Tree(ds.location)
    for i in range(30):
        assert t.attrs(walk(t, f"versions/1/rows/{i}/image")).size == len(image_bytes(i))
        assert t.attrs(walk(t, f"versions/1/files/{['cat', 'dog', 'bird'][i % 3]}/img_{i:04d}.bin")).size == len(image_bytes(i))


def test_lookup_by_name_does_not_list(cat, monkeypatch):
    _, ds = cat
    t = Tree(ds.location)
    listed = []
    orig = SnapshotView.row_name
    monkeypatch.setattr(SnapshotView, "row_name", lambda self, i: listed.append(i) or orig(self, i))
    node = walk(t, "versions/1/rows/17")
    assert node.kind == "row" and listed == []
    assert content(t, "versions/1/rows/17/id") == b"17\n"
    assert listed == []


def test_range_reads_of_a_large_record(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("blob", pa.binary())])
    ds = Dataset.create(str(tmp_path / "big"), schema, ["id"], ["blob"])
    big = os.urandom(3 * 65536 + 12345)  # spans several 64 KiB Riegeli blocks
    ds.local().append({"id": [1, 2], "blob": [b"small", big]})
    t = Tree(ds.location)
    node = walk(t, "versions/1/rows/2/blob")
    assert t.attrs(node).size == len(big)
    for off, n in [(0, 10), (65000, 2000), (65536 - 24, 100), (len(big) - 5, 100), (len(big), 10), (100, len(big))]:
        assert t.read(node, off, n) == big[off : off + n]


def test_index_files_are_byte_identical(cat):
    _, ds = cat
    ds.local().append(rows(range(100, 110)))
    t = Tree(ds.location)
    files = {os.path.basename(p): p for p in ds.index_files(2)}
    assert sorted(names(t, "versions/2/index")) == sorted(files)
    for name, p in files.items():
        node = walk(t, f"versions/2/index/{name}")
        data = open(p, "rb").read()
        assert t.attrs(node).size == len(data)
        assert t.read(node, 0, len(data) + 1) == data
    assert names(t, "versions/0/index") == []


def test_schema_json(cat):
    _, ds = cat
    t = Tree(ds.location)
    doc = json.loads(content(t, "versions/1/schema.json"))
    assert doc["primary_keys"] == ["id"] and doc["record_fields"] == ["image"]
    assert doc["file_layout"] == LAYOUT
    assert [f["name"] for f in doc["schema"]["fields"]] == SCHEMA.names


def test_files_layout_tree(cat):
    _, ds = cat
    t = Tree(ds.location)
    assert sorted(names(t, "versions/1/files")) == ["bird", "cat", "dog"]
    assert sorted(names(t, "versions/1/files/cat")) == [f"img_{i:04d}.bin" for i in range(0, 30, 3)]
    assert content(t, "versions/1/files/dog/img_0004.bin") == image_bytes(4)
    node = walk(t, "versions/1/files/dog/img_0004.bin")
    assert node.kind == FILE and t.attrs(node).immutable
    # no layout: no files/
    plain = DirCatalog(os.path.dirname(ds.location)).create_dataset("plain", SCHEMA, ["id"], ["image"])
    plain.local().append(rows(range(3)))
    assert "files" not in names(Tree(plain.location), "versions/1")


def test_duplicate_layout_paths_show_the_row_written_last(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("label", pa.string()), ("img", pa.binary())])
    ds = Dataset.create(str(tmp_path / "d"), schema, ["id"], ["img"], file_layout={"path": "{label}", "content": "img"})
    ds.local().append({"id": [1, 2, 3], "label": ["a", "a", "a/b"], "img": [b"1", b"2", b"3"]})
    t = Tree(ds.location)
    assert sorted(names(t, "versions/1/files")) == ["a", "a%2Fb"]
    assert content(t, "versions/1/files/a") == b"2"  # one snapshot: the later row
    # a later append of a new row at an existing path shows (the newest snapshot wins)
    ds.local().append({"id": [4], "label": ["a"], "img": [b"4"]})
    assert content(t, "versions/2/files/a") == b"4"
    assert content(t, "versions/1/files/a") == b"2"
    # rows/ too: appends do not check keys, the row written last shows
    ds.local().append({"id": [1], "label": ["z"], "img": [b"new1"]})
    assert content(t, "versions/3/rows/1/img") == b"new1"
    assert content(t, "versions/2/rows/1/img") == b"1"


def test_layout_file_over_a_directory_newest_wins(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("p", pa.string()), ("q", pa.string()), ("img", pa.binary())])
    ds = Dataset.create(str(tmp_path / "d"), schema, ["id"], ["img"], file_layout={"path": "{p}/{q}", "content": "img"})
    ds.local().append({"id": [1], "p": ["a"], "q": ["b"], "img": [b"1"]})
    ds.local().append({"id": [2], "p": ["a"], "q": ["b"], "img": [b"2"]})
    t = Tree(ds.location)
    assert content(t, "versions/2/files/a/b") == b"2"


def test_null_and_the_string_none_are_two_names(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("label", pa.string()), ("img", pa.binary())])
    ds = Dataset.create(str(tmp_path / "d"), schema, ["id"], ["img"],
                        file_layout={"path": "{label}/{id}", "content": "img"})
    ds.local().append({"id": [1, 2, 3], "label": [None, "None", "%~null"], "img": [b"1", b"2", b"3"]})
    t = Tree(ds.location)
    assert sorted(names(t, "versions/1/files")) == ["%25~null", "%~null", "None"]
    assert content(t, "versions/1/files/%~null/1") == b"1"
    assert content(t, "versions/1/files/None/2") == b"2"
    assert content(t, "versions/1/files/%25~null/3") == b"3"


def test_long_names_are_shortened_with_a_hash(tmp_path):
    schema = pa.schema([("name", pa.string()), ("img", pa.binary())])
    ds = Dataset.create(str(tmp_path / "d"), schema, ["name"], ["img"], file_layout={"path": "{name}", "content": "img"})
    long_a, long_b = "é" * 200 + "a.jpg", "é" * 200 + "b.jpg"  # 405 bytes, same first 255
    ds.local().append({"name": [long_a, long_b, "short.jpg"], "img": [b"a", b"b", b"s"]})
    t = Tree(ds.location)
    for where in ("rows", "files"):
        got = [n for n in names(t, f"versions/1/{where}") if n != "short.jpg"]
        assert len(got) == 2 and all(len(n.encode()) <= 255 for n in got)
        assert all(n.startswith("é" * 50) and "%~" in n and n.endswith(".jpg") for n in got)
    assert {bytes(content(t, f"versions/1/files/{n}")) for n in names(t, "versions/1/files")} == {b"a", b"b", b"s"}
    assert names(Tree(ds.location), "versions/1/files") == names(t, "versions/1/files")  # deterministic


def test_rows_carry_the_time_of_the_snapshot_that_wrote_them(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("label", pa.string()), ("img", pa.binary())])
    ds = Dataset.create(str(tmp_path / "d"), schema, ["id"], ["img"], file_layout={"path": "{id}", "content": "img"})
    ds.local().append({"id": [1, 2], "label": ["a", "b"], "img": [b"1", b"2"]})
    ds.local().append({"id": [3], "label": ["c"], "img": [b"3"]})
    t = Tree(ds.location)
    times = {sid: t.attrs(walk(t, f"versions/{sid}")).mtime_ns for sid in (1, 2)}
    assert times[1] < times[2]
    for path, sid in (("rows/1", 1), ("rows/1/img", 1), ("files/2", 1), ("rows/3/label", 2), ("files/3", 2)):
        assert t.attrs(walk(t, f"versions/2/{path}")).mtime_ns == times[sid], path


def test_a_layout_change_is_a_snapshot_and_old_versions_stay(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("label", pa.string()), ("img", pa.binary())])
    ds = Dataset.create(str(tmp_path / "d"), schema, ["id"], ["img"],
                        file_layout={"path": "{label}/{id}", "content": "img"})
    ds.local().append({"id": [1, 2], "label": ["a", "b"], "img": [b"1", b"2"]})
    t = Tree(ds.location)
    before = content(t, "versions/1/schema.json")
    old_file = walk(t, "versions/1/files/a/1")
    res = ds.set_file_layout({"path": "{id}.bin", "content": "img"})
    assert res.snapshot_id == 2 and ds.local().read_all().num_rows == 2
    t.poll()
    assert content(t, "versions/1/schema.json") == before
    assert names(t, "versions/1/files") == ["a", "b"]
    assert t.read(old_file, 0, 10) == b"1"  # a file open under the old layout keeps reading
    assert sorted(names(t, "versions/2/files")) == ["1.bin", "2.bin"]
    assert json.loads(content(t, "versions/2/schema.json"))["file_layout"]["path"] == "{id}.bin"
    assert ds.set_file_layout({"path": "{id}.bin", "content": "img"}).snapshot_id is None  # SKIPPED
    ds.local().append({"id": [3], "label": ["c"], "img": [b"3"]})
    assert sorted(names(t, "versions/3/files")) == ["1.bin", "2.bin", "3.bin"]  # the layout carries on


def test_io_false_answers_from_memory_or_asks_for_a_thread(cat):
    _, ds = cat
    t = Tree(ds.location)
    ver = Node(VER, "pets", 1)
    rows_node = t.lookup(ver, "rows")
    with pytest.raises(NeedsIO):
        t.lookup(rows_node, "3", io=False)
    row = t.lookup(rows_node, "3")  # loads the snapshot's key index
    assert t.lookup(rows_node, "3", io=False) == row
    image = t.lookup(row, "image", io=False)
    assert t.attrs(image, io=False).size == len(image_bytes(3))
    with pytest.raises(NeedsIO):
        t.read(image, 0, 10, io=False)  # record bytes always come from disk
    assert t.read(t.lookup(row, "label", io=False), 0, 100, io=False) == b"cat"


def test_poll_reports_commits_tags_and_layout_changes(cat):
    _, ds = cat
    t = Tree(ds.location)
    assert t.poll() == []
    assert names(t, "versions") == ["0", "1"]
    ds.local().append(rows(range(50, 53)))
    ch = t.poll()
    assert Invalidation(Node(BRANCHES, "pets"), "main") in ch
    assert Invalidation(Node(DS, "pets"), "current") in ch
    assert Invalidation(Node(VERSIONS, "pets")) in ch
    assert names(t, "versions") == ["0", "1", "2"]
    assert t.readlink(walk_from(t, Node(BRANCHES, "pets"), "main")) == "../versions/2"
    assert t.poll() == []
    ds.add_tag("v2")
    ch = t.poll()
    assert Invalidation(Node(TAGS, "pets")) in ch and names(t, "tags") == ["v1", "v2"]
    ds.remove_tag("v1")
    assert Invalidation(Node(TAGS, "pets"), "v1") in t.poll()
    # a new layout is a new snapshot; the old version's files/ stays as it was
    old = walk(t, "versions/2/files/cat")
    ds.set_file_layout({"path": "{id}.bin", "content": "image"})
    ch = t.poll()
    assert Invalidation(Node(VERSIONS, "pets")) in ch
    assert len(t.children(old)) > 0
    assert "7.bin" in names(t, "versions/3/files") and "7.bin" not in names(t, "versions/2/files")
    assert walk(t, "versions/3/files").kind == FILES


def test_catalog_poll_sees_new_and_deleted_datasets(cat):
    c, _ = cat
    t = Tree(c.location)
    walk(t, "pets/versions/1")
    c.create_dataset("more", SCHEMA, ["id"], ["image"])
    ch = t.poll()
    assert Invalidation(Node(ROOT)) in ch and names(t, "") == ["more", "pets"]
    c.delete_dataset("pets")
    ch = t.poll()
    assert Invalidation(Node(ROOT), "pets") in ch
    assert names(t, "") == ["more"]
    with pytest.raises(FileNotFoundError):
        t.lookup(t.root, "pets")


def test_bad_names_are_not_found(cat):
    c, _ = cat
    t = Tree(c.location)
    for path in ["nope", "..", "pets/versions/01", "pets/versions/2", "pets/versions/-1", "pets/versions/1/rows/999",
                 "pets/versions/1/rows/1/nofield", "pets/versions/1/files/cat/x", "pets/tags/nope", ".hidden"]:
        with pytest.raises(FileNotFoundError):
            walk(t, path)
    with pytest.raises(NotADirectoryError):
        t.lookup(walk(t, "pets/versions/1/schema.json"), "x")


def test_dependencies_point_one_way():
    code = ("import sys, spacefs.mount.tree, spacefs.mount.snapshot, spacefs.mount.client; "
            "bad = [m for m in ('pyfuse3', 'trio') if m in sys.modules]; assert not bad, bad")
    subprocess.run([PYTHON, "-c", code], check=True)
    for name in os.listdir(os.path.join(REPO, "engine")):
        if name.endswith(".py"):
            src = open(os.path.join(REPO, "engine", name)).read()
            for banned in ("import pyfuse3", "import trio", "from spacefs.mount", "import spacefs.mount"):
                assert banned not in src, f"engine/{name} uses {banned}"


def test_record_ranges_with_and_without_waiting(tmp_path):
    from spacefs.engine.recordpool import POOL
    from spacefs.mount.recread import read_range

    schema = pa.schema([("id", pa.int64()), ("blob", pa.binary())])
    ds = Dataset.create(str(tmp_path / "r"), schema, ["id"], ["blob"])
    blobs = [os.urandom(n) for n in (10, 70_000, 200_000)]
    ds.local().append({"id": [1, 2, 3], "blob": blobs})
    refs = ds.local().read_all(reference_read=True).column("blob").to_pylist()
    for ref, blob in zip(refs, blobs, strict=True):
        h = POOL.lease(ds.location, ref["file"])
        try:
            again = POOL.try_lease(ds.location, ref["file"])
            assert again is h
            POOL.release(again)
            for start, n in [(0, len(blob)), (5, 3), (65_000, 1_000), (len(blob) - 1, 1)]:
                n = max(0, min(n, len(blob) - start))
                want = blob[start : start + n]
                assert read_range(h.fd, ref["offset"], start, n) == want
                got = read_range(h.fd, ref["offset"], start, n, nowait=True)
                assert got is None or got == want  # None only if not in the page cache
        finally:
            POOL.release(h)


def test_info_reports_colliding_paths(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("label", pa.string()), ("img", pa.binary())])
    ds = Dataset.create(str(tmp_path / "d"), schema, ["id"], ["img"], file_layout={"path": "{label}", "content": "img"})
    ds.local().append({"id": [1, 2, 3, 4], "label": ["a", "a", "b", "c"], "img": [b"1", b"2", b"3", b"4"]})
    ds.local().append({"id": [1, 5], "label": ["c", "d"], "img": [b"x", b"5"]})
    run = [sys.executable, "-m", "spacefs.cli", "info", ds.location]
    out = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert "colliding paths: 1 in rows/, 2 in files/" in out
    doc = json.loads(subprocess.run(run + ["--json"], capture_output=True, text=True, check=True).stdout)
    assert doc["colliding_paths"] == {"rows": 1, "files": 2}
    doc = json.loads(subprocess.run(run + ["--json", "--version", "1"], capture_output=True, text=True,
                                    check=True).stdout)
    assert doc["colliding_paths"] == {"rows": 0, "files": 1}


def test_snapshots_written_before_per_snapshot_layouts_use_the_log_settings(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("label", pa.string()), ("img", pa.binary())])
    ds = Dataset.create(str(tmp_path / "d"), schema, ["id"], ["img"],
                        file_layout={"path": "{label}/{id}", "content": "img"})
    ds.local().append({"id": [1, 2], "label": ["a", "b"], "img": [b"1", b"2"]})
    # what an older writer left: snapshots without a layout of their own
    log_dir = os.path.join(ds.location, "metadata", "log")
    for name in os.listdir(log_dir):
        if name.endswith(".json"):
            with open(os.path.join(log_dir, name), "r+") as f:  # in place: snapshots/ links stay links
                doc = json.load(f)
                if doc.get("snapshot"):
                    doc["snapshot"].pop("file_layout", None)
                f.seek(0)
                f.truncate()
                json.dump(doc, f)
    ds = Dataset.load(ds.location)
    assert ds.file_layout == {"path": "{label}/{id}", "content": "img"}
    assert names(Tree(ds.location), "versions/1/files") == ["a", "b"]
    ds.set_file_layout({"path": "{id}", "content": "img"})
    t = Tree(ds.location)
    assert names(t, "versions/1/files") == ["a", "b"] and names(t, "versions/2/files") == ["1", "2"]
