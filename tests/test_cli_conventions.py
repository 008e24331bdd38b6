"""One convention across the CLI, safe import defaults, messages, delete/rm, quiet pipes.

Every command runs as the real console script in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import click
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cli import cmd, make_images, run

from spacefs import Dataset
from spacefs.cli import main

from conftest import REPO


@pytest.fixture
def images(tmp_path):
    make_images(str(tmp_path / "images"))
    return tmp_path / "images"


LISTING = ["ls", "log", "info", "tag", "branch", "mounts"]
WRITING = [("import", "parquet"), ("import", "folder"), ("import", "webdataset"), ("import", "hf"), ("delete",)]


def all_commands(group: click.Group = main, prefix: tuple[str, ...] = ()):
    for name, c in group.commands.items():
        if isinstance(c, click.Group):
            yield from all_commands(c, prefix + (name,))
        else:
            yield prefix + (name,), c


def option_names(c: click.Command) -> set[str]:
    return {n for p in c.params if isinstance(p, click.Option) for n in (*p.opts, *p.secondary_opts)}


def test_options_follow_one_convention():
    for path, c in all_commands():
        names = option_names(c)
        where = "spacefs " + " ".join(path)
        if "--version" in names:
            assert "-v" in names, f"{where}: --version without -v"
        if "--branch" in names:
            assert "-b" in names, f"{where}: --branch without -b"
        if "--message" in names:
            assert "-m" in names, f"{where}: --message without -m"
        assert "--from" not in names or "--version" in names, f"{where}: --from instead of -v/--version"
    commands = dict(all_commands())
    for name in LISTING:
        assert "--json" in option_names(commands[(name,)]), f"spacefs {name} has no --json"
    for path in WRITING:
        assert {"-b", "-m"} <= option_names(commands[path]), f"spacefs {' '.join(path)} lacks -b or -m"
    assert {"--verbose", "--quiet", "-q"} <= option_names(main)


def test_exit_codes_are_documented():
    helptext = run("--help").stdout
    readme = open(os.path.join(REPO, "README.md")).read()
    for code in ("0", "1", "2", "3", "141"):
        assert re.search(rf"^\s+{code}\s+\w", helptext, re.M), f"exit code {code} not in spacefs --help"
        assert f"| `{code}` |" in readme, f"exit code {code} not in the README's table"


def test_repeated_import_fails_instead_of_doubling(tmp_path):
    pq.write_table(pa.table({"id": [1, 2, 3], "x": ["a", "b", "c"]}), tmp_path / "a.parquet")
    run("import", "parquet", tmp_path / "a.parquet", tmp_path / "ds", "-k", "id")
    again = run("import", "parquet", tmp_path / "a.parquet", tmp_path / "ds", ok=False)
    assert again.returncode == 1 and "already exists" in again.stderr and len(again.stderr.splitlines()) == 1
    ds = Dataset.load(str(tmp_path / "ds"))
    assert ds.num_rows() == 3 and ds.snapshot_id() == 1  # nothing written
    run("import", "parquet", tmp_path / "a.parquet", tmp_path / "ds", "--mode", "upsert")
    assert ds.num_rows() == 3 and ds.snapshot_id() == 2
    run("import", "parquet", tmp_path / "a.parquet", tmp_path / "ds", "--mode", "append")  # asked for: doubles
    assert ds.num_rows() == 6


def test_import_to_a_branch_with_a_message(tmp_path):
    pq.write_table(pa.table({"id": [1, 2], "x": ["a", "b"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [3], "x": ["c"]}), tmp_path / "b.parquet")
    run("import", "parquet", tmp_path / "a.parquet", tmp_path / "ds", "-k", "id", "-m", "first load")
    run("branch", tmp_path / "ds", "dev")
    p = run("import", "parquet", tmp_path / "b.parquet", tmp_path / "ds", "-b", "dev", "-m", "more on dev")
    assert "snapshot 2" in p.stdout
    ds = Dataset.load(str(tmp_path / "ds"))
    assert ds.num_rows("main") == 2 and ds.num_rows("dev") == 3
    missing = run("import", "parquet", tmp_path / "b.parquet", tmp_path / "ds", "-b", "nope", ok=False)
    assert missing.returncode == 3 and "nope" in missing.stderr
    log = run("log", tmp_path / "ds").stdout.splitlines()
    assert log[0].endswith('"more on dev"') and log[1].endswith('"first load"')
    assert [s["message"] for s in json.loads(run("log", tmp_path / "ds", "--json").stdout)] == \
        ["more on dev", "first load", None]


def test_message_keyword_on_python_writes(tmp_path):
    ds = Dataset.create(str(tmp_path / "ds"), pa.schema([("id", pa.int64())]), ["id"])
    r = ds.local()
    r.append({"id": [1, 2]}, message="two rows")
    r.insert({"id": [3]}, message="a third")
    r.upsert({"id": [3]}, message="again")
    r.delete("id = 1", message="drop one")
    v = ds.versions()
    assert v.column_names[-1] == "message"
    assert v.column("message").to_pylist() == ["drop one", "again", "a third", "two rows", None]


def test_delete_rows_and_remove_a_dataset(images):
    p = run("delete", images, "--where", "label = 'l0'", "-m", "no l0")
    assert p.stdout.startswith("deleted 32 rows from images on main")
    ds = Dataset.load(str(images))
    assert ds.num_rows() == 64 and ds.num_rows("v1") == 100  # older versions keep the rows
    assert "no rows match" in run("delete", images, "--where", "id = 12345").stdout
    bad = run("delete", images, "--where", "nosuchfield = 1", ok=False)
    assert bad.returncode == 2 and ds.num_rows() == 64

    refused = subprocess.run(cmd("rm", images), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert refused.returncode == 2 and "--yes" in refused.stderr and os.path.isdir(images)
    assert run("rm", images, "--yes").stdout.strip() == f"removed {images}"
    assert not os.path.exists(images) and not [n for n in os.listdir(images.parent) if n.startswith(".")]
    assert run("rm", images, "--yes", ok=False).returncode == 3


def test_json_listings(images):
    assert json.loads(run("ls", images.parent, "--json").stdout)[0]["name"] == "images"
    log = json.loads(run("log", images, "--json").stdout)
    assert [s["snapshot"] for s in log] == [3, 2, 1, 0] and log[0]["op"] == "delete"
    info = json.loads(run("info", images, "--json").stdout)
    assert info["primary_keys"] == ["id"] and info["stats"]["rows"] == 96
    assert json.loads(run("tag", images, "--json").stdout) == [{"name": "v1", "snapshot": 1, "rows": 100}]
    assert json.loads(run("branch", images, "--json").stdout) == [{"name": "main", "snapshot": 3, "rows": 96}]
    assert isinstance(json.loads(run("mounts", "--json").stdout), list)


def test_quiet_and_verbose(images):
    assert run("-q", "tag", images, "quiet-tag").stdout == ""
    assert Dataset.load(str(images)).storage.head().tags["quiet-tag"] == 3
    p = subprocess.run(cmd("--verbose", "tag", images, "v1"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" in p.stderr and p.stderr.rstrip().endswith("already exists")


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_a_closed_pipe_is_quiet(tmp_path, fmt):
    """`spacefs sql ... | head -1`: no error on stderr, exit 141 like any program killed by SIGPIPE."""
    make_images(str(tmp_path / "images"))
    query = "SELECT i, 'some text to fill the pipe' AS t FROM range(200000) r(i)"
    p = subprocess.Popen(cmd("sql", tmp_path / "images", query, "--format", fmt), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline()
    p.stdout.close()  # the reader goes away, as head does
    err = p.stderr.read()
    assert p.wait(timeout=60) == 141 and err == ""
