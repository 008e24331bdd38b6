"""Real ArrayRecord files read by range from a bucket, with and without the chunk cache."""

from __future__ import annotations

import os
import random

import numpy as np
import pyarrow as pa
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from spacefs.engine.backend import backend_for
from spacefs.engine.chunkcache import ChunkCache
from spacefs.engine.errors import UserInputError
from spacefs.engine.records import write_records
from spacefs.engine.remote_records import read_records


@pytest.fixture
def record_file(tmp_path):
    rng = random.Random(3)
    # Sizes around the 64 KiB Riegeli block so records straddle block headers, plus empties.
    values = [os.urandom(rng.choice([0, 1, 100, 4096, 65_000, 70_000, 200_000])) for _ in range(120)]
    path = str(tmp_path / "f.array_record")
    offsets = write_records(path, pa.array(values, pa.binary()))
    reader = ArrayRecordReader(path)
    assert [reader.read([i])[0] for i in range(3)] == values[:3]  # a real ArrayRecord file
    return path, values, offsets


def test_records_read_by_range_from_a_bucket(s3_bucket, tmp_path, record_file):
    path, values, offsets = record_file
    b = backend_for(s3_bucket + "/ds")
    b.put_file("data/records/blob/f.array_record", path)
    sizes = np.array([len(v) for v in values])
    pick = np.array(random.Random(5).sample(range(len(values)), 60))
    want = [values[i] for i in pick]
    assert read_records(b, "data/records/blob/f.array_record", offsets[pick], sizes[pick]) == want
    cache = ChunkCache(str(tmp_path / "cache"), cache_size=64 << 20, chunk_size=256 << 10)
    assert read_records(b, "data/records/blob/f.array_record", offsets[pick], sizes[pick], cache) == want
    assert read_records(b, "data/records/blob/f.array_record", offsets, sizes, cache) == values


def test_compressed_files_are_refused(s3_bucket):
    b = backend_for(s3_bucket)
    with pytest.raises(UserInputError, match="compressed chunks"):
        read_records(b, "x.array_record", [-1], [10])
