"""``spacefs import`` / ``spacefs export`` as a user runs them: real subprocesses, exit
codes, and one clear error line for bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from spacefs import Dataset

from conftest import run_in_pty


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


def test_cli_webdataset_and_hf_round_trips(tmp_path):
    import datasets
    import webdataset as wds

    os.makedirs(tmp_path / "shards")
    with wds.TarWriter(str(tmp_path / "shards" / "a.tar"), encoder=False) as sink:
        for i in range(5):
            sink.write({"__key__": f"k{i}", "png": bytes([i]) * 10, "cls": str(i % 2).encode()})
    p = spacefs("import", "webdataset", tmp_path / "shards", tmp_path / "w")
    assert p.returncode == 0 and "imported 5 rows" in p.stdout, p.stderr
    p = spacefs("export", "webdataset", tmp_path / "w", tmp_path / "wout", "--samples-per-shard", "2")
    assert p.returncode == 0 and "exported 3 shard(s)" in p.stdout, p.stderr

    hf = datasets.Dataset.from_dict({"id": [1, 2], "text": ["a", "b"], "blob": [b"x", b"y"]})
    hf.save_to_disk(str(tmp_path / "hf"))
    p = spacefs("import", "hf", tmp_path / "hf", tmp_path / "h", "-k", "id")
    assert p.returncode == 0 and "imported 2 rows" in p.stdout, p.stderr
    assert Dataset.load(str(tmp_path / "h")).record_fields == ["blob"]
    p = spacefs("export", "hf", tmp_path / "h", tmp_path / "hout")
    assert p.returncode == 0, p.stderr
    assert sorted(datasets.load_from_disk(str(tmp_path / "hout"))["blob"]) == [b"x", b"y"]


def test_cli_progress_bar_on_a_terminal(tmp_path):
    pq.write_table(pa.table({"id": list(range(1000)), "v": [b"x"] * 1000}), tmp_path / "in.parquet")
    code, text = run_in_pty([sys.executable, "-m", "spacefs.cli", "import", "parquet", str(tmp_path / "in.parquet"),
                             str(tmp_path / "ds"), "-k", "id"], size=(40, 120))
    assert code == 0, text
    assert "import ds:" in text and "/1.00k [" in text, text  # the bar, cleared when done
    assert "imported 1000 rows" in text


def test_cli_upsert_of_labels_only_keeps_the_images(tmp_path):
    t = pa.table({"id": [1, 2, 3], "label": ["a", "b", "a"], "image": [b"x", b"yy", b"zzz"]})
    pq.write_table(t, tmp_path / "in.parquet")
    assert spacefs("import", "parquet", tmp_path / "in.parquet", tmp_path / "ds", "-k", "id", "-r", "image").returncode == 0
    pq.write_table(pa.table({"id": [3, 1], "label": ["c", "d"]}), tmp_path / "labels.parquet")
    p = spacefs("import", "parquet", tmp_path / "labels.parquet", tmp_path / "ds", "--mode", "upsert")
    assert p.returncode == 0, p.stderr
    got = Dataset.load(str(tmp_path / "ds")).local().read_all().sort_by("id").to_pydict()
    assert got == {"id": [1, 2, 3], "label": ["d", "b", "c"], "image": [b"x", b"yy", b"zzz"]}
    # Without the images, rows of new keys cannot be made; append and insert need every field.
    pq.write_table(pa.table({"id": [9], "label": ["z"]}), tmp_path / "new.parquet")
    assert_one_line_error(spacefs("import", "parquet", tmp_path / "new.parquet", tmp_path / "ds", "--mode", "upsert"),
                          "not stored", "'id': 9")
    assert_one_line_error(spacefs("import", "parquet", tmp_path / "new.parquet", tmp_path / "ds", "--mode", "insert"),
                          "missing ['image']")
    assert Dataset.load(str(tmp_path / "ds")).storage.head().last_snapshot_id == 2
