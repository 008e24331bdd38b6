"""What a newcomer tries first: examples in a fresh relative --workdir, and a WebDataset
export + import round trip that keeps the schema."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pytest

from spacefs import Dataset
from spacefs.io import export_webdataset, import_folder, import_webdataset
from spacefs.io.webdataset import FIELD_TYPES_FILE

from conftest import REPO


def test_example_creates_a_relative_workdir_and_prints_absolute_paths(tmp_path):
    script = os.path.join(REPO, "scripts", "examples", "label_studio.py")
    p = subprocess.run([sys.executable, script, "--workdir", "runs/first"], capture_output=True, text=True,
                       timeout=240, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "OK"
    assert (tmp_path / "runs" / "first" / "import_round1.json").is_file()
    for name in ("huggingface_in_out.py", "webdataset_ray.py", "coco_detection.py", "embedding_index.py",
                 "segment_anything.py", "label_studio.py"):
        text = open(os.path.join(REPO, "scripts", "examples", name)).read()
        assert "os.path.abspath(args.workdir)" in text and "os.makedirs(work, exist_ok=True)" in text, name


def test_webdataset_round_trip_keeps_the_schema(tmp_path):
    for label, names in (("cat", ["c1.jpg", "c2.jpg"]), ("dog", ["d1.jpg"])):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for n in names:
            (tmp_path / "imgs" / label / n).write_bytes(f"{label} {n}".encode())
    import_folder(str(tmp_path / "imgs"), str(tmp_path / "pets"))
    shards = export_webdataset(str(tmp_path / "pets"), str(tmp_path / "shards"))
    assert [os.path.basename(s) for s in shards] == ["shard-000000.tar"]  # the types file is no shard
    assert (tmp_path / "shards" / FIELD_TYPES_FILE).is_file()

    import_webdataset(str(tmp_path / "shards"), str(tmp_path / "back"))
    back = Dataset.load(str(tmp_path / "back"))
    assert back.schema.field("name").type == pa.string() and back.schema.field("label").type == pa.string()
    assert back.record_fields == ["content"]
    rows = back.local().read_all(fields=["label", "name", "content"]).sort_by("name").to_pylist()
    assert rows == [{"label": "cat", "name": "c1.jpg", "content": b"cat c1.jpg"},
                    {"label": "cat", "name": "c2.jpg", "content": b"cat c2.jpg"},
                    {"label": "dog", "name": "d1.jpg", "content": b"dog d1.jpg"}]
    assert back.sql("SELECT count(*) AS n FROM back WHERE name LIKE 'c%'").column("n").to_pylist() == [2]


def test_webdataset_round_trip_keeps_scalar_types(tmp_path):
    schema = pa.schema([("key", pa.string()), ("n", pa.int32()), ("score", pa.float64()), ("ok", pa.bool_()),
                        ("caption", pa.string()), ("blob", pa.binary())])
    ds = Dataset.create(str(tmp_path / "ds"), schema, ["key"], ["blob"])
    ds.local().append({"key": ["a", "b"], "n": [1, -2], "score": [0.5, 2.25], "ok": [True, False],
                       "caption": ["x y", "é"], "blob": [b"\x00\x01", b"\xff"]})
    export_webdataset(ds.location, str(tmp_path / "shards"))
    import_webdataset(str(tmp_path / "shards" / "shard-000000.tar"), str(tmp_path / "back"))
    back = Dataset.load(str(tmp_path / "back"))
    assert {f.name: f.type for f in back.schema} == {f.name: f.type for f in schema}  # fields sorted by name
    assert back.record_fields == ["blob"]
    assert back.local().read_all().sort_by("key").to_pylist() == ds.local().read_all().sort_by("key").to_pylist()


def test_repeated_webdataset_import_fails_instead_of_doubling(tmp_path):
    from spacefs.engine.errors import PrimaryKeyExistsError

    ds = Dataset.create(str(tmp_path / "ds"), pa.schema([("key", pa.string()), ("txt", pa.string())]), ["key"])
    ds.local().append({"key": ["a", "b"], "txt": ["x", "y"]})
    export_webdataset(ds.location, str(tmp_path / "shards"))
    import_webdataset(str(tmp_path / "shards"), str(tmp_path / "back"))
    back = Dataset.load(str(tmp_path / "back"))
    with pytest.raises(PrimaryKeyExistsError):
        import_webdataset(str(tmp_path / "shards"), back.location)
    assert back.num_rows() == 2 and back.snapshot_id() == 1
    import_webdataset(str(tmp_path / "shards"), back.location, mode="upsert", message="again")
    assert back.num_rows() == 2 and back.versions().column("message").to_pylist()[0] == "again"
    import_webdataset(str(tmp_path / "shards"), back.location, mode="append")
    assert back.num_rows() == 4
