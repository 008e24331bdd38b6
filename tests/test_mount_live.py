"""Tier 3: real FUSE mounts by real daemons in subprocesses.

Every mount goes through ``mounted`` (or an explicit ``spacefs umount`` in a ``finally``),
so a failing test still unmounts and leaves no daemon behind.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import textwrap
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pytest
from mount_util import (
    PYTHON,
    SPACEFS,
    children_named,
    cli,
    image_bytes,
    make_catalog,
    mounted,
    rows,
    wait_for,
)

from spacefs.mount import daemon, launch, paths


@pytest.fixture
def cat(tmp_path):
    return make_catalog(str(tmp_path))


def commit_in_subprocess(location: str, code: str) -> None:
    """Run ``code`` with ``ds`` = the dataset at ``location`` in another Python process."""
    script = f"from spacefs import Dataset\nfrom mount_util import rows\nds = Dataset.load({location!r})\n" + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}
    subprocess.run([PYTHON, "-c", script], check=True, env=env, timeout=120)


def test_cli_mount_reads_back_every_byte(cat, tmp_path):
    c, ds = cat
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    res = cli("mount", c.location, mnt)
    try:
        assert "mounted" in res.stdout and "log" in res.stdout
        assert paths.mount_type(mnt) == "fuse.spacefs"
        assert sorted(os.listdir(mnt)) == ["pets"]
        cur = os.path.join(mnt, "pets", "current")
        assert os.path.realpath(cur) == os.path.join(mnt, "pets", "versions", "1")
        table = ds.local().read_all()
        for row in table.to_pylist():
            d = os.path.join(cur, "rows", str(row["id"]))
            with open(os.path.join(d, "image"), "rb") as f:
                assert f.read() == row["image"]
            assert open(os.path.join(d, "label"), "rb").read() == row["label"].encode()
            assert os.stat(os.path.join(d, "image")).st_size == len(row["image"])
            p = os.path.join(cur, "files", row["label"], row["image_name"])
            assert open(p, "rb").read() == row["image"]
        # index/ is byte-identical and queryable by DuckDB through the mount
        for p in ds.index_files():
            assert open(os.path.join(cur, "index", os.path.basename(p)), "rb").read() == open(p, "rb").read()
        got = duckdb.sql(f"SELECT label, count(*) FROM read_parquet('{cur}/index/*.parquet') GROUP BY 1 ORDER BY 1").fetchall()
        assert got == [("bird", 10), ("cat", 10), ("dog", 10)]
        # an ImageFolder-style walk sees one file per row
        found = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(cur, "files")) for f in fs]
        assert len(found) == 30
        assert subprocess.run(["cp", os.path.join(cur, "rows", "4", "image"), str(tmp_path / "x")]).returncode == 0
        assert open(tmp_path / "x", "rb").read() == image_bytes(4)
    finally:
        cli("umount", mnt)
    assert paths.mount_type(mnt) is None
    assert not os.path.exists(paths.socket_path(mnt))


def test_commits_from_another_process_appear_within_a_second(cat, tmp_path):
    c, ds = cat
    mnt = str(tmp_path / "mnt")
    with mounted(c.location, mnt):
        pets = os.path.join(mnt, "pets")
        old_rows = sorted(os.listdir(os.path.join(pets, "versions", "1", "rows")))
        old_img = open(os.path.join(pets, "current", "rows", "0", "image"), "rb").read()
        assert os.readlink(os.path.join(pets, "branches", "main")) == "../versions/1"
        commit_in_subprocess(ds.location, "ds.local().upsert(rows([0, 100]))\n")
        wait_for(lambda: os.readlink(os.path.join(pets, "branches", "main")) == "../versions/2", 1.0, "new head")
        wait_for(lambda: "100" in os.listdir(os.path.join(pets, "current", "rows")), 1.0, "new row")
        assert os.path.exists(os.path.join(pets, "versions", "2", "rows", "100", "image"))
        # the old version is exactly as it was
        assert sorted(os.listdir(os.path.join(pets, "versions", "1", "rows"))) == old_rows
        assert open(os.path.join(pets, "versions", "1", "rows", "0", "image"), "rb").read() == old_img
        commit_in_subprocess(ds.location, "ds.add_tag('fresh')\nds.add_branch('dev')\n")
        wait_for(lambda: os.readlink(os.path.join(pets, "tags", "fresh")) == "../versions/2", 1.0, "new tag")
        wait_for(lambda: "dev" in os.listdir(os.path.join(pets, "branches")), 1.0, "new branch")
        commit_in_subprocess(ds.location, "ds.remove_tag('v1')\n")
        wait_for(lambda: not os.path.lexists(os.path.join(pets, "tags", "v1")), 1.0, "tag removed")
        # a new dataset in the catalog shows up too
        c.create_dataset("birds", ds.schema, ["id"], ["image"])
        wait_for(lambda: "birds" in os.listdir(mnt), 1.0, "new dataset")


def test_every_write_is_refused_with_erofs(cat, tmp_path):
    c, ds = cat
    mnt = str(tmp_path / "mnt")
    seq = ds.storage.log.head_seq()
    with mounted(c.location, mnt):
        v1 = os.path.join(mnt, "pets", "versions", "1")
        img = os.path.join(v1, "rows", "3", "image")
        attempts = {
            "open for write": lambda: open(img, "wb"),
            "append": lambda: open(img, "ab"),
            "create": lambda: open(os.path.join(v1, "new"), "w"),
            "mkdir": lambda: os.mkdir(os.path.join(v1, "d")),
            "mkdir at root": lambda: os.mkdir(os.path.join(mnt, "newds")),
            "unlink": lambda: os.unlink(img),
            "rmdir": lambda: os.rmdir(os.path.join(v1, "rows", "3")),
            "rename": lambda: os.rename(img, img + "2"),
            "symlink": lambda: os.symlink("x", os.path.join(mnt, "pets", "tags", "t")),
            "link": lambda: os.link(img, os.path.join(v1, "l")),
            "truncate": lambda: os.truncate(img, 0),
            "chmod": lambda: os.chmod(img, 0o666),
            "utime": lambda: os.utime(img, (0, 0)),
            "setxattr": lambda: os.setxattr(img, "user.x", b"1"),
        }
        for what, fn in attempts.items():
            with pytest.raises(OSError) as e:
                fn()
            assert e.value.errno == errno.EROFS, what
        assert open(img, "rb").read() == image_bytes(3)
    assert ds.storage.log.head_seq() == seq
    assert ds.local().read_all().num_rows == 30


def test_kill9_then_umount_and_remount(cat, tmp_path):
    c, _ = cat
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    info = launch.start(c.location, mnt)
    try:
        os.kill(info.pid, signal.SIGKILL)
        wait_for(lambda: not launch._alive(info.pid), 10, "daemon death")
        # auto_unmount detaches the mount soon after the daemon is gone; whether it has
        # yet or not, umount leaves a clean mountpoint (and removes the leftover socket).
        cli("umount", mnt)
        assert paths.mount_type(mnt) is None and not paths.is_stale(mnt)
        assert not os.path.exists(paths.socket_path(mnt))
        with mounted(c.location, mnt):
            assert os.listdir(mnt) == ["pets"]
    finally:
        if paths.mount_type(mnt):
            launch.unmount(mnt)


def test_the_daemon_sets_its_read_ahead_without_a_request_to_its_own_mount(cat, tmp_path):
    """A daemon thread waiting on its own mount (it used to ``stat`` the mount point to
    find its device) keeps the FUSE connection open if the daemon is killed meanwhile:
    the mount then hangs every process that touches it, the killed daemon included.
    Here the daemon is stopped; setting the read-ahead must still finish."""
    c, _ = cat
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    with mounted(c.location, mnt) as info:
        bdi = f"/sys/class/bdi/{paths.mount_device(mnt)}/read_ahead_kb"

        def read_ahead() -> int:
            with open(bdi) as f:
                return int(f.read())

        wait_for(lambda: read_ahead() == daemon.READ_AHEAD_KB, 10, "the daemon's read-ahead")
        os.kill(info.pid, signal.SIGSTOP)
        ex = ThreadPoolExecutor(1)
        try:
            assert ex.submit(daemon.set_read_ahead, mnt, 512).result(timeout=10) is True
        finally:
            os.kill(info.pid, signal.SIGCONT)
            ex.shutdown()
        assert read_ahead() == 512


def test_stale_mount_is_cleared_by_umount(cat, tmp_path):
    c, _ = cat
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    info = launch.start(c.location, mnt)
    try:
        # Kill the auto-unmount helper first, then the daemon: the mount stays, stale.
        for helper in children_named(info.pid, "fusermount3"):
            os.kill(helper, signal.SIGKILL)
        os.kill(info.pid, signal.SIGKILL)
        wait_for(lambda: not launch._alive(info.pid), 10, "daemon death")
        wait_for(lambda: paths.is_stale(mnt), 10, "stale mount")
        with pytest.raises(OSError) as e:
            os.listdir(mnt)
        assert e.value.errno == errno.ENOTCONN
        res = cli("mount", c.location, mnt, check=False)
        assert res.returncode != 0 and "stale" in res.stderr and "Traceback" not in res.stderr
        cli("umount", mnt)
        assert paths.mount_type(mnt) is None and not paths.is_stale(mnt)
        with mounted(c.location, mnt):
            assert os.listdir(mnt) == ["pets"]
    finally:
        if paths.mount_type(mnt):
            launch.unmount(mnt, lazy=True)


def test_sigterm_unmounts_cleanly(cat, tmp_path):
    c, _ = cat
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    info = launch.start(c.location, mnt)
    try:
        os.kill(info.pid, signal.SIGTERM)
        wait_for(lambda: not launch._alive(info.pid), 10, "daemon exit")
        assert paths.mount_type(mnt) is None
        assert not os.path.exists(paths.socket_path(mnt)) and not os.path.exists(paths.state_path(mnt))
        assert "unmounted" in open(info.log).read()
    finally:
        if paths.mount_type(mnt):
            launch.unmount(mnt, lazy=True)


def test_foreground_mount_and_sigint(cat, tmp_path):
    c, _ = cat
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    proc = subprocess.Popen([SPACEFS, "mount", "--foreground", c.location, mnt],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: paths.mount_type(mnt) == "fuse.spacefs" and os.listdir(mnt) == ["pets"], 30, "mount")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "mounted" in err
        assert paths.mount_type(mnt) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if paths.mount_type(mnt):
            launch.unmount(mnt, lazy=True)


def test_single_dataset_mount(cat, tmp_path):
    _, ds = cat
    mnt = str(tmp_path / "mnt")
    with mounted(ds.location, mnt):
        assert sorted(os.listdir(mnt)) == ["branches", "current", "tags", "versions"]
        assert open(os.path.join(mnt, "tags", "v1", "rows", "7", "image"), "rb").read() == image_bytes(7)
        ds.local().delete("id = 7")
        wait_for(lambda: "7" not in os.listdir(os.path.join(mnt, "current", "rows")), 1.0, "delete visible")
        assert os.path.exists(os.path.join(mnt, "versions", "1", "rows", "7", "image"))


def test_mount_and_umount_errors(cat, tmp_path):
    c, _ = cat
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    for args, words in [(("mount", str(tmp_path / "nope"), mnt), "no such"),
                        (("mount", c.location, str(tmp_path / "nomnt")), "mountpoint"),
                        (("umount", mnt), "not mounted")]:
        res = cli(*args, check=False)
        assert res.returncode != 0 and words in res.stderr.lower() and "Traceback" not in res.stderr, res.stderr
    with mounted(c.location, mnt):
        res = cli("mount", c.location, mnt, check=False)
        assert res.returncode != 0 and "already" in res.stderr


def test_big_dataset_listing_and_stat(tmp_path):
    c, ds = make_catalog(str(tmp_path), n=0)
    ds.local().append(rows(range(5000)))
    mnt = str(tmp_path / "mnt")
    with mounted(c.location, mnt):
        d = os.path.join(mnt, "pets", "current", "rows")
        names = os.listdir(d)
        assert len(names) == 5000
        sizes = {n: os.stat(os.path.join(d, n, "image")).st_size for n in names[:500]}
        assert all(sizes[n] == len(image_bytes(int(n))) for n in sizes)


def test_demo_runs(tmp_path):
    res = subprocess.run([SPACEFS, "demo"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for words in ("ls", "cp", "duckdb", "appeared after", "Unmounted"):
        assert words in res.stdout
