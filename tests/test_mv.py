"""Materialized views: create, load, and refresh incrementally in every case the
original failed (no change, a filter that emits nothing, other branches, tags, joins,
a refresh killed half-way)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import cloudpickle
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from spacefs import Dataset, DirCatalog, JobResult, MaterializedView, errors
from spacefs.cli import main as cli

from conftest import run_in_pty

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # UDFs travel with the MV

SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("blob", pa.binary())])
LABELS = pa.schema([("label", pa.string()), ("name", pa.string())])
SUCCEEDED, SKIPPED = JobResult.State.SUCCEEDED, JobResult.State.SKIPPED
CALLS: list[int] = []  # ids each UDF call saw (UDFs run in this process locally)


def rows(ids, tag=""):
    ids = list(ids)
    return {"id": ids, "label": [f"l{i % 3}" for i in ids], "blob": [f"b{i}{tag}".encode() for i in ids]}


def shout(batch):
    CALLS.extend(batch["id"])
    batch["blob"] = [b.upper() for b in batch["blob"]]
    return batch


def sort(t: pa.Table) -> pa.Table:
    return t.sort_by([(n, "ascending") for n in ("id", "label") if n in t.column_names])


def same(mv: MaterializedView, version=None) -> None:
    """The MV's stored rows are exactly the view's rows at ``version``."""
    got = sort(mv.local().read_all())
    want = sort(mv.view.local().read_all(version=version))
    assert got.to_pydict() == want.select(got.column_names).to_pydict()


@pytest.fixture
def cat(tmp_path):
    c = DirCatalog(str(tmp_path / "cat"))
    src = c.create_dataset("src", SCHEMA, ["id"], ["blob"])
    src.local().append(rows(range(100)))
    CALLS.clear()
    return c


def test_materialize_load_and_catalog(cat):
    src = cat.dataset("src")
    view = src.map_batches(shout, SCHEMA, output_record_fields=["blob"])
    mv = cat.materialize("mv", view)
    assert isinstance(mv, MaterializedView)
    assert os.path.isfile(os.path.join(mv.location, "metadata", "view.pkl"))
    assert mv.local().read_all().num_rows == 0  # empty until refreshed
    assert [d.name for d in cat.datasets()] == ["mv", "src"]
    loaded = cat.dataset("mv")
    assert isinstance(loaded, MaterializedView) and isinstance(Dataset.load(mv.location), MaterializedView)
    assert loaded.schema == SCHEMA and loaded.primary_keys == ["id"] and loaded.record_fields == ["blob"]
    assert type(loaded.dataset) is Dataset
    r = loaded.local().refresh()
    assert r.state == SUCCEEDED and r.storage_statistics_update["rows"] == 100
    same(loaded)
    assert loaded.view.local().read_all().num_rows == 100  # the view still computes on the fly
    with pytest.raises(errors.AlreadyExistsError):
        cat.materialize("mv", view)


def test_refresh_processes_only_the_change(cat):
    src = cat.dataset("src")
    mv = src.map_batches(shout, SCHEMA, output_record_fields=["blob"], batch_size=16).materialize(
        os.path.join(cat.location, "mv"))
    mv.local().refresh()
    assert sorted(CALLS) == list(range(100))
    CALLS.clear()
    src.local().upsert(rows([5, 6, 200], tag="u"))
    src.local().delete(pc.field("id").isin([7, 8]))
    src.local().append(rows([300, 301]))
    src.local().delete(pc.field("id") == 301)  # added and deleted within the range
    r = mv.local().refresh()
    assert r.state == SUCCEEDED
    assert sorted(CALLS) == [5, 6, 200, 300]  # the UDF saw the new rows only
    same(mv)
    assert mv.local().read_all(filter_="id = 5").column("blob")[0].as_py() == b"B5U"
    assert mv.reflects()[0]["snapshot"] == src.snapshot_id()


def test_refresh_when_nothing_changed_is_a_noop(cat):
    mv = cat.materialize("mv", cat.dataset("src").map_batches(shout, SCHEMA, output_record_fields=["blob"]))
    mv.local().refresh()
    seq = mv.storage.log.head_seq()
    CALLS.clear()
    for _ in range(2):
        r = mv.local().refresh()
        assert r.state == SKIPPED and r.snapshot_id is None
    assert mv.storage.log.head_seq() == seq and CALLS == []
    # an empty source, never refreshed: also a no-op
    empty = cat.create_dataset("empty", SCHEMA, ["id"], ["blob"])
    assert cat.materialize("mv2", empty.filter(lambda r: True)).local().refresh().state == SKIPPED


def test_a_layout_change_keeps_the_refresh_incremental(cat):
    mv = cat.materialize("mv", cat.dataset("src").map_batches(shout, SCHEMA, output_record_fields=["blob"]))
    assert mv.set_file_layout({"path": "{label}/{id}", "content": "blob"}).snapshot_id == 1  # before any refresh
    mv.local().refresh()
    assert mv.set_file_layout({"path": "{id}", "content": "blob"}).state == SUCCEEDED
    CALLS.clear()
    assert mv.local().refresh().state == SKIPPED  # the new snapshot reflects what its parent did
    cat.dataset("src").local().append(rows([500]))
    mv.local().refresh()
    assert CALLS == [500]
    same(mv)
    assert mv.file_layout == {"path": "{id}", "content": "blob"}


def test_filter_that_emits_nothing_then_deletes(cat):
    src = cat.dataset("src")
    mv = cat.materialize("small", src.filter(lambda r: r["id"] < 50, input_fields=["id"]))
    mv.local().refresh()
    head = mv.snapshot_id()
    src.local().append(rows(range(500, 520)))  # all filtered out
    r = mv.local().refresh()
    assert r.state == SKIPPED and mv.snapshot_id() == head
    assert mv.reflects()[0]["snapshot"] == src.snapshot_id()  # the marker moved anyway
    assert mv.local().refresh().state == SKIPPED
    src.local().delete(pc.field("id") < 10)
    r = mv.local().refresh()
    assert r.state == SUCCEEDED and r.storage_statistics_update["rows"] == -10
    same(mv)
    src.local().delete(pc.field("id") >= 510)  # deletes of rows the filter never kept
    assert mv.local().refresh().state == SKIPPED
    same(mv)


def test_commits_on_other_branches(cat):
    src = cat.dataset("src")
    mv = cat.materialize("mv", src.map_batches(shout, SCHEMA, output_record_fields=["blob"]))
    mv.local().refresh()
    src.add_branch("dev")
    dev = Dataset.load(src.location)
    dev.set_current_branch("dev")
    dev.local().upsert(rows([1, 2, 1000], tag="dev"))
    dev.local().delete(pc.field("id") == 3)
    assert mv.local().refresh().state == SKIPPED  # the MV follows main
    src.local().append(rows([2000]))
    assert mv.local().refresh().state == SUCCEEDED
    same(mv)
    assert mv.local().refresh("dev").state == SUCCEEDED  # switch to the dev branch...
    same(mv, "dev")
    assert 1000 in mv.local().read_all().column("id").to_pylist()
    CALLS.clear()
    assert mv.local().refresh().state == SUCCEEDED  # ...and back, via their common ancestor
    assert sorted(CALLS) == [1, 2, 3, 2000]  # only the keys either branch touched
    same(mv)


def test_refresh_to_a_tag_and_forward(cat):
    src = cat.dataset("src")
    src.add_tag("v1")
    src.local().delete(pc.field("id") < 50)
    src.add_tag("v2")
    src.local().append(rows(range(100, 110)))
    mv = cat.materialize("mv", src.map_batches(shout, SCHEMA, output_record_fields=["blob"]))
    assert mv.local().refresh("v1").state == SUCCEEDED
    same(mv, "v1")
    mv.local().refresh("v2")
    same(mv, "v2")
    assert mv.local().read_all().num_rows == 50
    mv.local().refresh(src.snapshot_id("v1"))  # back to an older snapshot id
    same(mv, "v1")
    mv.local().refresh()
    same(mv)
    with pytest.raises(errors.VersionNotFoundError, match="src"):
        mv.local().refresh("nope")


def test_mv_of_a_join_recomputes_only_changed_keys(cat):
    src = cat.dataset("src")
    labels = cat.create_dataset("labels", LABELS, ["label"])
    labels.local().append({"label": ["l0", "l1", "l2"], "name": ["zero", "one", "two"]})
    out = pa.schema([("label", pa.string()), ("id", pa.int64()), ("text", pa.string())])

    def describe(b):
        CALLS.extend(b["id"])
        return {"text": [f"{n}-{x.decode()}" for n, x in zip(b["name"], b["blob"], strict=True)]}

    view = src.join(labels, keys=["label"]).map_batches(describe, out, input_fields=["name", "blob"])
    mv = cat.materialize("joined", view)
    mv.local().refresh()
    assert mv.local().read_all().num_rows == 100
    CALLS.clear()
    labels.local().upsert({"label": ["l1"], "name": ["ONE"]})  # right side: every l1 row changes
    src.local().upsert(rows([3], tag="x"))  # left side: one row
    src.local().delete(pc.field("id") == 6)
    assert mv.local().refresh().state == SUCCEEDED
    assert sorted(CALLS) == sorted([i for i in range(100) if i % 3 == 1] + [3])
    same(mv)
    CALLS.clear()
    labels.local().delete(pc.field("label") == "l2")  # a right row goes: its joined rows go
    assert mv.local().refresh().state == SUCCEEDED
    assert CALLS == [] and mv.local().read_all(filter_="label = 'l2'").num_rows == 0
    same(mv)
    labels.local().append({"label": ["l2"], "name": ["deux"]})  # and come back
    mv.local().refresh()
    same(mv)
    assert set(mv.local().read_all(filter_="label = 'l2'").column("text").to_pylist()) == {
        f"deux-b{i}" for i in range(100) if i % 3 == 2}


KILL_SCRIPT = """
import sys
from spacefs import MaterializedView
MaterializedView.load(sys.argv[1]).local().refresh()
print("refresh returned")
"""


@pytest.mark.parametrize("point", ["write:after_data", "commit:before_publish", "commit:after_publish"])
def test_killed_refresh_leaves_last_state_and_next_refresh_completes(cat, point):
    src = cat.dataset("src")
    mv = cat.materialize("mv", src.map_batches(shout, SCHEMA, output_record_fields=["blob"]))
    mv.local().refresh()
    before = sort(mv.local().read_all())
    head, marks = mv.snapshot_id(), mv.reflects()
    src.local().upsert(rows(range(90, 110), tag="new"))
    src.local().delete(pc.field("id") < 5)
    env = {**os.environ, "SPACEFS_FAILPOINT": point}
    p = subprocess.run([sys.executable, "-c", KILL_SCRIPT, mv.location], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == -9, p.stderr
    mv = MaterializedView.load(mv.location)
    if point == "commit:after_publish":  # landed: complete, and nothing left to do
        assert mv.snapshot_id() == head + 1
        same(mv)
        assert mv.local().refresh().state == SKIPPED
        return
    assert mv.snapshot_id() == head and mv.reflects() == marks
    assert sort(mv.local().read_all()).equals(before)
    assert mv.local().refresh().state == SUCCEEDED
    same(mv)


def test_concurrent_refreshes_apply_the_change_once(cat):
    src = cat.dataset("src")
    mv = cat.materialize("mv", src.map_batches(shout, SCHEMA, output_record_fields=["blob"]))
    mv.local().refresh()
    src.local().upsert(rows(range(50, 150), tag="c"))
    results, failures = [], []

    def go():
        try:
            results.append(MaterializedView.load(mv.location).local().refresh())
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert [r.state for r in results].count(SUCCEEDED) == 1
    same(mv)
    assert mv.local().read_all().num_rows == 150


def test_branch_of_unknown_provenance_is_rebuilt(cat):
    src = cat.dataset("src")
    mv = cat.materialize("mv", src.map_batches(shout, SCHEMA, output_record_fields=["blob"]))
    mv.local().refresh()
    src.local().append(rows([100]))
    mv.local().refresh()
    src.local().append(rows([101]))
    mv.local().refresh()
    mv.add_branch("old", 1)  # snapshot 1's marker is gone: it is neither a head nor tagged
    mv.set_current_branch("old")
    assert mv.reflects()[0]["snapshot"] is None
    assert mv.local().refresh().state == SUCCEEDED
    same(mv)
    mv.set_current_branch("main")
    same(mv)


def test_mv_writes_refused_and_moved_catalog_works(cat, tmp_path):
    src = cat.dataset("src")
    mv = cat.materialize("mv", src.map_batches(shout, SCHEMA, output_record_fields=["blob"]))
    mv.local().refresh()
    with pytest.raises(errors.UserInputError, match="refresh"):
        mv.local().append(rows([1]))
    moved = shutil.copytree(cat.location, str(tmp_path / "elsewhere"))
    copy = DirCatalog(moved)
    copy.dataset("src").local().append(rows([777]))
    mvc = copy.dataset("mv")
    assert mvc.view.sources()[0].location == os.path.join(moved, "src")
    assert mvc.local().refresh().state == SUCCEEDED
    assert 777 in mvc.local().read_all().column("id").to_pylist()
    assert 777 not in mv.local().read_all().column("id").to_pylist()
    shutil.rmtree(os.path.join(moved, "src"))
    with pytest.raises(errors.NotFoundError, match="source dataset"):
        MaterializedView.load(os.path.join(moved, "mv")).view.sources()


def test_cli_refresh(cat):
    src = cat.dataset("src")
    mv = cat.materialize("mv", src.filter(lambda r: r["id"] % 2 == 0, input_fields=["id"]))
    runner = CliRunner()
    res = runner.invoke(cli, ["refresh", mv.location])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("mv: snapshot 1 (+50 rows), reflects ../src@1")
    src.add_tag("t")
    src.local().append(rows([1000]))
    res = runner.invoke(cli, ["refresh", mv.location, "--version", "t"])
    assert res.exit_code == 0 and "no change" in res.output
    res = runner.invoke(cli, ["refresh", mv.location, "--batch-size", "7"])
    assert res.exit_code == 0 and "snapshot 2 (+1 rows)" in res.output
    res = runner.invoke(cli, ["refresh", src.location])
    assert res.exit_code == 2 and "is a dataset, not a materialized view" in res.output
    res = runner.invoke(cli, ["refresh", mv.location, "--version", "nope"])
    assert res.exit_code == 3 and "nope" in res.output and "Traceback" not in res.output


def test_cli_refresh_shows_progress_on_a_terminal(cat):
    src = cat.dataset("src")
    mv = cat.materialize("mv", src.map_batches(shout, SCHEMA, output_record_fields=["blob"]))
    code, text = run_in_pty([sys.executable, "-m", "spacefs.cli", "refresh", mv.location])
    assert code == 0, text
    assert "refresh mv" in text and "rows/s" in text  # the progress bar, drawn on the terminal
    assert "mv: snapshot 1 (+100 rows)" in text


def test_mv_of_an_mv(cat):
    src = cat.dataset("src")
    first = cat.materialize("first", src.map_batches(shout, SCHEMA, output_record_fields=["blob"]))
    second = cat.materialize("second", first.filter(lambda r: r["blob"].endswith(b"7"), input_fields=["blob"]))
    first.local().refresh()
    second.local().refresh()
    assert sorted(second.local().read_all().column("id").to_pylist()) == [i for i in range(100) if i % 10 == 7]
    src.local().upsert(rows([17, 18], tag="7"))  # 17 stays, 18 now ends in 7
    assert second.local().refresh().state == SKIPPED  # its source (the first MV) did not move yet
    first.local().refresh()
    assert second.local().refresh().state == SUCCEEDED
    same(second)
    assert 18 in second.local().read_all().column("id").to_pylist()
