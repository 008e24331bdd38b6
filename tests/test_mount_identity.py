"""A dataset deleted and re-created under the same name is a new dataset to the mount:
its snapshot ids are the same numbers but other snapshots, so nothing cached of the old
one (tree state, snapshot views, the kernel's entries, attributes and pages) may serve it."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from mount_util import LAYOUT, SCHEMA, image_bytes, make_catalog, mounted, rows, wait_for

from spacefs import Dataset, DirCatalog
from spacefs.mount.tree import DS, ROOT, Invalidation, Node, Tree


def new_rows(n: int = 30) -> dict:
    """The rows of ``make_catalog`` with other image bytes of the same sizes (so no size
    change gives the kernel a hint)."""
    r = rows(range(n))
    r["image"] = [image_bytes(i)[::-1] for i in range(n)]
    return r


def recreate_in_catalog(c: DirCatalog) -> Dataset:
    """Delete ``pets`` and make it again with the same history (same log sequence
    numbers and snapshot ids as before), but other bytes."""
    c.delete_dataset("pets")
    ds = c.create_dataset("pets", SCHEMA, ["id"], ["image"], file_layout=LAYOUT)
    ds.local().append(new_rows())
    ds.add_tag("v1")
    return ds


def recreate_at(location: str) -> Dataset:
    shutil.rmtree(location)
    ds = Dataset.create(location, SCHEMA, ["id"], ["image"], file_layout=LAYOUT)
    ds.local().append(new_rows())
    ds.add_tag("v1")
    return ds


def read(tree: Tree, path: str) -> bytes:
    node = tree.root
    for part in path.split("/"):
        node = tree.lookup(node, part)
    return tree.read(node, 0, 1 << 20)


def test_every_dataset_gets_a_uuid_and_old_ones_still_load(tmp_path):
    a = Dataset.create(str(tmp_path / "a"), SCHEMA, ["id"], ["image"])
    b = Dataset.create(str(tmp_path / "b"), SCHEMA, ["id"], ["image"])
    ua, ub = a.storage.meta["uuid"], b.storage.meta["uuid"]
    assert len(ua) == 32 and ua != ub
    # A dataset made before uuids (no "uuid" in dataset.json) loads and mounts as before.
    path = tmp_path / "a" / "metadata" / "dataset.json"
    meta = json.loads(path.read_bytes())
    del meta["uuid"]
    path.write_text(json.dumps(meta))
    old = Dataset.load(str(tmp_path / "a"))
    old.local().append(rows(range(3)))
    assert old.local().read_all().num_rows == 3
    assert read(Tree(str(tmp_path / "a")), "versions/1/rows/2/image") == image_bytes(2)


def test_tree_sees_a_recreated_dataset_as_new(tmp_path):
    c, ds = make_catalog(str(tmp_path))
    t = Tree(c.location)
    assert read(t, "pets/versions/1/rows/5/image") == image_bytes(5)
    assert read(t, "pets/versions/1/files/bird/img_0005.bin") == image_bytes(5)
    seq = ds.storage.head().seq
    new = recreate_in_catalog(c)
    assert new.storage.head().seq == seq  # same log position: only the identity tells
    changes = t.poll()
    assert Invalidation(Node(ROOT), "pets") in changes
    assert read(t, "pets/versions/1/rows/5/image") == image_bytes(5)[::-1]
    assert read(t, "pets/versions/1/files/bird/img_0005.bin") == image_bytes(5)[::-1]
    assert t.poll() == []

    # A single-dataset tree: the dataset directory itself is deleted and made again.
    single = Tree(new.location)
    assert read(single, "versions/1/rows/5/image") == image_bytes(5)[::-1]
    shutil.rmtree(new.location)
    assert single.poll() == []  # gone: nothing to show until it comes back
    again = Dataset.create(new.location, SCHEMA, ["id"], ["image"], file_layout=LAYOUT)
    again.local().append(rows(range(30)))
    again.add_tag("v1")
    changes = single.poll()
    assert Invalidation(Node(DS, "pets"), "versions") in changes
    assert read(single, "versions/1/rows/5/image") == image_bytes(5)


def test_tree_without_uuids_goes_by_the_dataset_json_file(tmp_path):
    loc = str(tmp_path / "pets")

    def make(blobs) -> None:
        shutil.rmtree(loc, ignore_errors=True)
        ds = Dataset.create(loc, SCHEMA, ["id"], ["image"])
        path = os.path.join(loc, "metadata", "dataset.json")
        meta = json.loads(open(path, "rb").read())
        del meta["uuid"]
        with open(path + ".tmp", "w") as f:
            f.write(json.dumps(meta))
        os.replace(path + ".tmp", path)
        r = rows(range(3))
        r["image"] = blobs
        ds.local().append(r)

    make([b"a", b"b", b"c"])
    t = Tree(loc)
    assert read(t, "versions/1/rows/1/image") == b"b"
    assert t.poll() == []
    make([b"x", b"y", b"z"])
    assert t.poll() != []
    assert read(t, "versions/1/rows/1/image") == b"y"


@pytest.mark.parametrize("single", [False, True], ids=["catalog", "single-dataset"])
def test_a_live_mount_serves_the_recreated_dataset(tmp_path, single):
    c, ds = make_catalog(str(tmp_path))
    mnt = str(tmp_path / "mnt")
    with mounted(ds.location if single else c.location, mnt):
        root = mnt if single else os.path.join(mnt, "pets")
        row = os.path.join(root, "versions", "1", "rows", "5", "image")
        by_tag = os.path.join(root, "tags", "v1", "files", "bird", "img_0005.bin")
        for _ in range(2):  # twice: the second read comes from the kernel's caches
            assert open(row, "rb").read() == image_bytes(5)
            assert open(by_tag, "rb").read() == image_bytes(5)
        listing = sorted(os.listdir(os.path.join(root, "versions", "1", "rows")), key=int)
        assert listing == [str(i) for i in range(30)]

        new = recreate_at(ds.location) if single else recreate_in_catalog(c)
        new.local().delete("id = 7")  # snapshot 2 of the new dataset
        wait_for(lambda: open(row, "rb").read() == image_bytes(5)[::-1], 5.0, "new bytes in rows/")
        assert open(by_tag, "rb").read() == image_bytes(5)[::-1]
        assert os.stat(row).st_size == len(image_bytes(5))
        assert "7" not in os.listdir(os.path.join(root, "current", "rows"))
        assert "7" in os.listdir(os.path.join(root, "versions", "1", "rows"))


def test_tree_sees_an_older_copy_put_back_in_place(tmp_path):
    """Same uuid, but the log went backwards (a backup restored over the dataset):
    the snapshots after the copy's head are gone, not served from the cache."""
    _, ds = make_catalog(str(tmp_path))
    backup = str(tmp_path / "backup")
    shutil.copytree(ds.location, backup)
    ds.local().upsert(new_rows(10))  # snapshot 2
    t = Tree(ds.location)
    assert read(t, "versions/2/rows/5/image") == image_bytes(5)[::-1]
    shutil.rmtree(ds.location)
    shutil.copytree(backup, ds.location)
    assert Invalidation(Node(DS, "pets"), "versions") in t.poll()
    with pytest.raises(FileNotFoundError):
        read(t, "versions/2/rows/5/image")
    assert read(t, "versions/1/rows/5/image") == image_bytes(5)
