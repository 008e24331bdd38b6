"""The ``spacefs`` engine commands, run as the real console script in subprocesses."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from spacefs import Dataset, DirCatalog

from conftest import run_in_pty

SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("blob", pa.binary())])
_SCRIPT = Path(sys.executable).with_name("spacefs")
SPACEFS = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "spacefs.cli"]


def cmd(*args: str) -> list[str]:
    return SPACEFS + [str(a) for a in args]


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd(*args), capture_output=True, text=True, timeout=120)
    assert "Traceback" not in p.stderr, p.stderr
    if ok:
        assert p.returncode == 0, f"spacefs {' '.join(map(str, args))}: {p.stderr}"
    return p


def run_all(arg_lists: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Run several invocations side by side (each is a separate interpreter start)."""
    procs = [subprocess.Popen(cmd(*a), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in arg_lists]
    out = []
    for a, p in zip(arg_lists, procs, strict=True):
        stdout, stderr = p.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(a, p.returncode, stdout, stderr))
    return out


def make_images(location: str) -> Dataset:
    """Snapshots: 0 create, 1 append 100 rows (tag v1), 2 upsert ids 1 and 200, 3 delete id < 5."""
    ds = Dataset.create(location, SCHEMA, ["id"], ["blob"])
    ds.local().append({"id": list(range(100)), "label": [f"l{i % 3}" for i in range(100)],
                       "blob": [bytes([i]) * 10 for i in range(100)]})
    ds.add_tag("v1")
    ds.local().upsert({"id": [1, 200], "label": ["x", "y"], "blob": [b"a", b"bb"]})
    ds.local().delete("id < 5")
    return ds


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "cat"
    cat = DirCatalog(str(root))
    make_images(str(root / "images"))
    cat.create_dataset("empty", pa.schema([("k", pa.string())]), ["k"], [])
    return root


@pytest.fixture
def images(tmp_path) -> Path:
    make_images(str(tmp_path / "images"))
    return tmp_path / "images"


def test_help_everywhere():
    commands = ["ls", "log", "tag", "branch", "diff", "sql", "vacuum", "info"]
    results = run_all([["--help"]] + [[c, "--help"] for c in commands])
    for r in results:
        assert r.returncode == 0 and r.stdout.startswith("Usage: spacefs"), (r.args, r.stderr)
    for c in commands:
        assert f"  {c} " in results[0].stdout


def test_ls(catalog):
    lines = run("ls", catalog).stdout.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "ROWS", "SNAPSHOT", "UPDATED"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert rows["images"][1:4] == ["dataset", "96", "3"]
    assert rows["empty"][1:4] == ["dataset", "0", "0"]


def test_log(catalog):
    lines = run("log", catalog / "images").stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["3", "2", "1", "0"]
    assert [ln.split()[3] for ln in lines] == ["delete", "upsert", "append", "create"]
    assert "96 rows (-5)" in lines[0] and lines[0].endswith("(main)")
    assert lines[2].endswith("(tag: v1)") and "100 rows (+100)" in lines[2]
    assert len(run("log", catalog / "images", "-n", "2").stdout.splitlines()) == 2
    follow = run("log", catalog / "images", "--branch", "v1").stdout.splitlines()
    assert [ln.split()[0] for ln in follow] == ["1", "0"]


def test_tag_and_branch(images):
    assert run("tag", images, "first", "--version", "1").stdout.strip() == "tagged snapshot 1 as first"
    run("tag", images, "last")
    tags = [ln.split() for ln in run("tag", images).stdout.splitlines()]  # listed like branches
    assert tags == [["TAG", "SNAPSHOT", "ROWS"], ["first", "1", "100"], ["last", "3", "96"], ["v1", "1", "100"]]
    assert run("tag", images, "first", "--delete").stdout.strip() == "deleted tag first (was snapshot 1)"

    assert run("branch", images, "dev", "-v", "v1").stdout.strip() == "created branch dev at snapshot 1"
    listing = [ln.split() for ln in run("branch", images).stdout.splitlines()]
    assert listing == [["BRANCH", "SNAPSHOT", "ROWS"], ["main", "3", "96"], ["dev", "1", "100"]]

    ds = Dataset.load(str(images))
    assert ds.storage.head().tags == {"v1": 1, "last": 3}
    ds.set_current_branch("dev")
    ds.local().append({"id": [500], "label": ["d"], "blob": [b"d"]})
    log = run("log", images).stdout.splitlines()
    assert log[0].split()[0] == "4" and "from 1" in log[0] and log[0].endswith("(dev)")
    assert run("log", images, "-b", "dev").stdout.split("\n")[1].split()[0] == "1"

    assert run("branch", images, "dev", "--delete").stdout.strip() == "deleted branch dev (was snapshot 4)"
    assert "dev" not in Dataset.load(str(images)).storage.head().branches
    assert Dataset.load(str(images)).local().read_all(version=4).num_rows == 101  # snapshots stay


def test_diff(catalog):
    out = run("diff", catalog / "images", "v1", "main").stdout.splitlines()
    assert out[0].startswith("snapshot 2 ") and out[0].endswith("upsert")
    assert out[1:4] == ["- id=1", "+ id=1, label='x', blob=<1 bytes>", "+ id=200, label='y', blob=<2 bytes>"]
    assert out[4].startswith("snapshot 3 ") and out[4].endswith("delete")
    assert sorted(out[5:]) == sorted(f"- id={i}" for i in range(5))

    limited = run("diff", catalog / "images", "0", "3", "--limit", "3").stdout.splitlines()
    assert limited[1:4] == ["+ id=0, label='l0', blob=<10 bytes>", "+ id=1, label='l1', blob=<10 bytes>",
                            "+ id=2, label='l2', blob=<10 bytes>"]
    assert limited[4] == "  ... 97 more rows (-0 +100 in all; --limit 0 shows all)"
    assert len(run("diff", catalog / "images", "0", "3", "-n", "0").stdout.splitlines()) == 3 + 100 + 3 + 5

    summary = run("diff", catalog / "images", "0", "3", "--summary").stdout.splitlines()
    assert [ln.split()[:2] + ln.split()[-3:] for ln in summary] == [
        ["snapshot", "1", "append", "-0", "+100"], ["snapshot", "2", "upsert", "-1", "+2"],
        ["snapshot", "3", "delete", "-5", "+0"]]
    same = run("diff", catalog / "images", "3", "3")
    assert same.stdout == "" and "no changes" in same.stderr


