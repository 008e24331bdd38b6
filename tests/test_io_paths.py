"""Imports and exports stay where they are told: nothing written outside DEST (hostile
templates, values, keys, a symlink planted in DEST), nothing read from outside SRC (links
out of the tree, devices, FIFOs), and tar shards with escaping member names refused."""

from __future__ import annotations

import glob
import io
import os
import subprocess
import sys
import tarfile

import pyarrow as pa
import pytest

from spacefs import Dataset
from spacefs.engine.errors import SchemaError, UserInputError
from spacefs.engine.layout import format_path
from spacefs.engine.storage import Plan
from spacefs.io import export_folder, export_webdataset, import_folder, import_webdataset
from spacefs.io.folder import read_file, scan_folder
from spacefs.io.target import ContainedWriter

SCHEMA = pa.schema([("label", pa.string()), ("name", pa.string()), ("v", pa.binary())])


def spacefs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spacefs.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def tree(root) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), links not followed."""
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = b"<link>" if os.path.islink(p) else open(p, "rb").read()
    return out


def dataset(path, labels, names, layout=None) -> Dataset:
    ds = Dataset.create(str(path), SCHEMA, ["label", "name"], ["v"], file_layout=layout)
    ds.local().append({"label": labels, "name": names, "v": [f"{a}|{b}".encode() for a, b in zip(labels, names, strict=True)]})
    return ds


# -- export folder ---------------------------------------------------------------
ESCAPING = ["../../../{name}", "/{name}", "/tmp/{name}", "a/../../{name}", "{label}/../../{name}", "./{name}",
            "a//{name}", "{label}/", "{label}/{name:.0}", "{label}/{name!r}", "{label}/{name:/<9}", "a\0b/{name}"]


@pytest.mark.parametrize("template", ESCAPING)
def test_escaping_templates_are_refused_and_nothing_is_written(tmp_path, template):
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    with pytest.raises(SchemaError, match="file_layout path"):
        Dataset.create(str(deep / "refused"), SCHEMA, ["label", "name"], ["v"],
                       file_layout={"path": template, "content": "v"})
    ds = dataset(deep / "ds", ["cat", "dog"], ["x", "y"], {"path": "{label}/{name}", "content": "v"})
    with pytest.raises(SchemaError, match="file_layout path"):
        ds.set_file_layout({"path": template, "content": "v"})
    before = tree(tmp_path)
    with pytest.raises(SchemaError, match="file_layout path"):
        export_folder(ds.location, str(deep / "out"), path=template, content="v")
    assert tree(tmp_path) == before  # not in DEST, not beside it, not three levels up
    assert Dataset.load(ds.location).file_layout == {"path": "{label}/{name}", "content": "v"}


def test_a_hostile_layout_stored_by_hand_is_refused_at_export(tmp_path):
    """A layout that reached the log without validation (by hand, an old version):
    export refuses it, and the mount's rendering still cannot escape."""
    ds = dataset(tmp_path / "a" / "ds", ["cat"], ["x"])
    ds.storage.commit_snapshot("main", "hand", lambda base: Plan(), keep_empty=True,
                               snapshot_extra={"file_layout": {"path": "../../{name}", "content": "v"}})
    before = tree(tmp_path)
    with pytest.raises(SchemaError, match="'..' component"):
        export_folder(ds.location, str(tmp_path / "a" / "out"))
    assert tree(tmp_path) == before
    assert format_path("../../{name}", {"name": "x"}) == "%2E%2E/%2E%2E/x"
    assert format_path("/./{name}//", {"name": ".."}) == "%2E/%2E%2E"


def test_values_that_name_dot_dot_are_rendered_inside_dest(tmp_path):
    labels = ["..", ".", "", "a/b", "..", "/"]
    names = ["..", "../../x", ".", "", "/etc/passwd", ".hidden"]
    ds = dataset(tmp_path / "a" / "ds", labels, names, {"path": "{label}/{name}", "content": "v"})
    before = tree(tmp_path)
    assert export_folder(ds.location, str(tmp_path / "a" / "out")) == len(names)
    got = tree(tmp_path / "a" / "out")
    assert got == {
        "%2E%2E/%2E%2E": b"..|..",
        "%2E/..%2F..%2Fx": b".|../../x",  # one component: its inner dots are harmless
        "%~empty/%2E": b"|.",
        "a%2Fb/%~empty": b"a/b|",
        "%2E%2E/%2Fetc%2Fpasswd": b"..|/etc/passwd",
        "%2F/.hidden": b"/|.hidden",
    }
    after = tree(tmp_path)
    assert {k for k in after if not k.startswith(os.path.join("a", "out"))} == set(before)


