"""WebDataset shards: parallel ingestion in one snapshot, round trips, corrupt shards."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest
import webdataset as wds

from spacefs import Dataset
from spacefs.engine.errors import NotFoundError, SchemaError, UserInputError
from spacefs.io import export_webdataset, import_webdataset


def write_shards(root, shards=3, per_shard=5, exts=("jpg", "cls", "json")) -> dict[str, dict[str, bytes]]:
    """Shards ``root/shard-00000N.tar``; returns every sample by key."""
    os.makedirs(root, exist_ok=True)
    samples = {}
    for s in range(shards):
        with wds.TarWriter(str(root / f"shard-{s:06d}.tar"), encoder=False) as sink:
            for i in range(per_shard):
                key = f"s{s}_{i:04d}"
                sample = {"__key__": key}
                if "jpg" in exts:
                    sample["jpg"] = os.urandom(64) + key.encode()
                if "cls" in exts:
                    sample["cls"] = str((s + i) % 3).encode()
                if "json" in exts:
                    sample["json"] = json.dumps({"k": key}).encode()
                sink.write(sample)
                samples[key] = {k: v for k, v in sample.items() if k != "__key__"}
    return samples


def test_import_shards_in_parallel_one_snapshot(tmp_path):
    samples = write_shards(tmp_path / "shards")
    loc = str(tmp_path / "ds")
    r = import_webdataset(str(tmp_path / "shards"), loc, max_parallelism=3)
    assert (r.rows, r.snapshot_id, r.created) == (15, 1, True)
    ds = Dataset.load(loc)
    assert ds.primary_keys == ["key"] and ds.record_fields == ["jpg"]
    assert ds.schema.field("cls").type == pa.string() and ds.schema.field("json").type == pa.string()
    rows = {r["key"]: r for r in ds.local().read_all().to_pylist()}
    assert set(rows) == set(samples)
    for k, s in samples.items():
        assert rows[k]["jpg"] == s["jpg"]
        assert rows[k]["cls"] == s["cls"].decode() and json.loads(rows[k]["json"]) == {"k": k}
    # Text fields are queryable with SQL.
    counts = ds.sql("SELECT cls, count(*) AS n FROM ds GROUP BY cls ORDER BY cls").to_pylist()
    assert sum(c["n"] for c in counts) == 15


def test_brace_pattern_and_round_trip(tmp_path):
    samples = write_shards(tmp_path / "shards", shards=4, per_shard=3)
    loc = str(tmp_path / "ds")
    import_webdataset(str(tmp_path / "shards" / "shard-{000001..000002}.tar"), loc)
    assert Dataset.load(loc).num_rows() == 6

    shards = export_webdataset(loc, str(tmp_path / "out"), samples_per_shard=4)
    assert len(shards) == 2
    back = {}
    from webdataset.tariterators import tarfile_samples

    for s in shards:
        for sample in tarfile_samples([{"url": s}]):
            back[sample["__key__"]] = {k: v for k, v in sample.items() if not k.startswith("__")}
    assert back == {k: v for k, v in samples.items() if k.startswith(("s1_", "s2_"))}


def test_corrupt_shard_fails_cleanly(tmp_path):
    write_shards(tmp_path / "shards")
    good = (tmp_path / "shards" / "shard-000001.tar").read_bytes()
    (tmp_path / "shards" / "shard-000001.tar").write_bytes(good[: len(good) // 2])
    loc = str(tmp_path / "ds")
    with pytest.raises(UserInputError, match="corrupt tar shard .*shard-000001.tar"):
        import_webdataset(str(tmp_path / "shards"), loc)
    assert not os.path.exists(loc)

    # An existing dataset is left at its snapshot, with no stray data files.
    write_shards(tmp_path / "ok", shards=1)
    import_webdataset(str(tmp_path / "ok"), loc)
    data = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(loc, "data")) for f in fs)
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(UserInputError, match="corrupt tar shard .*junk.tar"):
        import_webdataset([str(tmp_path / "shards" / "shard-000000.tar"), str(tmp_path / "junk.tar")], loc)
    assert Dataset.load(loc).storage.head().last_snapshot_id == 1
    assert sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(loc, "data")) for f in fs) == data


def test_extension_clash_and_missing_shards(tmp_path):
    write_shards(tmp_path / "a", shards=1, exts=("jpg", "cls"))
    write_shards(tmp_path / "b", shards=1, exts=("jpg", "cls", "json"))
    loc = str(tmp_path / "ds")
    import_webdataset(str(tmp_path / "a"), loc)
    with pytest.raises(SchemaError, match="schema clash.*json"):
        import_webdataset(str(tmp_path / "b"), loc)
    assert Dataset.load(loc).storage.head().last_snapshot_id == 1
    with pytest.raises(NotFoundError):
        import_webdataset(str(tmp_path / "nope-{0..3}.tar"), loc)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="no .tar shards"):
        import_webdataset(str(tmp_path / "empty"), loc)


def test_export_composite_keys_and_dotted_keys(tmp_path):
    ds = Dataset.create(str(tmp_path / "ds"), pa.schema([("a", pa.string()), ("b", pa.int64()), ("v", pa.binary())]),
                        ["a", "b"], ["v"])
    ds.local().append({"a": ["x.y", "z"], "b": [1, 2], "v": [b"1", b"2"]})
    shards = export_webdataset(ds.location, str(tmp_path / "out"))
    from webdataset.tariterators import tarfile_samples

    got = {s["__key__"]: s for s in tarfile_samples([{"url": shards[0]}])}
    assert set(got) == {"x%2Ey,1", "z,2"}
    assert got["z,2"]["a"] == b"z" and got["z,2"]["v"] == b"2" and got["z,2"]["b"] == b"2"


@pytest.fixture(scope="module")
def ray_local():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def test_ingest_on_ray(tmp_path, ray_local):
    samples = write_shards(tmp_path / "shards", shards=4, per_shard=6)
    loc = str(tmp_path / "ds")
    r = import_webdataset(str(tmp_path / "shards"), loc, ray=True, max_parallelism=2)
    assert (r.rows, r.snapshot_id) == (24, 1)
    got = {row["key"]: row["jpg"] for row in Dataset.load(loc).local().read_all(fields=["key", "jpg"]).to_pylist()}
    assert got == {k: s["jpg"] for k, s in samples.items()}

    # A dataset whose cls field is an int64: text files are cast. A shard whose .cls
    # does not convert fails inside its Ray task; the error names it, nothing commits.
    typed = str(tmp_path / "typed")
    Dataset.create(typed, pa.schema([("key", pa.string()), ("cls", pa.int64()), ("jpg", pa.binary())]), ["key"], ["jpg"])
    write_shards(tmp_path / "more", shards=2, per_shard=3, exts=("jpg", "cls"))
    r = import_webdataset(str(tmp_path / "more"), typed, ray=True)
    assert r.snapshot_id == 1
    assert sorted(Dataset.load(typed).local().read_all(fields=["cls"]).column("cls").to_pylist()) == [0, 0, 1, 1, 2, 2]
    with wds.TarWriter(str(tmp_path / "more" / "shard-000002.tar"), encoder=False) as sink:
        sink.write({"__key__": "x", "jpg": b"1", "cls": b"not a number"})
    with pytest.raises(SchemaError, match="shard-000002.tar: the .cls files do not convert to int64"):
        import_webdataset(str(tmp_path / "more"), typed, ray=True)
    assert Dataset.load(typed).storage.head().last_snapshot_id == 1
    with pytest.raises(SchemaError, match="shard-000002.tar"):
        import_webdataset(str(tmp_path / "more"), typed)  # the same with threads
