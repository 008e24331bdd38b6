"""What real tools see through a real mount: names byte for byte (cp -a, rsync -a and
tar give back the imported folder), over-long names that ext4 takes, old versions that
never change, and per-row mtimes that let a second rsync send only the changed rows."""

from __future__ import annotations

import json
import os
import subprocess

import pyarrow as pa
from mount_util import mounted, wait_for

from spacefs import Dataset
from spacefs.io import export_folder, import_folder

# (Values holding "%" before two hex digits or "~" are escaped by design, and the
# import leaves hidden files out: neither is in this tree.)
NAMES = {"cat": ["a,b.jpg", "100%.jpg", "#1 é ü.jpg", "None", "日本語 (2).png", "tab\there", "x..y", "%zz.jpg"],
         "dog, 50% #2": ["plain.jpg", "a b,c%.jpg", "-", "~"]}


def make_source(root) -> str:
    src = os.path.join(root, "src")
    for label, names in NAMES.items():
        os.makedirs(os.path.join(src, label))
        for n in names:
            with open(os.path.join(src, label, n), "wb") as f:
                f.write(f"{label}/{n}".encode() * 3)
    return src


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout


def test_import_mount_copy_gives_back_the_same_tree(tmp_path):
    src = make_source(tmp_path)
    cat = tmp_path / "cat"
    import_folder(src, str(cat / "pics"))
    mnt = str(tmp_path / "mnt")
    with mounted(str(cat), mnt):
        files = os.path.join(mnt, "pics", "versions", "1", "files")
        assert sorted(os.listdir(files)) == sorted(NAMES)
        run("cp", "-a", files, str(tmp_path / "cp"))
        run("rsync", "-a", files + "/", str(tmp_path / "rsync"))
        os.makedirs(tmp_path / "tar")
        subprocess.run(f"tar -C '{files}' -cf - . | tar -C '{tmp_path / 'tar'}' -xf -", shell=True, check=True,
                       timeout=120)
    export_folder(str(cat / "pics"), str(tmp_path / "export"))
    for out in ("cp", "rsync", "tar", "export"):
        res = subprocess.run(["diff", "-r", src, str(tmp_path / out)], capture_output=True, text=True)
        assert res.returncode == 0, f"{out}: {res.stdout}{res.stderr}"


def test_long_names_fit_name_max_and_copy_to_a_real_disk(tmp_path):
    schema = pa.schema([("name", pa.string()), ("img", pa.binary())])
    ds = Dataset.create(str(tmp_path / "cat" / "long"), schema, ["name"], ["img"],
                        file_layout={"path": "{name}", "content": "img"})
    names = ["é" * 200 + f"{i}.jpg" for i in range(3)] + ["x" * 255, "y" * 256]
    ds.local().append({"name": names, "img": [n.encode()[-8:] for n in names]})
    mnt = str(tmp_path / "mnt")
    with mounted(str(tmp_path / "cat"), mnt):
        ver = os.path.join(mnt, "long", "versions", "1")
        assert os.statvfs(ver).f_namemax == 255
        for where in ("files", "rows"):
            got = os.listdir(os.path.join(ver, where))
            assert len(got) == 5 and all(len(os.fsencode(n)) <= 255 for n in got)
            assert "x" * 255 in got  # 255 bytes fit: kept as is
        run("cp", "-a", os.path.join(ver, "files"), str(tmp_path / "cp"))
        run("rsync", "-a", os.path.join(ver, "rows") + "/", str(tmp_path / "rows"))
    got = {open(tmp_path / "cp" / n, "rb").read() for n in os.listdir(tmp_path / "cp")}
    assert got == {n.encode()[-8:] for n in names}
    assert len(os.listdir(tmp_path / "rows")) == 5


def test_old_versions_never_change_and_open_files_keep_reading(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("label", pa.string()), ("img", pa.binary())])
    ds = Dataset.create(str(tmp_path / "cat" / "d"), schema, ["id"], ["img"],
                        file_layout={"path": "{label}/{id}", "content": "img"})
    ds.local().append({"id": [1, 2], "label": ["a", "b"], "img": [b"one" * 1000, b"two"]})
    mnt = str(tmp_path / "mnt")
    with mounted(str(tmp_path / "cat"), mnt):
        v1 = os.path.join(mnt, "d", "versions", "1")
        schema_before = open(os.path.join(v1, "schema.json"), "rb").read()
        st_before = os.stat(os.path.join(v1, "schema.json"))
        f = open(os.path.join(v1, "files", "a", "1"), "rb")
        assert f.read(3) == b"one"
        assert ds.set_file_layout({"path": "{id}.bin", "content": "img"}).snapshot_id == 2
        wait_for(lambda: os.path.isdir(os.path.join(mnt, "d", "versions", "2")), what="the layout snapshot")
        assert f.read() == b"one" * 999
        f.seek(0)
        assert f.read() == b"one" * 1000
        f.close()
        assert open(os.path.join(v1, "schema.json"), "rb").read() == schema_before
        assert os.stat(os.path.join(v1, "schema.json")).st_mtime_ns == st_before.st_mtime_ns
        assert sorted(os.listdir(os.path.join(v1, "files"))) == ["a", "b"]
        v2 = os.path.join(mnt, "d", "versions", "2")
        assert sorted(os.listdir(os.path.join(v2, "files"))) == ["1.bin", "2.bin"]
        assert json.load(open(os.path.join(v2, "schema.json")))["file_layout"]["path"] == "{id}.bin"
        assert os.readlink(os.path.join(mnt, "d", "branches", "main")) == "../versions/2"


def test_a_second_rsync_sends_only_the_rows_that_changed(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("label", pa.string()), ("img", pa.binary())])
    ds = Dataset.create(str(tmp_path / "cat" / "d"), schema, ["id"], ["img"],
                        file_layout={"path": "{label}/{id}.bin", "content": "img"})
    for start in (0, 20):
        ids = list(range(start, start + 20))
        ds.local().append({"id": ids, "label": [f"l{i % 3}" for i in ids], "img": [b"%d" % i for i in ids]})
    mnt = str(tmp_path / "mnt")
    with mounted(str(tmp_path / "cat"), mnt):
        vers = os.path.join(mnt, "d", "versions")
        for where in ("files", "rows"):
            run("rsync", "-a", os.path.join(vers, "2", where) + "/", str(tmp_path / where))
        ds.local().append({"id": [40, 41], "label": ["l0", "new"], "img": [b"40", b"41"]})
        wait_for(lambda: os.path.isdir(os.path.join(vers, "3")), what="snapshot 3")
        for where, sent in (("files", {"l0/40.bin", "new/41.bin"}), ("rows", {"40/id", "41/id", "40/label",
                                                                                "41/label", "40/img", "41/img"})):
            out = run("rsync", "-a", "--itemize-changes", os.path.join(vers, "3", where) + "/", str(tmp_path / where))
            transferred = {line.split(" ", 1)[1] for line in out.splitlines() if line.startswith(">f")}
            assert transferred == sent, out
    export_folder(ds.location, str(tmp_path / "out"))
    res = subprocess.run(["diff", "-r", str(tmp_path / "files"), str(tmp_path / "out")], capture_output=True)
    assert res.returncode == 0, res.stdout
