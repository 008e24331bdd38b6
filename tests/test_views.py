"""Views: map, filter and join, composed and read locally (read, read_all, diff)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spacefs import ChangeType, Dataset, errors
from spacefs.engine.views import FilterView, JoinView, MapView

SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("blob", pa.binary())])
LABELS = pa.schema([("label", pa.string()), ("name", pa.string()), ("icon", pa.binary())])


def rows(ids, tag=""):
    ids = list(ids)
    return {"id": ids, "label": [f"l{i % 3}" for i in ids], "blob": [f"b{i}{tag}".encode() for i in ids]}


@pytest.fixture
def src(tmp_path):
    ds = Dataset.create(str(tmp_path / "src"), SCHEMA, ["id"], ["blob"])
    ds.local().append(rows(range(20)))
    return ds


@pytest.fixture
def labels(tmp_path):
    ds = Dataset.create(str(tmp_path / "labels"), LABELS, ["label"], ["icon"])
    ds.local().append({"label": ["l0", "l1", "l9"], "name": ["zero", "one", "nine"], "icon": [b"i0", b"i1", b"i9"]})
    return ds


def shout(batch):
    batch["blob"] = [b.upper() + b"!" for b in batch["blob"]]
    return batch


def sort(t: pa.Table) -> pa.Table:
    return t.sort_by([(n, "ascending") for n in ("id", "label") if n in t.column_names])


def test_map_batches_reads_transformed_rows(src):
    view = src.map_batches(shout, SCHEMA, output_record_fields=["blob"])
    assert isinstance(view, MapView)
    t = sort(view.local().read_all())
    assert t.column("id").to_pylist() == list(range(20))
    assert t.column("blob").to_pylist() == [f"B{i}!".encode() for i in range(20)]
    # the source is untouched and the view follows the source's versions
    assert src.local().read_all(fields=["blob"]).column("blob")[0].as_py() == b"b0"
    assert view.local().read_all(version=0).num_rows == 0


def test_map_output_may_add_fields_and_omit_passthrough(src):
    out = pa.schema([("id", pa.int64()), ("label", pa.string()), ("size", pa.int64())])
    view = src.map_batches(lambda b: {"size": [len(x) for x in b["blob"]]}, out, input_fields=["blob"])
    t = sort(view.local().read_all())
    assert t.schema == out
    assert t.column("size").to_pylist() == [len(f"b{i}") for i in range(20)]
    assert t.column("label").to_pylist() == [f"l{i % 3}" for i in range(20)]


def test_map_batch_size_bounds_udf_calls(src):
    sizes = []

    def fn(b):
        sizes.append(len(b["id"]))
        return b

    src.map_batches(fn, SCHEMA, output_record_fields=["blob"], batch_size=6).local().read_all()
    assert sizes == [6, 6, 6, 2]


def test_filter_row_and_batch(src):
    even = src.filter(lambda r: r["id"] % 2 == 0, input_fields=["id"])
    assert isinstance(even, FilterView)
    t = sort(even.local().read_all())
    assert t.column("id").to_pylist() == list(range(0, 20, 2))
    assert t.column("blob").to_pylist() == [f"b{i}".encode() for i in range(0, 20, 2)]
    big = src.filter_batches(lambda b: [len(x) > 2 for x in b["blob"]], input_fields=["blob"])
    assert sort(big.local().read_all()).column("id").to_pylist() == list(range(10, 20))


def test_filter_reads_records_only_for_kept_rows(src):
    # The filter sees only "id": blob bytes are never handed to it, and stay lazy.
    seen = []

    def keep(r):
        seen.append(set(r))
        return r["id"] < 3

    t = src.filter(keep, input_fields=["id"]).local().read_all(reference_read=True)
    assert all(s == {"id"} for s in seen)
    assert t.schema.field("blob").type == pa.struct([("file", pa.string()), ("pos", pa.int64()),
                                                      ("size", pa.int64()), ("offset", pa.int64())])
    assert t.num_rows == 3


def test_views_compose_filter_of_map_of_join(src, labels):
    joined = src.join(labels, keys=["label"], right_fields=["name", "icon"])
    assert isinstance(joined, JoinView)
    assert joined.schema.names == ["label", "id", "blob", "name", "icon"]
    assert joined.primary_keys == ["id", "label"]
    out = pa.schema([("label", pa.string()), ("id", pa.int64()), ("text", pa.string())])

    def describe(b):
        return {"text": [f"{n}:{x.decode()}:{i.decode()}" for n, x, i in zip(b["name"], b["blob"], b["icon"], strict=True)]}

    view = joined.map_batches(describe, out, input_fields=["name", "blob", "icon"]).filter(
        lambda r: r["id"] > 4, input_fields=["id"])
    t = sort(view.local().read_all())
    expect = [i for i in range(5, 20) if i % 3 in (0, 1)]
    assert t.column("id").to_pylist() == expect
    assert t.column("text").to_pylist() == [f"{'zero' if i % 3 == 0 else 'one'}:b{i}:i{i % 3}" for i in expect]


def test_join_carries_records_as_references_until_read(src, labels):
    joined = src.join(labels, keys=["label"])
    refs = joined.local().read_all(reference_read=True)
    assert refs.schema.field("blob").type == refs.schema.field("icon").type
    assert pa.types.is_struct(refs.schema.field("icon").type)
    t = sort(joined.local().read_all(fields=["id", "icon"]))
    assert t.column_names == ["id", "icon"]
    assert t.column("icon").to_pylist()[:3] == [b"i0", b"i1", b"i0"]


def test_join_on_any_shared_key_and_with_itself(tmp_path, src):
    other = Dataset.create(str(tmp_path / "other"), pa.schema([("oid", pa.int64()), ("label", pa.string())]), ["oid"])
    other.local().append({"oid": [100, 101, 102], "label": ["l1", "l1", "l2"]})
    j = src.join(other, keys=["label"])
    assert j.primary_keys == ["id", "oid"]
    t = j.local().read_all()
    # many to many: every l1 and l2 row of src pairs with each matching row of other
    assert t.num_rows == 2 * len([i for i in range(20) if i % 3 == 1]) + len([i for i in range(20) if i % 3 == 2])
    relabel = pa.schema([("id", pa.int64()), ("label2", pa.string())])
    mirror = src.map_batches(lambda b: {"label2": [s.upper() for s in b["label"]]}, relabel, input_fields=["label"])
    self_join = src.join(mirror, keys=["id"], left_fields=["label"])
    t = sort(self_join.local().read_all())
    assert t.column("label2").to_pylist() == [f"L{i % 3}" for i in range(20)]


def test_view_read_options(src):
    view = src.map_batches(shout, SCHEMA, output_record_fields=["blob"])
    batches = list(view.local().read(batch_size=7))
    assert [b.num_rows for b in batches] == [7, 7, 6]
    t = view.local().read_all(filter_=pc.field("label") == "l1", fields=["id"])
    assert sorted(t.column("id").to_pylist()) == [i for i in range(20) if i % 3 == 1]
    assert view.local().read_all(filter_="id >= 18").num_rows == 2
    empty = view.local().read_all(filter_="id > 100")
    assert empty.num_rows == 0 and empty.schema == SCHEMA


def test_view_versions_per_source(src, labels):
    src.add_tag("v1")
    src.local().append(rows(range(20, 23)))
    view = src.join(labels, keys=["label"])
    assert view.local().read_all(version={"src": "v1"}).num_rows == len([i for i in range(20) if i % 3 < 2])
    assert view.local().read_all().num_rows == len([i for i in range(23) if i % 3 < 2])
    with pytest.raises(errors.VersionNotFoundError, match="labels"):
        view.local().read_all(version="v1")  # labels has no tag v1
    with pytest.raises(errors.UserInputError, match="unknown sources"):
        view.local().read_all(version={"nope": 1})


def test_view_diff_is_net_change(src):
    view = src.map_batches(shout, SCHEMA, output_record_fields=["blob"])
    start = src.snapshot_id()
    src.local().upsert(rows([3, 30], tag="x"))
    src.local().delete(pc.field("id") == 5)
    src.local().append(rows([31]))
    src.local().delete(pc.field("id") == 31)  # added then deleted: not in the net change
    changes = list(view.local().diff(start, None))
    assert [c.change_type for c in changes] == [ChangeType.DELETE, ChangeType.ADD]
    assert sorted(changes[0].data.column("id").to_pylist()) == [3, 5, 31]
    added = sort(changes[1].data)
    assert added.column("id").to_pylist() == [3, 30]
    assert added.column("blob").to_pylist() == [b"B3X!", b"B30X!"]
    assert list(view.local().diff(src.snapshot_id(), None)) == []


def test_bad_view_definitions_name_the_problem(src, labels):
    with pytest.raises(errors.SchemaError, match="primary key 'id'"):
        src.map_batches(shout, pa.schema([("label", pa.string())]))
    with pytest.raises(errors.SchemaError, match="type"):
        src.map_batches(shout, pa.schema([("id", pa.int32()), ("label", pa.string())]))
    with pytest.raises(errors.SchemaError, match="unknown field"):
        src.filter(lambda r: True, input_fields=["nope"])
    with pytest.raises(errors.UserInputError, match="callable"):
        src.map_batches(None, SCHEMA)
    with pytest.raises(errors.UserInputError, match="batch_size"):
        src.map_batches(shout, SCHEMA, batch_size=0)
    with pytest.raises(errors.SchemaError, match="not a field of the right"):
        src.join(labels, keys=["id"])
    with pytest.raises(errors.SchemaError, match="record field"):
        src.join(src, keys=["blob"])
    with pytest.raises(errors.SchemaError, match="both sides"):
        src.join(src.filter(lambda r: True), keys=["label"])
    with pytest.raises(errors.SchemaError, match="returned int"):
        src.map_batches(lambda b: 3, SCHEMA, output_record_fields=["blob"]).local().read_all()
    with pytest.raises(errors.SchemaError, match="missing fields"):
        src.map_batches(lambda b: {"id": b["id"][:1]}, SCHEMA, output_record_fields=["blob"]).local().read_all()
    with pytest.raises(errors.UserInputError, match="mask"):
        src.filter_batches(lambda b: [True]).local().read_all()
    assert os.path.isdir(src.location)


def test_records_are_resolved_in_bounded_slices(src):
    from spacefs.engine.view_parts import bounded

    refs = src.local().read_all(reference_read=True)
    roots = {"blob": src.location}
    pieces = list(bounded(refs, roots, limit=10))  # records of 2-3 bytes: a few rows per slice
    assert len(pieces) >= 4 and max(p.num_rows for p in pieces) <= 5  # 50 bytes in all
    assert pa.concat_tables(pieces).equals(refs)
    assert list(bounded(refs, {}, limit=10)) == [refs]  # nothing to resolve: one piece
