"""``spacefs mount s3://...``: the same tree served from a bucket, commits appearing live."""

from __future__ import annotations

import os

from mount_util import SCHEMA, image_bytes, mounted, rows, wait_for

from spacefs import DirCatalog

LAYOUT = {"path": "{label}/{image_name}", "content": "image"}


def test_mount_of_a_bucket_catalog_reads_every_byte_and_sees_commits(s3_bucket, tmp_path):
    cat = DirCatalog(s3_bucket + "/catalog")
    ds = cat.create_dataset("pets", SCHEMA, ["id"], ["image"], file_layout=LAYOUT)
    ds.local().append(rows(range(30)))
    ds.add_tag("v1")
    mnt = str(tmp_path / "mnt")
    with mounted(cat.location, mnt):
        assert sorted(os.listdir(mnt)) == ["pets"]
        cur = os.path.join(mnt, "pets", "current")
        for row in ds.local().read_all().to_pylist():
            d = os.path.join(cur, "rows", str(row["id"]))
            assert open(os.path.join(d, "image"), "rb").read() == row["image"]
            assert open(os.path.join(d, "label"), "rb").read() == row["label"].encode()
            assert open(os.path.join(cur, "files", row["label"], row["image_name"]), "rb").read() == row["image"]
        for p in ds.index_files():
            name = p.rsplit("/", 1)[-1]
            assert open(os.path.join(cur, "index", name), "rb").read() == ds.storage.backend.read_bytes(
                "data/index/" + name)
        ds.local().upsert(rows([0, 100]))  # another writer: the mount polls the bucket's log
        wait_for(lambda: os.readlink(os.path.join(mnt, "pets", "branches", "main")) == "../versions/2", 10.0,
                 "new head")
        assert open(os.path.join(cur, "rows", "100", "image"), "rb").read() == image_bytes(100)
        cat.create_dataset("birds", SCHEMA, ["id"], ["image"])
        wait_for(lambda: "birds" in os.listdir(mnt), 10.0, "new dataset")
        # The control socket works on the bucket's datasets too.
        from spacefs.mount.client import Client

        with Client(mnt) as client:
            assert client.datasets() == ["birds", "pets"]
            client.append("pets", rows([200]))
            assert client.sql("SELECT count(*) AS n FROM pets").column("n").to_pylist() == [32]
        assert ds.num_rows() == 32


def test_cli_mount_of_a_bucket_dataset_reads_through_its_chunk_cache(s3_bucket, tmp_path):
    from mount_util import cli

    from spacefs import Dataset

    uri = s3_bucket + "/pets"
    ds = Dataset.create(uri, SCHEMA, ["id"], ["image"], file_layout=LAYOUT)
    ds.local().append(rows(range(20)))
    mnt, cache = str(tmp_path / "mnt"), str(tmp_path / "cache")
    os.makedirs(mnt)
    res = cli("mount", uri, mnt, "--cache-dir", cache, "--cache-size", "64M")
    try:
        assert "mounted" in res.stdout
        rows_dir = os.path.join(mnt, "current", "rows")
        assert sorted(os.listdir(rows_dir), key=int) == [str(i) for i in range(20)]
        for i in range(20):
            assert open(os.path.join(rows_dir, str(i), "image"), "rb").read() == image_bytes(i)
        chunks = [f for _, _, fs in os.walk(cache) for f in fs]
        assert chunks  # record chunks came through the cache directory
    finally:
        cli("umount", mnt)
    assert cli("mount", uri, mnt, "--cache-size", "lots", check=False).returncode == 2
