"""TfFeatures: a record field serialized with a real TFDS FeaturesDict."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import tensorflow_datasets as tfds

from spacefs import Dataset, RandomAccessDataSource, TfFeatures
from spacefs.engine.errors import SchemaError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def features_dict():
    f = tfds.features
    return f.FeaturesDict({
        "objects": f.Sequence({"bbox": f.BBoxFeature(), "name": f.Text()}),
        "embedding": f.Tensor(shape=(4,), dtype=np.float32),
        "image_id": np.int64,
    })


def example(i: int) -> dict:
    k = i % 3 + 1
    return {
        "objects": {"bbox": np.full((k, 4), 0.1 * (i % 5), np.float32), "name": [f"obj{i}-{j}" for j in range(k)]},
        "embedding": np.arange(4, dtype=np.float32) + i,
        "image_id": i,
    }


@pytest.fixture()
def ds(tmp_path) -> Dataset:
    schema = pa.schema([("id", pa.int64()), ("features", TfFeatures(features_dict()))])
    ds = Dataset.create(str(tmp_path / "tf"), schema, ["id"], ["features"])
    ds.local().append({"id": list(range(20)), "features": [example(i) for i in range(20)]})
    return ds


def check(got: dict, i: int) -> None:
    want = example(i)
    assert got["image_id"] == i
    np.testing.assert_allclose(got["embedding"], want["embedding"])
    np.testing.assert_allclose(np.asarray(got["objects"]["bbox"]), want["objects"]["bbox"])
    assert [n.decode() if isinstance(n, bytes) else n for n in got["objects"]["name"]] == want["objects"]["name"]


def test_deserialize_returns_nested_numpy(ds):
    src = RandomAccessDataSource({"features": ds}, deserialize=True)
    assert len(src) == 20
    check(src[7], 7)
    for i, got in zip([19, 0, 5], src.__getitems__([19, 0, 5]), strict=True):
        check(got, i)
    raw = RandomAccessDataSource({"features": ds})[7]
    assert isinstance(raw, bytes)
    # Protobuf map fields serialize in no fixed order: compare the parsed messages, not bytes.
    import tensorflow as tf

    want = TfFeatures(features_dict()).serialize(example(7))
    assert tf.train.Example.FromString(raw) == tf.train.Example.FromString(want)


def test_stored_schema_loads_back(ds):
    again = Dataset.load(ds.location)
    ftype = again.schema.field("features").type
    assert isinstance(ftype, TfFeatures) and ftype == ds.schema.field("features").type
    check(ftype.deserialize(again.local().read_all().column("features")[3].as_py()), 3)
    # Serialized bytes are accepted as they are, next to nested dicts.
    again.local().append({"id": [100], "features": [ftype.serialize(example(100))]})
    both = RandomAccessDataSource({"id": again, "features": again}, deserialize=True)
    check(both[20]["features"], 100)
    assert pickle.loads(pickle.dumps(ftype)) == ftype


def test_dataloader_workers_decode(ds):
    from torch.utils.data import DataLoader

    src = RandomAccessDataSource({"id": ds, "features": ds}, deserialize=True)
    loader = DataLoader(src, batch_size=6, num_workers=2, collate_fn=lambda b: b)
    rows = [r for batch in loader for r in batch]
    assert [r["id"] for r in rows] == list(range(20))
    for r in rows:
        check(r["features"], r["id"])


def test_bad_values_and_types(tmp_path):
    with pytest.raises(SchemaError):
        TfFeatures({"not": "a FeaturesDict"})
    schema = pa.schema([("id", pa.int64()), ("features", TfFeatures(features_dict()))])
    ds = Dataset.create(str(tmp_path / "bad"), schema, ["id"], ["features"])
    with pytest.raises(Exception):  # noqa: B017 - TFDS raises its own errors for bad values
        ds.local().append({"id": [1], "features": [{"embedding": "nope"}]})
    assert ds.num_rows() == 0 and ds.snapshot_id() == 0


def test_import_spacefs_does_not_import_tensorflow():
    code = "import sys, spacefs; assert 'tensorflow' not in sys.modules and 'tensorflow_datasets' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