def test_a_symlink_planted_in_dest_cannot_redirect_writes(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "secret").write_bytes(b"keep")

    # The writer itself: a planted directory link or file link is never written through.
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "cat")
    os.symlink(tmp_path / "secret", root / "f")
    with ContainedWriter(str(root)) as w:
        with pytest.raises(UserInputError, match="symlink"):
            w.open("cat/x")
        with pytest.raises(UserInputError, match="written twice"):
            w.open("f")
        with pytest.raises(UserInputError, match="outside"):
            w.open("../x")
        os.close(w.open("dog/x"))
    assert os.listdir(outside) == [] and (tmp_path / "secret").read_bytes() == b"keep"
    assert os.path.isfile(root / "dog" / "x") and not os.path.islink(root / "dog")

    # A whole export, with a link planted in its destination while it runs.
    ds = dataset(tmp_path / "ds", ["cat", "cat"], ["x", "y"], {"path": "{label}/{name}", "content": "v"})
    import spacefs.io.folder as folder

    real = folder.ContainedWriter.open

    def plant(self, rel):
        for staging in glob.glob(str(tmp_path / ".out.exporting-*")):
            if not os.path.lexists(os.path.join(staging, "cat")):
                os.symlink(outside, os.path.join(staging, "cat"))
        return real(self, rel)

    monkeypatch.setattr(folder.ContainedWriter, "open", plant)
    with pytest.raises(UserInputError, match="symlink"):
        export_folder(ds.location, str(tmp_path / "out"))
    assert os.listdir(outside) == []
    assert not os.path.exists(tmp_path / "out") and not glob.glob(str(tmp_path / ".out.exporting-*"))


def test_cli_export_folder_with_an_escaping_template(tmp_path):
    ds = dataset(tmp_path / "a" / "ds", ["cat"], ["x"])
    before = tree(tmp_path)
    p = spacefs("export", "folder", ds.location, tmp_path / "a" / "out", "--path", "../../{name}", "--content", "v")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "'..' component" in p.stderr
    assert tree(tmp_path) == before


# -- WebDataset ------------------------------------------------------------------
HOSTILE_KEYS = ["../../evil", "/abs/x", "a/./b", "a//b", ".hidden", "..", ".", "", "ok/1", "c\0d", "x/..", "50%"]


def test_export_webdataset_with_hostile_keys_stays_in_dest(tmp_path):
    ds = Dataset.create(str(tmp_path / "a" / "ds"), pa.schema([("key", pa.string()), ("jpg", pa.binary())]),
                        ["key"], ["jpg"])
    ds.local().append({"key": HOSTILE_KEYS, "jpg": [k.encode() for k in HOSTILE_KEYS]})
    shards = export_webdataset(ds.location, str(tmp_path / "a" / "out"))
    names = []
    for s in shards:
        with tarfile.open(s) as tf:
            names += tf.getnames()
    assert len(names) == len(HOSTILE_KEYS) and len(set(names)) == len(names)
    for n in names:
        parts = n.split("/")
        assert not n.startswith("/") and "\0" not in n
        assert all(p not in ("", ".", "..") for p in parts), n
    assert "%2E./%2E./evil.jpg" in names and "ok/1.jpg" in names and "%00/abs/x.jpg" in names

    # Unpacked with plain tar, every member lands inside the directory; the shards
    # import back with one sample per key.
    unpack = tmp_path / "unpack"
    unpack.mkdir()
    before = set(tree(tmp_path))
    for s in shards:
        subprocess.run(["tar", "-xf", s, "-C", str(unpack)], check=True, timeout=60)
    new = set(tree(tmp_path)) - before
    assert len(new) == len(HOSTILE_KEYS) and all(p.startswith("unpack" + os.sep) for p in new)
    r = import_webdataset(str(tmp_path / "a" / "out"), str(tmp_path / "back"))
    assert r.rows == len(HOSTILE_KEYS)


