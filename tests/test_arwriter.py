"""The ArrayRecord writer that works from Arrow buffers: its files are the ones
``ArrayRecordWriter`` writes, byte for byte, and its offsets point at the records."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from spacefs.engine import arwriter
from spacefs.engine.records import BLOCK, USABLE, RecordReader, scan_offsets, write_records

CASES = {
    "none": ([], 4),
    "one": ([5], 4),
    "one-empty": ([0], 1),
    "empties": ([0] * 100, 7),
    "mixed-empties": ([0, 3, 0, 0, 70_000, 0], 2),
    "larger-than-block": ([100_000, 3, 200_000], 2),
    "chunk-ends-at-block-boundary": ([USABLE - 40 - 3 - 24, 10], 1),
    "exactly-a-block": ([BLOCK, BLOCK - 1, BLOCK + 1], 1),
    "one-chunk": (list(range(0, 3000, 7)), 1000),
}


def _reference(path: str, records: list[bytes], group: int) -> None:
    w = ArrayRecordWriter(path, f"group_size:{group},uncompressed")
    for r in records:
        w.write(r)
    w.close()


def _check(tmp_path, sizes: list[int], group: int, rng: np.random.Generator, threads: int = 2) -> None:
    records = [rng.bytes(int(s)) for s in sizes]
    ref, new = str(tmp_path / "ref.ar"), str(tmp_path / "new.ar")
    _reference(ref, records, group)
    offsets = arwriter.write_uncompressed(new, pa.array(records, pa.binary()), group, threads=threads)
    with open(ref, "rb") as a, open(new, "rb") as b:
        assert a.read() == b.read(), f"files differ for sizes {sizes[:10]}... group {group}"
    reader = ArrayRecordReader(new)
    assert reader.num_records() == len(records)
    if records:
        assert reader.read(0, len(records)) == records
    sizes_np = np.asarray(sizes, dtype=np.int64)
    scanned = scan_offsets(new, sizes_np)
    assert scanned is not None and scanned.tolist() == offsets.tolist()
    rr = RecordReader(str(tmp_path))
    try:
        got = rr.read_batch(["new.ar"], np.zeros(len(sizes), np.int64), offsets, sizes_np, np.arange(len(sizes)))
    finally:
        rr.close()
    assert got == records


def test_writer_is_available_here():
    assert arwriter.writer_available()


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_bytes_as_array_record_writer(tmp_path, case):
    sizes, group = CASES[case]
    _check(tmp_path, sizes, group, np.random.default_rng(1))


def test_same_bytes_on_random_sizes(tmp_path):
    rng = np.random.default_rng(7)
    for trial in range(25):
        n = int(rng.integers(0, 80))
        top = int(rng.choice([2, 100, 5_000, 70_000, 150_000]))
        sub = tmp_path / str(trial)
        sub.mkdir()
        _check(sub, rng.integers(0, top, n).tolist(), int(rng.integers(1, 12)), rng, threads=int(rng.integers(1, 4)))


def test_sliced_and_large_binary(tmp_path):
    rng = np.random.default_rng(3)
    records = [rng.bytes(int(s)) for s in rng.integers(0, 90_000, 40)]
    for name, arr in [("sliced", pa.array(records, pa.binary()).slice(5, 30)),
                      ("large", pa.array(records, pa.large_binary()))]:
        path = str(tmp_path / f"{name}.ar")
        offsets = arwriter.write_uncompressed(path, arr, 4)
        want = arr.to_pylist()
        assert ArrayRecordReader(path).read(0, len(want)) == want
        sizes = np.array([len(r) for r in want], np.int64)
        assert scan_offsets(path, sizes).tolist() == offsets.tolist()


def test_varints_match_protobuf_encoding():
    values = np.array([0, 1, 127, 128, 300, 16_383, 16_384, 2**31, 2**35 + 5], dtype=np.int64)
    enc, ends = arwriter.varints(values)
    parts = np.split(enc, ends[:-1])
    assert [bytes(p) for p in parts] == [arwriter._varint(int(v)) for v in values]
    assert arwriter._varint(300) == b"\xac\x02"


def test_write_records_uses_fast_path_and_keeps_compressed_fallback(tmp_path):
    records = [bytes([i]) * (i * 1000) for i in range(50)]
    values = pa.array(records, pa.binary())
    fast = write_records(str(tmp_path / "fast.ar"), values)
    assert (fast >= 0).all()
    zstd = write_records(str(tmp_path / "zstd.ar"), values, "group_size:8,zstd:3")
    assert (zstd == -1).all()
    assert ArrayRecordReader(str(tmp_path / "zstd.ar")).read(0, 50) == records
    plain = write_records(str(tmp_path / "plain.ar"), values, "group_size:8,uncompressed")
    assert ArrayRecordReader(str(tmp_path / "plain.ar")).read(0, 50) == records
    assert scan_offsets(str(tmp_path / "plain.ar"), np.array([len(r) for r in records])).tolist() == plain.tolist()


def test_padding_is_left_as_holes(tmp_path, monkeypatch):
    """A one-record file is 128 KiB long (its postscript is block-aligned), almost all
    zeros: they are never written, so it takes the blocks of its bytes only."""
    import os

    writes: list[int] = []
    real = os.pwritev
    monkeypatch.setattr(os, "pwritev", lambda fd, iov, at: writes.append(sum(len(b) for b in iov)) or real(fd, iov, at))
    path = str(tmp_path / "one.ar")
    write_records(path, pa.array([b"0123456789"], pa.binary()))
    assert ArrayRecordReader(path).read(0, 1) == [b"0123456789"]  # byte identity: test_same_bytes_*
    assert os.path.getsize(path) == 2 * BLOCK
    assert sum(writes) < 1024, writes  # headers and the record, not 128 KiB of zeros
    assert os.stat(path).st_blocks * 512 <= 8192


def test_write_records_without_fast_writer(tmp_path, monkeypatch):
    """When the native hash cannot be found, ArrayRecordWriter writes the same file."""
    records = [bytes([i % 251]) * (i * 997) for i in range(120)]
    values = pa.array(records, pa.binary())
    a = write_records(str(tmp_path / "a.ar"), values)
    monkeypatch.setattr(arwriter, "_resolved", True)
    monkeypatch.setattr(arwriter, "_hash_fn", None)
    assert not arwriter.writer_available()
    b = write_records(str(tmp_path / "b.ar"), values)
    assert a.tolist() == b.tolist()
    assert (tmp_path / "a.ar").read_bytes() == (tmp_path / "b.ar").read_bytes()


def test_nulls_are_refused(tmp_path):
    with pytest.raises(ValueError, match="null"):
        arwriter.write_uncompressed(str(tmp_path / "x.ar"), pa.array([b"a", None], pa.binary()), 2)


def test_chunks_hashed_from_their_pieces_and_joined_alike(tmp_path, monkeypatch):
    """The fragment hash (no copy of the values) is what runs here; without it the
    pieces are joined and hashed whole, and both give ArrayRecordWriter's bytes."""
    assert arwriter.writer_available() and arwriter._cat_fn is not None
    sizes = [0, 5, 70_000, 3, USABLE - 50, 0, 131_000, 17]
    _check(tmp_path, sizes, 3, np.random.default_rng(9))
    monkeypatch.setattr(arwriter, "_cat_fn", None)
    joined = tmp_path / "joined"
    joined.mkdir()
    _check(joined, sizes, 3, np.random.default_rng(9))
