"""Page-cached reads answered from maps of record files (``mount.recread.Mapped``).

The mount sends such a read as pieces of read-only maps in one gather write (the
patched pyfuse3's list reply), so the bytes are copied once. These tests check the
pieces are exactly the record's bytes (block headers left out, across map windows), that
nothing is answered from a map unless it is in the page cache, that maps stay within
their budget and are unmapped when evicted, and that a real mount serves page-cached
records this way (its daemon then reads almost nothing with read system calls).
"""

from __future__ import annotations

import gc
import glob
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pyfuse3
from mount_util import mounted, wait_for
from test_mount_readamp import _rchar

from spacefs import DirCatalog
from spacefs.engine.records import BLOCK, read_record_range, record_position
from spacefs.mount.recread import Mapped

SCHEMA = pa.schema([("id", pa.int64()), ("blob", pa.binary())])


def _record(root: str, size: int) -> tuple[bytes, str, str, int]:
    """A one-record dataset: (its bytes, catalog, record file, the record's offset)."""
    blob = random.Random(size).randbytes(size)
    cat = DirCatalog(os.path.join(root, "catalog"))
    ds = cat.create_dataset("big", SCHEMA, ["id"], ["blob"])
    ds.local().append({"id": [0], "blob": [blob]})
    (index,) = glob.glob(os.path.join(cat.location, "big", "data", "**", "*.parquet"), recursive=True)
    ref = pq.read_table(index).column("blob")[0].as_py()
    path = os.path.join(cat.location, "big", ref["file"])
    return blob, cat.location, path, ref["offset"]


def _pieces(m: Mapped, fd: int, ident: tuple[int, int], size: int, offset: int, start: int, n: int):  # noqa: ANN202
    """``m.pieces`` of a range just read into the page cache. This machine's kernel pages
    out page cache it finds cold (DAMON), now and then within seconds of a read, and then
    ``pieces`` rightly says None: read the range again, a bounded number of times."""
    for _ in range(5):
        os.pread(fd, n + (n // BLOCK + 2) * 24, record_position(offset, start))
        pieces = m.pieces(fd, ident, size, offset, start, n)
        if pieces is not None:
            return pieces
    return None


def _maps_of(path: str, pid: str = "self") -> int:
    with open(f"/proc/{pid}/maps") as f:
        return sum(1 for line in f if line.rstrip().endswith(path))


def test_pieces_are_the_record_bytes_across_windows_and_maps_stay_within_budget(tmp_path):
    blob, _, path, offset = _record(str(tmp_path), 3 << 20)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, os.fstat(fd).st_size, 0)  # into the page cache
        ident, size = (os.fstat(fd).st_dev, os.fstat(fd).st_ino), os.fstat(fd).st_size
        m = Mapped(window=4 * BLOCK, budget=8 * BLOCK)
        rng = random.Random(7)
        cases = [(0, len(blob)), (0, 1), (len(blob) - 1, 1), (BLOCK - 24 - 5, 10), (4 * BLOCK - 100, 300)]
        cases += [(s, rng.randrange(1, min(1 << 20, len(blob) - s) + 1)) for s in
                  (rng.randrange(len(blob)) for _ in range(200))]
        for start, n in cases:
            pieces = _pieces(m, fd, ident, size, offset, start, n)
            assert pieces is not None, (start, n)
            assert b"".join(pieces) == blob[start : start + n] == bytes(read_record_range(fd, offset, start, n))
            assert all(len(p) <= BLOCK for p in pieces)
            del pieces
            assert m.used <= m.budget
        assert m.maps > m.budget // m.window  # windows were evicted and mapped again
        gc.collect()
        # Evicted windows are unmapped: no piece of them is held any more.
        assert _maps_of(path) <= m.budget // m.window
        assert m.drop_idle(3600) == 0 and _maps_of(path) > 0
        assert m.drop_idle(0) > 0 and m.used == 0
        gc.collect()
        assert _maps_of(path) == 0
    finally:
        os.close(fd)


def test_nothing_is_answered_from_a_map_unless_it_is_in_the_page_cache(tmp_path):
    blob, _, path, offset = _record(str(tmp_path), 1 << 20)
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        m = Mapped()
        assert m.pieces(fd, (st.st_dev, st.st_ino), st.st_size, offset, 0, len(blob)) is None
        assert m.maps == 0  # not even mapped: a fault would wait for the disk on the event loop
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead beyond what is read
        assert _pieces(m, fd, (st.st_dev, st.st_ino), st.st_size, offset, 0, 4000) is not None  # reads 2 pages
        assert m.pieces(fd, (st.st_dev, st.st_ino), st.st_size, offset, 0, len(blob)) is None
        assert m.pieces(fd, (st.st_dev, st.st_ino), st.st_size, offset, 5, 0) == []
    finally:
        os.close(fd)


def test_a_mount_answers_page_cached_reads_without_read_calls(tmp_path, monkeypatch):
    assert hasattr(pyfuse3, "READ_GATHER_MAX"), "pyfuse3 lacks the project's patch (scripts/pyfuse3.sh)"
    monkeypatch.setenv("SPACEFS_IDLE_CLOSE", "1")
    blob, loc, path, _ = _record(str(tmp_path), 9 << 20)
    with open(path, "rb") as f:
        while f.read(1 << 24):  # the record file in the page cache
            pass
    with mounted(loc, str(tmp_path / "mnt")) as info:
        mnt_path = os.path.join(tmp_path / "mnt", "big", "versions", "1", "rows", "0", "blob")
        with open(mnt_path, "rb", buffering=0) as f:
            # The first reads open the record file in a worker thread, and fetch chunks
            # ahead there; all of them are done once the whole file has been read.
            assert b"".join(iter(lambda: f.read(1 << 20), b"")) == blob
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # the mount's page cache
        before = _rchar(info.pid)
        with open(mnt_path, "rb", buffering=0) as f:
            got = b"".join(iter(lambda: f.read(1 << 20), b""))
        read = _rchar(info.pid) - before
        assert got == blob
        # odd sizes at odd places, past the kernel's read-ahead (a fresh page cache)
        fd = os.open(mnt_path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            rng = random.Random(3)
            for _ in range(50):
                s = rng.randrange(len(blob))
                n = rng.randrange(1, 300_000)
                assert os.pread(fd, n, s) == blob[s : s + n]
        finally:
            os.close(fd)
        # Requests read from /dev/fuse are small; the 9 MiB did not go through read calls
        # (but for pages the kernel paged out meanwhile: this machine's DAMON does that).
        assert read < len(blob) // 4, f"the daemon read {read} bytes to serve {len(blob)}"
        # The daemon unmaps windows unread for SPACEFS_IDLE_CLOSE seconds (a map, like a
        # descriptor, would keep a deleted file's blocks).
        assert _maps_of(path, str(info.pid)) > 0
        wait_for(lambda: _maps_of(path, str(info.pid)) == 0, 15, "idle maps dropped")