def test_import_webdataset_refuses_escaping_member_names(tmp_path):
    for i, bad in enumerate(["../../evil.txt", "/etc/evil.txt", "a/../../b.jpg"]):
        shard = tmp_path / f"bad{i}.tar"
        with tarfile.open(shard, "w") as tf:
            for name in ("ok.txt", bad):
                info = tarfile.TarInfo(name)
                info.size = 3
                tf.addfile(info, io.BytesIO(b"abc"))
        with pytest.raises(UserInputError, match="unsafe tar member name"):
            import_webdataset(str(shard), str(tmp_path / "ds"))
        assert not os.path.exists(tmp_path / "ds")
    # ``tar cf x.tar .`` names members ./000.jpg: harmless, accepted.
    with tarfile.open(tmp_path / "dot.tar", "w") as tf:
        info = tarfile.TarInfo("./000.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    assert import_webdataset(str(tmp_path / "dot.tar"), str(tmp_path / "ds")).rows == 1


# -- import folder ---------------------------------------------------------------
def hostile_src(tmp_path):
    """SRC with a normal file, links out of SRC (to /etc/hostname and a file of ours), a
    link to /dev/zero, a FIFO, a link within SRC and a link loop."""
    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    (src / "dog").mkdir()
    (src / "cat" / "a.jpg").write_bytes(b"cat-a")
    (tmp_path / "secret.txt").write_bytes(b"outside")
    os.symlink("/etc/hostname", src / "cat" / "hostname")
    os.symlink(tmp_path / "secret.txt", src / "cat" / "secret.txt")
    os.symlink("/dev/zero", src / "cat" / "zero")
    os.mkfifo(src / "cat" / "fifo")
    os.symlink("../cat/a.jpg", src / "dog" / "inner.jpg")
    os.symlink(".", src / "dog" / "loop")
    os.symlink(tmp_path, src / "outdir")  # a class folder out of SRC
    return src


def test_import_folder_stays_inside_src_and_reads_only_regular_files(tmp_path):
    src = hostile_src(tmp_path)
    r = import_folder(str(src), str(tmp_path / "ds"))
    got = {(row["label"], row["name"]): row["content"]
           for row in Dataset.load(str(tmp_path / "ds")).local().read_all().to_pylist()}
    assert got == {("cat", "a.jpg"): b"cat-a", ("dog", "inner.jpg"): b"cat-a"}
    reasons = "\n".join(r.skipped)
    for name, why in (("hostname", "outside"), ("secret.txt", "outside"), ("zero", "outside"),
                      ("fifo", "FIFO"), ("loop", "already imported"), ("outdir", "outside")):
        assert any(line.startswith(str(src)) and name in line and why in line for line in r.skipped), (name, reasons)

    r = import_folder(str(src), str(tmp_path / "ds2"), follow_symlinks=True)
    got = {(row["label"], row["name"]): row["content"]
           for row in Dataset.load(str(tmp_path / "ds2")).local().read_all().to_pylist()}
    assert got[("cat", "hostname")] == open("/etc/hostname", "rb").read()
    assert got[("cat", "secret.txt")] == b"outside"
    assert ("cat", "zero") not in got and ("cat", "fifo") not in got
    assert any("zero" in line and "device" in line for line in r.skipped)


def test_cli_import_folder_with_links_devices_and_fifos_does_not_hang(tmp_path):
    src = hostile_src(tmp_path)
    p = spacefs("import", "folder", src, tmp_path / "ds", timeout=60)
    assert p.returncode == 0, p.stderr
    assert "imported 2 rows" in p.stdout and "skipped" in p.stdout
    warnings = [line for line in p.stderr.splitlines() if line.startswith("spacefs: warning: skipped")]
    assert len(warnings) == 6 and len(p.stderr.strip().splitlines()) == 6, p.stderr
    assert any("hostname" in w and "--follow-symlinks" in w for w in warnings)
    p = spacefs("import", "folder", src, tmp_path / "ds2", "--follow-symlinks", timeout=60)
    assert p.returncode == 0, p.stderr
    names = Dataset.load(str(tmp_path / "ds2")).local().read_all(fields=["name"]).column("name").to_pylist()
    assert "hostname" in names and "zero" not in names and "fifo" not in names


def test_a_file_swapped_for_a_fifo_after_the_scan_is_refused_not_waited_on(tmp_path):
    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    (src / "cat" / "a.jpg").write_bytes(b"a")
    (tmp_path / "t.jpg").write_bytes(b"t")
    (src / "cat" / "b.jpg").write_bytes(b"b")
    scan = scan_folder(str(src))
    (_, _, a, st_a), (_, _, b, st_b) = scan.files
    os.unlink(a)
    os.mkfifo(a)  # open(O_RDONLY) of a FIFO with no writer would block forever
    with pytest.raises(UserInputError, match="changed while being imported"):
        read_file(a, st_a)
    os.unlink(b)
    os.symlink(tmp_path / "t.jpg", b)  # a swap to a link: O_NOFOLLOW refuses it
    with pytest.raises(UserInputError, match="cannot read"):
        read_file(b, st_b)
