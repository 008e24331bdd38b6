"""The local chunk cache in front of object storage: request counts, bounds, sharing."""

from __future__ import annotations

import os
import random
import subprocess
import textwrap

import pytest

from spacefs.engine.backend import backend_for
from spacefs.engine.chunkcache import ChunkCache
from spacefs.engine.errors import UserInputError

from conftest import PYTHON

CHUNK = 64 * 1024


class Counting:
    """Wraps a backend and counts the requests that reach it."""

    def __init__(self, inner):
        self.inner = inner
        self.uri = inner.uri
        self.gets = 0  # read / read_range / read_ranges calls
        self.ranges = 0  # ranges asked for in them
        self.heads = 0

    def read_ranges(self, path, ranges):
        self.gets += 1
        self.ranges += len(ranges)
        return self.inner.read_ranges(path, ranges)

    def stat(self, path):
        self.heads += 1
        return self.inner.stat(path)


def random_ranges(rng, size, n, max_len=3000):
    out = []
    for _ in range(n):
        start = rng.randrange(size - 1)
        out.append((start, rng.randint(1, min(max_len, size - start))))
    return out


def test_second_read_makes_no_request(s3_bucket, tmp_path):
    data = os.urandom(10 * CHUNK + 123)
    b = backend_for(s3_bucket + "/ds")
    b.put("data/records/f/a.array_record", data)
    counting = Counting(b)
    cache = ChunkCache(str(tmp_path / "cache"), cache_size=100 * CHUNK, chunk_size=CHUNK)
    rng = random.Random(1)
    ranges = random_ranges(rng, len(data), 200) + [(CHUNK - 5, 10), (len(data) - 7, 7), (0, len(data))]
    want = [data[s:s + n] for s, n in ranges]
    assert cache.read_ranges(counting, "data/records/f/a.array_record", ranges) == want
    assert counting.gets == 1 and counting.heads == 1  # every missing chunk in one batched fetch
    assert cache.read_ranges(counting, "data/records/f/a.array_record", ranges) == want
    assert counting.gets == 1 and counting.heads == 1
    # Another process (a fresh cache on the same directory) asks only for the object's etag.
    again = ChunkCache(str(tmp_path / "cache"), cache_size=100 * CHUNK, chunk_size=CHUNK)
    assert again.read_ranges(counting, "data/records/f/a.array_record", ranges) == want
    assert counting.gets == 1 and counting.heads == 2


def test_a_changed_object_is_never_served_stale(s3_bucket, tmp_path):
    b = backend_for(s3_bucket + "/ds")
    b.put("obj", b"a" * 1000)
    cache = ChunkCache(str(tmp_path / "c"), cache_size=10 * CHUNK, chunk_size=CHUNK)
    assert cache.read_range(b, "obj", 10, 5) == b"aaaaa"
    b.put("obj", b"b" * 1000)  # spacefs never does this to a data file, but a user might
    fresh = ChunkCache(str(tmp_path / "c"), cache_size=10 * CHUNK, chunk_size=CHUNK)
    assert fresh.read_range(b, "obj", 10, 5) == b"bbbbb"


def test_cache_stays_within_its_size_and_keeps_recent_chunks(tmp_path):
    b = backend_for(str(tmp_path / "ds"))
    data = os.urandom(40 * CHUNK)
    b.put("big", data)
    counting = Counting(b)
    cache = ChunkCache(str(tmp_path / "c"), cache_size=8 * CHUNK, chunk_size=CHUNK)
    for c in range(40):
        assert cache.read_range(counting, "big", c * CHUNK + 7, 100) == data[c * CHUNK + 7:c * CHUNK + 107]
        assert cache._scan_total() <= 8 * CHUNK
    gets = counting.gets
    assert cache.read_range(counting, "big", 39 * CHUNK, 10) == data[39 * CHUNK:39 * CHUNK + 10]
    assert counting.gets == gets  # the newest chunk is still there
    assert cache.read_range(counting, "big", 0, 10) == data[:10]
    assert counting.gets == gets + 1  # the oldest was evicted


def test_processes_share_one_cache_directory(tmp_path):
    b = backend_for(str(tmp_path / "ds"))
    data = os.urandom(30 * CHUNK)
    b.put("obj", data)
    script = textwrap.dedent(f"""
        import random, sys
        from spacefs.engine.chunkcache import ChunkCache
        from spacefs.engine.backend import backend_for
        b = backend_for({str(tmp_path / "ds")!r})
        data = b.read("obj")
        cache = ChunkCache({str(tmp_path / "c")!r}, cache_size={12 * CHUNK}, chunk_size={CHUNK})
        rng = random.Random(int(sys.argv[1]))
        for _ in range(300):
            s = rng.randrange(len(data) - 1)
            n = rng.randint(1, min(200000, len(data) - s))
            assert cache.read_range(b, "obj", s, n) == data[s:s + n]
        print("ok")
    """)
    procs = [subprocess.Popen([PYTHON, "-c", script, str(k)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for k in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok", err
    cache = ChunkCache(str(tmp_path / "c"), cache_size=12 * CHUNK, chunk_size=CHUNK)
    # Each of 4 processes may overshoot by an eighth of the budget before it rescans.
    assert cache._scan_total() <= 12 * CHUNK + 4 * (12 * CHUNK // 8 + CHUNK)
    names = [n for d in os.listdir(cache.dir) for n in os.listdir(os.path.join(cache.dir, d))]
    assert not [n for n in names if ".tmp-" in n]


def test_bad_sizes_and_ranges_are_refused(tmp_path):
    with pytest.raises(UserInputError, match="must hold at least one chunk"):
        ChunkCache(str(tmp_path / "c"), cache_size=10, chunk_size=CHUNK)
    b = backend_for(str(tmp_path / "ds"))
    b.put("obj", b"x" * 100)
    cache = ChunkCache(str(tmp_path / "c"), cache_size=4 * CHUNK, chunk_size=CHUNK)
    with pytest.raises(UserInputError, match=r"range \[90, 110\) lies outside .*obj \(100 bytes\)"):
        cache.read_range(b, "obj", 90, 20)
