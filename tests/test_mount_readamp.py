"""Read amplification through a real mount: bytes the daemon reads per byte served.

The daemon's ``rchar`` (/proc/PID/io) counts every byte its read syscalls return,
record files and /dev/fuse alike, so it bounds what serving a read cost. Reads go to
distinct, non-adjacent pages with ``POSIX_FADV_RANDOM`` so neither the kernel page
cache of the mount file nor its read-ahead hides or inflates the daemon's work.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
from mount_util import mounted

from spacefs import DirCatalog, FileOptions
from spacefs.mount.recread import Ahead, Decoded

SCHEMA = pa.schema([("id", pa.int64()), ("blob", pa.binary())])
PAGE = 4096


def _rchar(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


def _dataset(root: str, blob: bytes, options: FileOptions | None = None) -> str:
    cat = DirCatalog(os.path.join(root, "catalog"))
    ds = cat.create_dataset("big", SCHEMA, ["id"], ["blob"])
    ds.local(options).append({"id": [0], "blob": [blob]})
    return cat.location


def test_random_4k_reads_of_a_large_record_read_little_more_than_asked(tmp_path):
    blob = random.Random(1).randbytes(16 << 20)
    loc = _dataset(str(tmp_path), blob)
    mnt = str(tmp_path / "mnt")
    with mounted(loc, mnt) as info:
        path = os.path.join(mnt, "big", "versions", "1", "rows", "0", "blob")
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            # Even pages only, so the kernel never sees a neighbour already cached.
            pages = random.Random(2).sample(range(1, len(blob) // PAGE, 2), 400)
            assert os.pread(fd, PAGE, pages[0] * PAGE) == blob[pages[0] * PAGE:][:PAGE]  # warm the views
            before = _rchar(info.pid)
            for p in pages[1:]:
                assert os.pread(fd, PAGE, p * PAGE) == blob[p * PAGE : (p + 1) * PAGE]
            read = _rchar(info.pid) - before
        finally:
            os.close(fd)
    served = PAGE * (len(pages) - 1)
    print(f"random 4 KiB: daemon read {read} bytes to serve {served} ({read / served:.2f}x)")
    assert read <= 2 * served, f"daemon read {read} bytes to serve {served} ({read / served:.1f}x)"


def test_a_compressed_record_read_in_small_pieces_is_decoded_once(tmp_path):
    # Incompressible bytes: each decode of the record reads about its whole size.
    blob = random.Random(3).randbytes(8 << 20)
    loc = _dataset(str(tmp_path), blob, FileOptions(record_options="zstd,group_size:1"))
    mnt = str(tmp_path / "mnt")
    with mounted(loc, mnt) as info:
        path = os.path.join(mnt, "big", "versions", "1", "rows", "0", "blob")
        assert os.stat(path).st_size == len(blob)
        before = _rchar(info.pid)
        got = bytearray()
        with open(path, "rb", buffering=0) as f:
            while piece := f.read(128 << 10):
                got += piece
        read = _rchar(info.pid) - before
    assert got == blob
    print(f"compressed: daemon read {read} bytes for {len(blob)} ({read / len(blob):.2f}x)")
    assert read <= 1.5 * len(blob), f"daemon read {read} bytes for an {len(blob)}-byte record"


def test_decoded_records_decode_once_under_concurrency_and_stay_within_budget():
    cache = Decoded(budget=10)
    started, release = threading.Event(), threading.Event()

    def decode() -> bytes:
        started.set()
        release.wait(5)
        return b"abcdef"

    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(cache.fetch, "r", decode) for _ in range(4)]
        assert started.wait(5)
        release.set()
        assert [f.result() for f in futs] == [b"abcdef"] * 4
    assert cache.decodes == 1 and cache.get("r") == b"abcdef"
    assert cache.fetch("s", lambda: b"123456") == b"123456"  # 12 bytes > 10: the oldest goes
    assert cache.get("r") is None and cache.get("s") == b"123456" and cache.used == 6
    assert cache.fetch("huge", lambda: b"x" * 11) == b"x" * 11  # bigger than the budget: not kept
    assert cache.get("huge") is None and cache.get("s") == b"123456"


def test_read_ahead_follows_a_reader_striding_forward_and_not_a_shuffled_one(tmp_path):
    path = str(tmp_path / "records")
    with open(path, "wb") as f:
        f.write(random.Random(4).randbytes(8 << 20))
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        shuffled = Ahead(window=1 << 20)
        for pos in (6 << 20, 1 << 20, 4 << 20, 0, 7 << 20):  # misses far apart
            shuffled.missed("f", fd, pos, pos + 15_000)
        assert shuffled.hints == 0
        # ImageFolder over rows written class by class in turn: every tenth record
        strided = Ahead(window=1 << 20)
        for i in range(3):
            strided.missed("f", fd, i * 150_000, i * 150_000 + 15_000)
        assert strided.hints == 2
        # what follows the latest miss comes into the page cache without anyone reading it
        end = 2 * 150_000 + 15_000
        deadline = time.monotonic() + 10
        while True:
            try:
                if os.preadv(fd, [bytearray(256 << 10)], end + (512 << 10), os.RWF_NOWAIT) == 256 << 10:
                    break
            except BlockingIOError:
                pass
            assert time.monotonic() < deadline, "the read-ahead never arrived"
            time.sleep(0.01)
    finally:
        os.close(fd)
