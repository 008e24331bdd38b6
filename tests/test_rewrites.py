"""Index file rewrites of upserts, relabels and deletes: kept dictionary columns, small
survivors merged into one file, bounds that stay true; checked against a plain
recomputation of the rows after every change."""

from __future__ import annotations

import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from spacefs import Dataset
from spacefs.engine.options import FileOptions
from spacefs.engine.writes import FileWriter

from conftest import SCHEMA, rows

writes_write_index = FileWriter.write_index


def _check(ds: Dataset, model: dict[int, tuple[str, bytes]]) -> None:
    """The dataset holds exactly ``model``; every live index file reads back with the
    index schema (no dictionary types leak), by pyarrow and by DuckDB alike, and its
    manifest bounds hold its rows."""
    got = ds.local().read_all().sort_by("id").to_pydict()
    want = sorted(model)
    assert got["id"] == want
    assert got["image_name"] == [model[i][0] for i in want]
    assert got["feature"] == [model[i][1] for i in want]
    st = ds.storage
    for entry in st.index_entries(st.resolve(None)):
        path = st.full_path(entry["path"])
        t = pq.read_table(path)
        assert t.schema.equals(st.index_schema), t.schema
        assert entry["rows"] == t.num_rows
        if t.num_rows:
            for name in ("id", "image_name"):
                mm = pc.min_max(t.column(name))
                assert entry["min"][name] is None or entry["min"][name] <= mm["min"].as_py()
                assert entry["max"][name] is None or entry["max"][name] >= mm["max"].as_py()
        files = set(pc.unique(t.column("feature").combine_chunks().field("file")).to_pylist())
        assert files <= set(entry["record_files"])
        con = duckdb.connect()
        try:
            n, names = con.execute(f"SELECT count(*), count(DISTINCT image_name) FROM read_parquet('{path}')").fetchone()
        finally:
            con.close()
        assert (n, names) == (t.num_rows, len(set(t.column("image_name").to_pylist())))


def test_random_rewrites_match_a_recomputation(tmp_path):
    rng = np.random.default_rng(3)
    ds = Dataset.create(str(tmp_path / "ds"), SCHEMA, ["id"], ["feature"])
    r = ds.local()
    model: dict[int, tuple[str, bytes]] = {}
    ids = np.arange(3000)
    r.append({"id": ids.tolist(), "image_name": [f"n{i % 17}" for i in ids], "feature": [b"f%d" % i for i in ids]})
    model.update({int(i): (f"n{i % 17}", b"f%d" % i) for i in ids})
    next_id = 3000
    for step in range(24):
        op = step % 3
        live = np.array(sorted(model))
        if op == 0:  # upsert: updates and inserts, records resent
            upd = rng.choice(live, 40, replace=False)
            new = np.arange(next_id, next_id + 20)
            next_id += 20
            keys = np.concatenate([upd, new])
            r.upsert({"id": keys.tolist(), "image_name": [f"u{step}"] * len(keys),
                      "feature": [b"u%d-%d" % (step, k) for k in keys]})
            model.update({int(k): (f"u{step}", b"u%d-%d" % (step, k)) for k in keys})
        elif op == 1:  # relabel: index fields only, records kept by reference
            keys = rng.choice(live, 60, replace=False)
            r.upsert({"id": keys.tolist(), "image_name": [f"r{step}"] * len(keys)})
            model.update({int(k): (f"r{step}", model[int(k)][1]) for k in keys})
        else:  # delete scattered keys
            keys = rng.choice(live, 50, replace=False)
            r.delete(pc.field("id").isin(pa.array(keys)))
            for k in keys:
                del model[int(k)]
        _check(ds, model)
    # Every change touched the small files of the earlier ones: their survivors were
    # merged, so the file count stays far below one file per change.
    assert len(ds.index_files()) <= 6, len(ds.index_files())


def test_delete_by_a_string_field_and_small_files(tmp_path):
    """A delete whose filter reads a dictionary-stored column, on files smaller than
    one row group bound (``max_index_rows``): merged files still respect it."""
    ds = Dataset.create(str(tmp_path / "ds"), SCHEMA, ["id"], ["feature"])
    r = ds.local(file_options=FileOptions(max_index_rows=50))
    model = {}
    for b in range(6):
        ids = list(range(b * 40, b * 40 + 40))
        r.append({"id": ids, "image_name": [f"n{i % 5}" for i in ids], "feature": [b"f%d" % i for i in ids]})
        model.update({i: (f"n{i % 5}", b"f%d" % i) for i in ids})
    r.delete("image_name = 'n3'")
    model = {k: v for k, v in model.items() if v[0] != "n3"}
    _check(ds, model)
    r.delete(pc.field("id").isin(pa.array([1, 41, 81, 121, 161, 201])))
    for k in (1, 41, 81, 121, 161, 201):
        model.pop(k, None)
    _check(ds, model)
    assert all(e["rows"] <= 50 for e in ds.storage.index_entries(ds.storage.resolve(None)))


def _data_files(ds: Dataset) -> set[str]:
    root = ds.location
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(os.path.join(root, "data")) for f in fs}


@pytest.mark.parametrize("failing", ["rewrite", "new rows"])
def test_failed_upsert_leaves_no_file(tmp_path, monkeypatch, failing):
    """The new rows' files are written while the touched files are rewritten: when
    either side fails, neither side's files stay behind, and nothing is committed."""
    from spacefs.engine import writes

    ds = Dataset.create(str(tmp_path / "ds"), SCHEMA, ["id"], ["feature"])
    ds.local().append(rows(range(100)))
    before, snap = _data_files(ds), ds.snapshot_id()

    def boom(*args, **kwargs):
        raise RuntimeError(f"{failing} failed")

    if failing == "rewrite":
        monkeypatch.setattr(writes, "_merged_entry", boom)  # after the probes, with the data write under way
        ds.local().append(rows(range(200, 210)))  # a second small file: the survivors get merged
        before, snap = _data_files(ds), ds.snapshot_id()
    else:
        monkeypatch.setattr(writes.FileWriter, "write_index", lambda self, index, rewrite_of=None: (
            boom() if rewrite_of is None else writes_write_index(self, index, rewrite_of)))
    with pytest.raises(RuntimeError, match="failed"):
        ds.local().upsert(rows([5, 205, 1000], tag="x"))
    assert _data_files(ds) == before
    assert Dataset.load(ds.location).snapshot_id() == snap
