"""``RecordReader.scan_refs`` on scattered references (a sibling diff's rows at the fork
point): one ``preadv`` per run of neighbouring records, block headers skipped, the
bytes exactly the records' whatever the mix of runs, files and block-straddling sizes."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from spacefs.engine.records import BLOCK, REF_TYPE, RecordReader, write_records


def _write(root: str, rel: str, values: list[bytes]) -> pa.Array:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    offsets = write_records(path, pa.array(values, pa.binary()))
    assert (offsets >= 0).all()
    n = len(values)
    return pa.StructArray.from_arrays(
        [pa.array([rel] * n), pa.array(np.arange(n, dtype=np.int64)),
         pa.array([len(v) for v in values], pa.int64()), pa.array(offsets)],
        fields=list(REF_TYPE))


@pytest.mark.parametrize("seed", range(3))
def test_scan_refs_scattered_runs_match_records(tmp_path, seed):
    rng = np.random.default_rng(seed)
    root = str(tmp_path)
    # Sizes from empty to over a block: many records straddle a 64 KiB block header.
    sizes = rng.choice([0, 1, 10, 4096, 30_000, BLOCK + 100], size=300, p=[0.05, 0.1, 0.25, 0.3, 0.2, 0.1])
    files = {}
    for name in ("a", "b"):
        values = [rng.bytes(int(s)) for s in sizes]
        files[name] = (values, _write(root, f"data/records/f/{name}.array_record", values))
    # A long contiguous run, then scattered picks from both files.
    picks = [("a", i) for i in range(40, 120)]
    picks += [(rng.choice(["a", "b"]), int(i)) for i in rng.choice(300, size=200)]
    refs = pa.concat_arrays([files[f][1].slice(i, 1) for f, i in picks])
    got = RecordReader(root).scan_refs(refs).to_pylist()
    want = [files[f][0][i] for f, i in picks]
    assert got == want


def test_scan_refs_truncated_file_is_an_error_not_garbage(tmp_path):
    root = str(tmp_path)
    values = [bytes([i % 251]) * 5000 for i in range(100)]
    refs = _write(root, "data/records/f/t.array_record", values)
    path = os.path.join(root, "data/records/f/t.array_record")
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(OSError):
        RecordReader(root).scan_refs(refs.take(pa.array(np.arange(99, -1, -2))))
