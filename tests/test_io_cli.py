"""``spacefs import`` / ``spacefs export`` as a user runs them: real subprocesses, exit
codes, and one clear error line for bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from spacefs import Dataset


def spacefs(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spacefs.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def assert_one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode != 0, p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spacefs: error:"), p.stderr
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_parquet_and_folder_round_trip(tmp_path):
    t = pa.table({"id": [1, 2, 3], "label": ["a", "b", "a"], "image": [b"x", b"yy", b"zzz"]})
    pq.write_table(t, tmp_path / "in.parquet")
    p = spacefs("import", "parquet", tmp_path / "in.parquet", tmp_path / "ds", "-k", "id", "-r", "image")
    assert p.returncode == 0, p.stderr
    assert "imported 3 rows" in p.stdout and "snapshot 1" in p.stdout
    assert p.stderr == ""  # no progress bar when stderr is not a terminal
    p = spacefs("export", "parquet", tmp_path / "ds", tmp_path / "out", "--version", "1")
    assert p.returncode == 0, p.stderr
    assert pq.read_table(str(tmp_path / "out")).sort_by("id").equals(t)

    for c, names in {"cat": ["1.jpg", "2.jpg"], "dog": ["3.jpg"]}.items():
        os.makedirs(tmp_path / "imgs" / c)
        for n in names:
            (tmp_path / "imgs" / c / n).write_bytes(f"{c}/{n}".encode())
    p = spacefs("import", "folder", tmp_path / "imgs", tmp_path / "fds")
    assert p.returncode == 0 and "imported 3 rows" in p.stdout, p.stderr
    p = spacefs("export", "folder", tmp_path / "fds", tmp_path / "tree")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "tree" / "dog" / "3.jpg").read_bytes() == b"dog/3.jpg"
    assert Dataset.load(str(tmp_path / "fds")).file_layout["path"] == "{label}/{name}"


def test_cli_bad_input_gets_one_line(tmp_path):
    assert_one_line_error(spacefs("import", "folder", tmp_path / "missing", tmp_path / "ds"),
                          "no such folder", "missing")

    (tmp_path / "bad.tar").write_bytes(b"\x00garbage" * 300)
    assert_one_line_error(spacefs("import", "webdataset", tmp_path / "bad.tar", tmp_path / "ds"),
                          "corrupt tar shard", "bad.tar")
    assert not os.path.exists(tmp_path / "ds")

    pq.write_table(pa.table({"id": [1], "v": [b"x"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [2], "w": [b"y"]}), tmp_path / "b.parquet")
    assert spacefs("import", "parquet", tmp_path / "a.parquet", tmp_path / "ds", "-k", "id").returncode == 0
    assert_one_line_error(spacefs("import", "parquet", tmp_path / "b.parquet", tmp_path / "ds"),
                          "schema clash", "unknown ['w']")
    assert Dataset.load(str(tmp_path / "ds")).storage.head().last_snapshot_id == 1

    assert_one_line_error(spacefs("import", "parquet", tmp_path / "a.parquet", tmp_path / "new"), "--primary-key")
    assert_one_line_error(spacefs("export", "parquet", tmp_path / "ds", tmp_path / "o", "--version", "9"),
                          "snapshot 9")
    assert not os.path.exists(tmp_path / "o")
