"""Importers and exporters for Parquet, ImageFolder trees and HuggingFace: round trips,
one snapshot per import, and bad input that changes nothing."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spacefs import Dataset
from spacefs.engine.errors import (
    AlreadyExistsError,
    NotFoundError,
    PrimaryKeyExistsError,
    SchemaError,
    UserInputError,
)
from spacefs.io import export_folder, export_parquet, import_folder, import_parquet


def table(ids, tag=""):
    ids = list(ids)
    return pa.table({"id": pa.array(ids, pa.int64()), "label": [f"l{i % 3}{tag}" for i in ids],
                     "image": [os.urandom(16) + f"{i}{tag}".encode() for i in ids]})


def files_of(ds_path: str) -> set[str]:
    out = set()
    for d, _, fs in os.walk(os.path.join(ds_path, "data")):
        out |= {os.path.join(d, f) for f in fs}
    return out


def last_snapshot(path: str) -> int:
    return Dataset.load(path).storage.head().last_snapshot_id


# -- Parquet -------------------------------------------------------------------
def test_parquet_round_trip_in_one_snapshot(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    parts = [table(range(0, 50)), table(range(50, 120))]
    for i, t in enumerate(parts):
        pq.write_table(t, src / f"p{i}.parquet")
    r = import_parquet(str(src), str(tmp_path / "ds"), primary_keys=["id"], record_fields=["image"])
    assert (r.snapshot_id, r.rows, r.created) == (1, 120, True)
    ds = Dataset.load(str(tmp_path / "ds"))
    assert ds.record_fields == ["image"] and ds.primary_keys == ["id"]
    assert ds.local().read_all().sort_by("id").equals(pa.concat_tables(parts))

    files = export_parquet(str(tmp_path / "ds"), str(tmp_path / "out"))
    assert all(os.path.exists(f) for f in files)
    assert pq.read_table(str(tmp_path / "out")).sort_by("id").equals(pa.concat_tables(parts))


def test_parquet_append_upsert_insert_and_time_travel_export(tmp_path):
    pq.write_table(table(range(10)), tmp_path / "a.parquet")
    pq.write_table(table(range(5, 15), "x"), tmp_path / "b.parquet")
    loc = str(tmp_path / "ds")
    import_parquet(str(tmp_path / "a.parquet"), loc, ["id"], ["image"])
    with pytest.raises(PrimaryKeyExistsError):
        import_parquet(str(tmp_path / "b.parquet"), loc, mode="insert")
    assert last_snapshot(loc) == 1
    r = import_parquet(str(tmp_path / "b.parquet"), loc, mode="upsert")
    assert r.snapshot_id == 2 and not r.created
    t = Dataset.load(loc).local().read_all().sort_by("id")
    assert t.column("id").to_pylist() == list(range(15))
    assert t.column("label").to_pylist()[5:] == [f"l{i % 3}x" for i in range(5, 15)]

    export_parquet(loc, str(tmp_path / "v1"), version=1, fields=["id", "label"])
    old = pq.read_table(str(tmp_path / "v1"))
    assert old.column_names == ["id", "label"] and old.num_rows == 10
    export_parquet(loc, str(tmp_path / "v0"), version=0)
    assert pq.read_table(str(tmp_path / "v0")).num_rows == 0


def test_parquet_glob_and_rows_per_file(tmp_path):
    for i in range(3):
        pq.write_table(table(range(i * 10, i * 10 + 10)), tmp_path / f"s{i}.parquet")
    loc = str(tmp_path / "ds")
    import_parquet(str(tmp_path / "s*.parquet"), loc, ["id"], ["image"])
    files = export_parquet(loc, str(tmp_path / "out"), rows_per_file=7)
    assert len(files) >= 4 and sum(pq.read_metadata(f).num_rows for f in files) == 30


def test_parquet_schema_clash_changes_nothing(tmp_path):
    pq.write_table(table(range(5)), tmp_path / "a.parquet")
    loc = str(tmp_path / "ds")
    import_parquet(str(tmp_path / "a.parquet"), loc, ["id"], ["image"])
    before = files_of(loc)
    pq.write_table(table(range(5, 8)).append_column("extra", pa.array([1, 2, 3])), tmp_path / "b.parquet")
    with pytest.raises(SchemaError, match="schema clash.*unknown \\['extra'\\]"):
        import_parquet(str(tmp_path / "b.parquet"), loc)
    bad = pa.table({"id": ["x", "y"], "label": ["a", "b"], "image": [b"1", b"2"]})
    pq.write_table(bad, tmp_path / "c.parquet")
    with pytest.raises(SchemaError, match="'id'"):
        import_parquet(str(tmp_path / "c.parquet"), loc)
    with pytest.raises(SchemaError, match="primary key \\['id'\\], not \\['label'\\]"):
        import_parquet(str(tmp_path / "a.parquet"), loc, primary_keys=["label"])
    assert last_snapshot(loc) == 1 and files_of(loc) == before


def test_parquet_failure_mid_import_leaves_no_snapshot(tmp_path):
    pq.write_table(table(range(100)), tmp_path / "a.parquet")
    # Same schema as a.parquet, but a type that does not cast: found only while reading.
    pq.write_table(pa.table({"id": pa.array([1.5], pa.float64()), "label": ["x"], "image": [b"z"]}), tmp_path / "b.parquet")
    loc = str(tmp_path / "ds")
    import_parquet(str(tmp_path / "a.parquet"), loc, ["id"], ["image"])
    before = files_of(loc)
    with pytest.raises(SchemaError):
        import_parquet([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")], loc)
    assert last_snapshot(loc) == 1 and files_of(loc) == before

    new = str(tmp_path / "new")
    (tmp_path / "trunc.parquet").write_bytes((tmp_path / "a.parquet").read_bytes()[:-100])
    with pytest.raises(UserInputError, match="trunc.parquet"):
        import_parquet([str(tmp_path / "a.parquet"), str(tmp_path / "trunc.parquet")], new, ["id"], ["image"])
    assert not os.path.exists(new)


def test_parquet_bad_arguments(tmp_path):
    pq.write_table(table(range(3)), tmp_path / "a.parquet")
    with pytest.raises(UserInputError, match="primary key"):
        import_parquet(str(tmp_path / "a.parquet"), str(tmp_path / "ds"))
    assert not os.path.exists(tmp_path / "ds")
    with pytest.raises(NotFoundError, match="nope"):
        import_parquet(str(tmp_path / "nope.parquet"), str(tmp_path / "ds"), ["id"])
    with pytest.raises(SchemaError, match="record field"):
        import_parquet(str(tmp_path / "a.parquet"), str(tmp_path / "ds"), ["id"], ["label"])
    assert not os.path.exists(tmp_path / "ds")
    import_parquet(str(tmp_path / "a.parquet"), str(tmp_path / "ds"), ["id"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(AlreadyExistsError):
        export_parquet(str(tmp_path / "ds"), str(tmp_path / "full"))
    with pytest.raises(NotFoundError):
        export_parquet(str(tmp_path / "nods"), str(tmp_path / "o"))


# -- folders -------------------------------------------------------------------
def make_tree(root, classes=("cat", "dog"), per_class=4) -> dict[str, bytes]:
    tree = {}
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(per_class):
            data = os.urandom(100 + i)
            (root / c / f"{c}{i}.jpg").write_bytes(data)
            tree[f"{c}/{c}{i}.jpg"] = data
    return tree


def read_tree(root) -> dict[str, bytes]:
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def test_folder_round_trip_and_layout(tmp_path):
    src = tmp_path / "imgs"
    tree = make_tree(src)
    (src / "README.txt").write_text("not in a class folder")
    (src / "cat" / ".hidden").write_bytes(b"skip me")
    loc = str(tmp_path / "ds")
    r = import_folder(str(src), loc)
    assert (r.rows, r.snapshot_id) == (len(tree), 1)
    ds = Dataset.load(loc)
    assert ds.file_layout == {"path": "{label}/{name}", "content": "content"}
    assert ds.record_fields == ["content"] and ds.primary_keys == ["label", "name"]
    assert sorted(ds.local().read_all(fields=["label"]).column("label").unique().to_pylist()) == ["cat", "dog"]

    assert export_folder(loc, str(tmp_path / "out")) == len(tree)
    assert read_tree(tmp_path / "out") == tree


def test_folder_reimport_insert_refuses_upsert_replaces(tmp_path):
    src = tmp_path / "imgs"
    make_tree(src, per_class=2)
    loc = str(tmp_path / "ds")
    import_folder(str(src), loc)
    with pytest.raises(PrimaryKeyExistsError):
        import_folder(str(src), loc)
    (src / "cat" / "cat0.jpg").write_bytes(b"new bytes")
    os.makedirs(src / "bird")
    (src / "bird" / "b.jpg").write_bytes(b"tweet")
    r = import_folder(str(src), loc, mode="upsert")
    assert r.snapshot_id == 2
    export_folder(loc, str(tmp_path / "out"))
    got = read_tree(tmp_path / "out")
    assert got["cat/cat0.jpg"] == b"new bytes" and got["bird/b.jpg"] == b"tweet" and len(got) == 5
    export_folder(loc, str(tmp_path / "v1"), version=1)
    assert "bird/b.jpg" not in read_tree(tmp_path / "v1")


def test_folder_bad_input(tmp_path):
    with pytest.raises(NotFoundError, match="no such folder"):
        import_folder(str(tmp_path / "missing"), str(tmp_path / "ds"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no files in class folders"):
        import_folder(str(tmp_path / "empty"), str(tmp_path / "ds"))
    assert not os.path.exists(tmp_path / "ds")


def test_export_folder_with_a_path_template(tmp_path):
    pq.write_table(table(range(6)), tmp_path / "a.parquet")
    loc = str(tmp_path / "ds")
    import_parquet(str(tmp_path / "a.parquet"), loc, ["id"], ["image"])
    with pytest.raises(UserInputError, match="no file layout"):
        export_folder(loc, str(tmp_path / "o"))
    n = export_folder(loc, str(tmp_path / "o"), path="{label}/{id}.bin", content="image")
    assert n == 6
    got = read_tree(tmp_path / "o")
    assert got["l0/3.bin"].endswith(b"3")
    # rows sharing a path: as in the mount, the row written last wins
    assert export_folder(loc, str(tmp_path / "o2"), path="{label}", content="image") == 3
    got = read_tree(tmp_path / "o2")
    assert sorted(got) == ["l0", "l1", "l2"] and got["l0"].endswith(b"3") and got["l2"].endswith(b"5")


# -- HuggingFace ---------------------------------------------------------------
def test_hf_import_with_image_column_and_splits(tmp_path):
    import io

    import datasets
    from PIL import Image

    imgs = []
    for i in range(4):
        buf = io.BytesIO()
        Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(buf, format="PNG")
        imgs.append(buf.getvalue())
    feats = datasets.Features({"id": datasets.Value("int64"), "text": datasets.Value("string"),
                               "image": datasets.Image()})
    train = datasets.Dataset.from_dict({"id": [0, 1, 2, 3], "text": list("abcd"),
                                        "image": [{"bytes": b, "path": None} for b in imgs]}, features=feats)
    dd = datasets.DatasetDict({"train": train, "test": train.select([0, 1])})
    dd.save_to_disk(str(tmp_path / "hf"))

    from spacefs.io.huggingface import import_hf

    with pytest.raises(UserInputError, match="--split"):
        import_hf(str(tmp_path / "hf"), str(tmp_path / "ds"), ["id"], ["image"])
    r = import_hf(str(tmp_path / "hf"), str(tmp_path / "ds"), ["id"], ["image"], split="train")
    assert (r.rows, r.snapshot_id) == (4, 1)
    t = Dataset.load(str(tmp_path / "ds")).local().read_all().sort_by("id")
    assert t.column("image").to_pylist() == imgs and t.column("text").to_pylist() == list("abcd")
    with pytest.raises(NotFoundError, match="no split"):
        import_hf(str(tmp_path / "hf"), str(tmp_path / "ds"), split="valid")
    with pytest.raises(UserInputError, match="save_to_disk"):
        import_hf(str(tmp_path), str(tmp_path / "ds2"), ["id"])


def test_hf_round_trip_keeps_images_and_appends(tmp_path):
    import datasets

    from spacefs.io.huggingface import export_hf, import_hf

    feats = datasets.Features({"id": datasets.Value("int64"), "text": datasets.Value("string"),
                               "image": datasets.Image()})
    png = _png()
    src = datasets.Dataset.from_dict({"id": [1, 2], "text": ["a", "b"], "image": [{"bytes": png, "path": None}] * 2},
                                     features=feats)
    src.save_to_disk(str(tmp_path / "hf"))
    loc = str(tmp_path / "ds")
    import_hf(str(tmp_path / "hf"), loc, ["id"])  # Image columns become record fields by default
    assert Dataset.load(loc).record_fields == ["image"]
    more = datasets.Dataset.from_dict({"id": [3], "text": ["c"], "image": [{"bytes": png, "path": None}]}, features=feats)
    more.save_to_disk(str(tmp_path / "hf2"))
    r = import_hf(str(tmp_path / "hf2"), loc, mode="insert")
    assert (r.snapshot_id, r.created) == (2, False)

    assert export_hf(loc, str(tmp_path / "out"), version=1) == 2
    back = datasets.load_from_disk(str(tmp_path / "out"))
    assert isinstance(back.features["image"], datasets.Image)
    assert sorted(back["id"]) == [1, 2] and back[0]["image"].size == (4, 4)
    assert export_hf(loc, str(tmp_path / "all"), fields=["id", "text"]) == 3
    assert datasets.load_from_disk(str(tmp_path / "all")).column_names == ["id", "text"]

    clash = datasets.Dataset.from_dict({"id": [9], "caption": ["x"], "image": [png]})
    clash.save_to_disk(str(tmp_path / "hf3"))
    with pytest.raises(SchemaError, match="schema clash"):
        import_hf(str(tmp_path / "hf3"), loc)
    assert Dataset.load(loc).storage.head().last_snapshot_id == 2


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_folder_import_shows_the_same_tree_in_the_mount(tmp_path):
    from mount_util import mounted

    src = tmp_path / "imgs"
    tree = make_tree(src, classes=("cat", "dog", "bird"), per_class=3)
    import_folder(str(src), str(tmp_path / "catalog" / "pets"))
    with mounted(str(tmp_path / "catalog"), str(tmp_path / "mnt")):
        files = tmp_path / "mnt" / "pets" / "current" / "files"
        assert read_tree(files) == tree
        assert sorted(os.listdir(files)) == ["bird", "cat", "dog"]
