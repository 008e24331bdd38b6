"""The merge, restore, expire, compact and any-version diff commands (real console script)."""

from __future__ import annotations

import pyarrow as pa
from test_cli import run

from spacefs import Dataset

SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("blob", pa.binary())])


def data(ids, label):
    return {"id": list(ids), "label": [label] * len(ids), "blob": [b"b%d" % i for i in ids]}


def labels(ds, version=None):
    return {r["id"]: r["label"] for r in ds.local().read_all(version=version, fields=["id", "label"]).to_pylist()}


def test_vcs_commands(tmp_path):
    loc = str(tmp_path / "ds")
    ds = Dataset.create(loc, SCHEMA, ["id"], ["blob"])
    ds.local().append(data(range(10), "a"))
    run("branch", loc, "dev")
    dev = Dataset.load(loc)
    dev.set_current_branch("dev")
    dev.local().upsert(data([1], "d"))
    ds.local().upsert(data([2], "m"))

    out = run("diff", loc, "main", "dev").stdout
    assert "- id=1" in out and "- id=2" in out and "+ id=1, label='d'" in out and "+ id=2, label='a'" in out

    dev.local().upsert(data([3], "d"))
    ds.local().upsert(data([3], "m"))
    p = run("merge", loc, "dev", ok=False)
    assert p.returncode != 0 and "conflict" in p.stderr and "id=3" in p.stderr
    assert labels(ds)[3] == "m"
    out = run("merge", loc, "dev", "--on-conflict", "theirs").stdout
    assert "merge dev into main: snapshot" in out
    assert labels(ds)[1] == "d" and labels(ds)[3] == "d" and labels(ds)[2] == "m"
    assert "nothing to do" in run("merge", loc, "dev").stdout
    assert run("merge", loc, "dev", "--on-conflict", "maybe", ok=False).returncode != 0

    out = run("restore", loc, "1").stdout
    assert "restore 1: snapshot" in out and set(labels(ds).values()) == {"a"}

    for i in range(5):
        ds.local().append(data([100 + i], "s"))
    n_files = len(ds.index_files())
    assert "compact: snapshot" in run("compact", loc).stdout
    assert len(ds.index_files()) == 1 < n_files
    assert "nothing to do" in run("compact", loc).stdout

    out = run("expire", loc, "--older-than", "0s").stdout
    assert "would expire" in out
    before = ds.versions().num_rows
    out = run("expire", loc, "--older-than", "0s", "--apply").stdout
    assert out.startswith("expired") and ds.versions().num_rows < before
    logged = [ln.split()[0] for ln in run("log", loc).stdout.splitlines()]
    assert logged == [str(s) for s in sorted(set(ds.versions().column("snapshot_id").to_pylist()), reverse=True)]
    p = run("diff", loc, "2", "main", ok=False)
    assert p.returncode != 0 and "expired" in p.stderr
    assert run("expire", loc, "--older-than", "soon", ok=False).returncode != 0