def test_sql(catalog):
    q = "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label"
    table = run("sql", catalog, q).stdout.splitlines()
    assert [ln.split() for ln in table] == [["label", "n"], ["l0", "32"], ["l1", "31"], ["l2", "32"], ["y", "1"],
                                            ["(4", "rows)"]]
    rows = list(csv.DictReader(io.StringIO(run("sql", catalog / "images", q, "--format", "csv").stdout)))
    assert rows[0] == {"label": "l0", "n": "32"} and len(rows) == 4
    got = json.loads(run("sql", catalog / "images", "SELECT id, blob FROM images WHERE id = 7", "-f", "json").stdout)
    assert got[0]["id"] == 7 and got[0]["blob"]["size"] == 10 and got[0]["blob"]["file"].startswith("data/records/")
    old = json.loads(run("sql", catalog / "images", "SELECT count(*) AS n FROM images", "-f", "json", "--version", "v1").stdout)
    assert old == [{"n": 100}]
    both = run("sql", catalog, "SELECT (SELECT count(*) FROM images) AS a, (SELECT count(*) FROM empty) AS b", "-f", "csv")
    assert both.stdout.splitlines() == ["a,b", "96,0"]


def test_info(catalog):
    out = run("info", catalog / "images").stdout
    assert "primary keys:  id" in out and "record fields: blob" in out
    assert "blob   binary  (record field)" in out and "id     int64  (primary key)" in out
    assert "branches:      main -> 3" in out and "tags:          v1 -> 1" in out
    assert "rows:         96" in out
    assert "rows:         100" in run("info", catalog / "images", "--version", "v1").stdout


def test_vacuum(images):
    stray = images / "data" / "index" / "stray.parquet"
    stray.write_bytes(b"x" * 100)
    dry = run("vacuum", images).stdout.splitlines()
    assert dry == ["would remove 0 files, 0 B (0 bytes); kept 1 unreferenced files younger than 1d"]
    old = time.time() - 3 * 3600
    os.utime(stray, (old, old))
    dry = run("vacuum", images, "--older-than", "2h").stdout.splitlines()
    assert dry == ["would remove data/index/stray.parquet",
                   "would remove 1 files, 100 B (100 bytes); pass --apply to remove them"]
    assert stray.exists()
    done = run("vacuum", images, "--older-than", "2h", "--apply").stdout.splitlines()
    assert done == ["removed data/index/stray.parquet", "removed 1 files, 100 B (100 bytes)"]
    assert not stray.exists()
    assert Dataset.load(str(images)).local().read_all(version="v1").num_rows == 100


def test_user_errors_are_one_line(catalog, tmp_path):
    images = str(catalog / "images")
    (tmp_path / "notadataset").mkdir()
    cases = [
        (["log", tmp_path / "missing"], "no dataset directory"),
        (["log", tmp_path / "notadataset"], "no spacefs dataset"),
        (["info", images, "--version", "42"], "snapshot 42 does not exist"),
        (["diff", images, "0", "nope"], "no tag or branch named 'nope'"),
        (["diff", images, "3", "99"], "snapshot 99 does not exist"),
        (["tag", images, "v1"], "already exists"),
        (["tag", images, "bad/name"], "not valid"),
        (["tag", images, "gone", "--delete"], "no tag named 'gone'"),
        (["branch", images, "main", "--delete"], "cannot be removed"),
        (["branch", images, "b2", "--from", "99"], "snapshot 99 does not exist"),
        (["sql", catalog, "SELEC 1"], "SQL error"),
        (["sql", catalog, "SELECT * FROM nope"], "SQL error"),
        (["sql", tmp_path / "missing", "SELECT 1"], "no catalog or dataset"),
        (["vacuum", images, "--older-than", "7x"], "bad duration '7x'"),
        (["vacuum", images, "--older-than", "d"], "bad duration 'd'"),
        (["ls", tmp_path / "missing"], "no catalog directory"),
    ]
    results = run_all([[str(a) for a in args] for args, _ in cases])
    for (args, message), r in zip(cases, results, strict=True):
        lines = r.stderr.splitlines()
        assert r.returncode != 0, args
        assert len(lines) == 1 and lines[0].startswith("spacefs: error: ") and message in lines[0], (args, r.stderr)
    assert Dataset.load(images).storage.head().tags == {"v1": 1}  # nothing changed


def test_progress_on_a_terminal(images):
    """On a terminal a long command shows a tqdm bar on stderr; piped, it prints none."""
    code, out = run_in_pty(cmd("vacuum", images))
    assert code == 0, out
    assert "snapshots:" in out and "%|" in out and "would remove 0 files" in out
    piped = run("vacuum", images)
    assert "%|" not in piped.stderr and piped.stderr == ""


def test_module_entry_point(catalog):
    p = subprocess.run([sys.executable, "-m", "spacefs.cli", "ls", str(catalog)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "images" in p.stdout
    assert shutil.which("spacefs", path=str(Path(sys.executable).parent)) or SPACEFS[0] == sys.executable
