"""Managing mounts from the CLI: refusals that save a newcomer, ``spacefs mounts``, logs.

Real mounts by real daemons; every one is unmounted in a ``finally``.
"""

from __future__ import annotations

import json
import os

import pytest
from mount_util import cli, make_catalog, rows, wait_for

from spacefs.mount import launch, paths


@pytest.fixture
def cat(tmp_path):
    return make_catalog(str(tmp_path))


def listed(mnt: str) -> dict | None:
    return next((m for m in json.loads(cli("mounts", "--json").stdout) if m["mountpoint"] == mnt), None)


def test_refuses_a_non_empty_mountpoint(cat, tmp_path):
    c, _ = cat
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "notes.txt").write_text("mine")
    res = cli("mount", c.location, str(mnt), check=False)
    assert res.returncode == 2 and "not empty" in res.stderr and len(res.stderr.splitlines()) == 1
    assert paths.mount_type(str(mnt)) is None and (mnt / "notes.txt").read_text() == "mine"


def test_refuses_a_source_that_is_no_catalog(tmp_path):
    src = tmp_path / "home"
    (src / "docs").mkdir(parents=True)
    (src / "a.txt").write_text("x")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = cli("mount", str(src), str(mnt), check=False)
    assert res.returncode == 2 and "neither a spacefs dataset nor a catalog" in res.stderr
    assert paths.mount_type(str(mnt)) is None


def test_mounts_lists_and_umount_removes_the_log(cat, tmp_path):
    c, ds = cat
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    empty = str(tmp_path / "empty-catalog")  # an empty directory is a catalog to fill later
    os.makedirs(empty)
    mnt2 = str(tmp_path / "mnt2")
    os.makedirs(mnt2)
    kept_log = str(tmp_path / "mine.log")
    try:
        out = cli("mount", c.location, mnt, "--debug").stdout
        cli("mount", empty, mnt2, "--log", kept_log)
        entry = listed(mnt)
        assert entry is not None and entry["source"] == c.location and entry["state"] == "serving"
        assert str(entry["pid"]) in out and entry["log"] in out and os.path.isfile(entry["log"])
        assert listed(mnt2)["log"] == kept_log
        table = cli("mounts").stdout.splitlines()
        assert table[0].split() == ["MOUNTPOINT", "SOURCE", "PID", "STATE", "LOG"]
        assert any(line.startswith(mnt + " ") for line in table)

        assert len(os.listdir(os.path.join(mnt, "pets", "current", "rows"))) == 30
        ds.local().append(rows(range(100, 103)))  # --debug: the daemon logs the commits it sees
        wait_for(lambda: " DEBUG " in open(entry["log"]).read(), 10.0, "a debug line in the log")
    finally:
        for m in (mnt, mnt2):
            if paths.mount_type(m) is not None:
                launch.unmount(m)
    assert listed(mnt) is None and listed(mnt2) is None
    assert not os.path.exists(entry["log"])  # the default log goes with a clean unmount
    assert os.path.isfile(kept_log)          # a log the user named stays
