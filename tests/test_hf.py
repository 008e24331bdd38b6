"""HuggingFace datasets: export, import with features kept, and index files read by
``load_dataset("parquet", ...)``."""

from __future__ import annotations

import io
import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from spacefs import Dataset
from spacefs.engine.errors import SchemaError, UserInputError

SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("blob", pa.binary())])


@pytest.fixture(autouse=True)
def quiet(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    datasets.disable_progress_bars()


@pytest.fixture()
def ds(tmp_path) -> Dataset:
    ds = Dataset.create(str(tmp_path / "ds"), SCHEMA, ["id"], ["blob"])
    ds.local().append({"id": list(range(50)), "label": [f"l{i}" for i in range(50)],
                       "blob": [bytes([i]) * i for i in range(50)]})
    ds.add_tag("v1")
    ds.local().delete(pc.field("id") >= 40)
    return ds


def test_to_huggingface_materializes_records(ds):
    hf = ds.to_huggingface()
    assert isinstance(hf, datasets.Dataset) and hf.num_rows == 40
    assert hf.features["blob"] == datasets.Value("binary")
    assert hf[7] == {"id": 7, "label": "l7", "blob": b"\x07" * 7}
    old = ds.to_huggingface(version="v1", fields=["id", "blob"])
    assert old.num_rows == 50 and old.column_names == ["id", "blob"]
    assert old.with_format("arrow")[:].equals(ds.local().read_all(version="v1", fields=["id", "blob"]))


def test_to_huggingface_cached_file(ds, tmp_path):
    a = ds.to_huggingface(cache_dir=str(tmp_path / "cache"))
    files = os.listdir(tmp_path / "cache")
    assert len(files) == 1 and files[0].endswith(".arrow")
    b = ds.to_huggingface(cache_dir=str(tmp_path / "cache"))
    assert os.listdir(tmp_path / "cache") == files
    assert a[:] == b[:] == ds.to_huggingface()[:]


def test_load_dataset_reads_index_files(ds, tmp_path):
    files = ds.index_files()
    hf = datasets.load_dataset("parquet", data_files={"train": files}, cache_dir=str(tmp_path / "hfc"))["train"]
    assert hf.num_rows == 40
    assert sorted(hf["id"]) == list(range(40))
    ref = hf[0]["blob"]  # record fields are their references in the index
    assert set(ref) == {"file", "pos", "size", "offset"} and ref["size"] == hf[0]["id"]
    old = datasets.load_dataset("parquet", data_files=ds.index_files("v1"), cache_dir=str(tmp_path / "hfc"))
    assert old["train"].num_rows == 50


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 5, 3), i * 8, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def image_dataset(tmp_path, n: int = 30) -> datasets.Dataset:
    """An HF dataset with an Image column: half the images inline, half only by path."""
    images = []
    for i in range(n):
        if i % 2:
            path = tmp_path / f"img{i}.png"
            path.write_bytes(png(i))
            images.append({"bytes": None, "path": str(path)})
        else:
            images.append({"bytes": png(i), "path": None})
    features = datasets.Features({"id": datasets.Value("int64"), "image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["cat", "dog", "bird"])})
    return datasets.Dataset.from_dict({"id": list(range(n)), "image": images, "label": [i % 3 for i in range(n)]},
                                      features=features)


def test_from_huggingface_keeps_features(tmp_path):
    hf = image_dataset(tmp_path).shuffle(seed=0)  # an indices mapping, honoured
    ds = Dataset.from_huggingface(hf, str(tmp_path / "imgs"), ["id"], batch_size=7)
    assert ds.record_fields == ["image"] and ds.schema.field("image").type == pa.binary()
    assert [v["snapshot_id"] for v in ds.versions().to_pylist()] == [1, 0]  # one snapshot
    t = ds.local().read_all()
    by_id = dict(zip(t.column("id").to_pylist(), t.column("image").to_pylist(), strict=True))
    assert all(by_id[i] == png(i) for i in range(30))  # path-only images were read in
    back = ds.to_huggingface()
    assert back.features["image"] == datasets.Image() and back.features["label"] == hf.features["label"]
    row = back.filter(lambda r: r["id"] == 4)[0]
    assert isinstance(row["image"], Image.Image) and np.asarray(row["image"])[0, 0, 0] == 32
    assert back.features["label"].int2str(row["label"]) == "dog"
    again = Dataset.load(ds.location).to_huggingface(fields=["id", "label"])
    assert again.features["label"] == hf.features["label"]


def test_from_huggingface_refuses_bad_input(tmp_path):
    hf = image_dataset(tmp_path, 4)
    target = tmp_path / "out"
    with pytest.raises(UserInputError, match="split"):
        Dataset.from_huggingface(datasets.DatasetDict({"train": hf}), str(target), ["id"])
    with pytest.raises(SchemaError):
        Dataset.from_huggingface(hf, str(target), ["nope"])
    with pytest.raises(SchemaError, match="label"):
        Dataset.from_huggingface(hf, str(target), ["id"], record_fields=["label"])
    assert not target.exists()
    bad = datasets.Dataset.from_dict({"id": [1, 2], "blob": [b"a", b"b"]})
    Dataset.from_huggingface(bad, str(target), ["id"])
    with pytest.raises(Exception, match="exists"):
        Dataset.from_huggingface(bad, str(target), ["id"])
    assert Dataset.load(str(target)).num_rows() == 2


def test_round_trip_of_plain_columns(ds, tmp_path):
    hf = ds.to_huggingface()
    copy = Dataset.from_huggingface(hf, str(tmp_path / "copy"), ["id"])
    assert copy.record_fields == ["blob"]
    assert copy.local().read_all().equals(ds.local().read_all())
