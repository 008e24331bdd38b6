"""Vacuum: orphans of killed writers are found, removed only when old, and no snapshot changes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import pyarrow as pa
import pytest

from spacefs import Dataset
from spacefs.engine.errors import UserInputError
from spacefs.engine.vacuum import vacuum

SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("blob", pa.binary())])

WRITER = textwrap.dedent(
    """
    import sys
    from spacefs import Dataset
    op, lo, hi = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    runner = Dataset.load(sys.argv[1]).local()
    rows = {"id": list(range(lo, hi)), "label": [f"w{i}" for i in range(lo, hi)],
            "blob": [b"x%d" % i * 50 for i in range(lo, hi)]}
    if op == "delete":
        runner.delete(f"id >= {lo} AND id < {hi}")
    else:
        getattr(runner, op)(rows)
    """
)


def rows(lo: int, hi: int) -> dict:
    return {"id": list(range(lo, hi)), "label": [f"r{i}" for i in range(lo, hi)],
            "blob": [os.urandom(64) + bytes([i % 256]) for i in range(lo, hi)]}


def run_writer(location: str, op: str, lo: int, hi: int, failpoint: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("SPACEFS_FAILPOINT", None)
    if failpoint:
        env["SPACEFS_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-c", WRITER, location, op, str(lo), str(hi)], env=env,
                          capture_output=True, text=True, timeout=120)


def all_versions(ds: Dataset) -> dict[int, pa.Table]:
    last = ds.storage.head().last_snapshot_id
    return {sid: ds.local().read_all(version=sid).sort_by("id") for sid in range(last + 1)}


def files_under(root: str) -> set[str]:
    out = set()
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            out.add(os.path.relpath(os.path.join(dirpath, f), root))
    return out


def age(root: str, rels, seconds: float) -> None:
    """Make files look ``seconds`` old: retention is by modification time."""
    t = time.time() - seconds
    for rel in rels:
        os.utime(os.path.join(root, rel), (t, t))


@pytest.fixture
def ds(tmp_path) -> Dataset:
    d = Dataset.create(str(tmp_path / "ds"), SCHEMA, ["id"], ["blob"])
    d.local().append(rows(0, 100))
    d.local().upsert(rows(50, 150))  # rewrites an index file: old one stays for snapshot 1
    d.add_tag("v2")
    d.add_branch("dev")
    d.set_current_branch("dev")
    d.local().delete("id < 10")
    d.set_current_branch("main")
    return d


def test_nothing_to_remove_on_a_clean_dataset(ds):
    before = files_under(ds.location)
    report = ds.vacuum(older_than=timedelta(0), apply=True)
    assert report.files == [] and report.bytes == 0 and report.applied
    assert files_under(ds.location) == before


@pytest.mark.parametrize(
    ("op", "failpoint", "orphan_dirs"),
    [
        ("append", "write:after_data", {"data/index", "data/records/blob"}),
        ("upsert", "commit:after_manifest", {"data/index", "data/records/blob", "metadata/manifests", "metadata/changes"}),
        ("delete", "commit:before_publish", {"data/index", "metadata/manifests", "metadata/changes", "metadata/log"}),
    ],
)
def test_orphans_of_a_killed_writer(ds, op, failpoint, orphan_dirs):
    expected = all_versions(ds)
    before = files_under(ds.location)
    proc = run_writer(ds.location, op, 120, 130, failpoint)
    assert proc.returncode == -9, proc.stderr
    orphans = files_under(ds.location) - before
    assert {os.path.dirname(o) for o in orphans} == orphan_dirs

    # Fresh orphans might belong to a writer still at work: kept by the default retention.
    report = ds.vacuum()
    assert report.files == [] and report.kept_recent == len(orphans)

    age(ds.location, files_under(ds.location), 3600)
    dry = ds.vacuum(older_than=timedelta(minutes=30))
    assert not dry.applied and set(dry.files) == orphans
    assert dry.bytes == sum(os.path.getsize(os.path.join(ds.location, o)) for o in orphans)
    assert files_under(ds.location) - before == orphans  # a dry run removes nothing

    done = ds.vacuum(older_than=timedelta(minutes=30), apply=True)
    assert done.applied and set(done.files) == orphans and done.bytes == dry.bytes
    assert files_under(ds.location) == before
    fresh = Dataset.load(ds.location)
    got = all_versions(fresh)
    assert got.keys() == expected.keys()
    for sid, table in expected.items():
        assert got[sid].equals(table), f"snapshot {sid} changed"
    assert fresh.local().read_all(version="v2").num_rows == 150

    # The dataset still takes writes after a vacuum.
    proc = run_writer(ds.location, "append", 200, 210, None)
    assert proc.returncode == 0, proc.stderr
    assert Dataset.load(ds.location).num_rows() == 160


def test_only_unreferenced_files_go(ds):
    """Index files dropped from the head but read by older snapshots are kept."""
    storage = ds.storage
    age(ds.location, files_under(ds.location), 10 * 86400)
    stray = os.path.join(ds.location, "data", "index", "stray.parquet")
    with open(stray, "wb") as f:
        f.write(b"not referenced")
    age(ds.location, ["data/index/stray.parquet"], 10 * 86400)
    report = vacuum(storage, older_than=timedelta(days=1), apply=True)
    assert report.files == ["data/index/stray.parquet"] and report.bytes == len(b"not referenced")
    for rel in ("metadata/dataset.json", "metadata/log/LATEST"):
        assert os.path.exists(os.path.join(ds.location, rel))
    assert len(os.listdir(os.path.join(ds.location, "metadata", "snapshots"))) == 4
    assert ds.local().read_all(version=1).num_rows == 100
    assert ds.local().read_all(version="dev").num_rows == 140


def test_bad_retention_is_refused(ds):
    with pytest.raises(UserInputError, match="negative"):
        ds.vacuum(older_than=timedelta(seconds=-1))
    with pytest.raises(UserInputError, match="timedelta"):
        ds.vacuum(older_than=3600)
