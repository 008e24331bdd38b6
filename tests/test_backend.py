"""The storage seam: metadata I/O goes through a ``Backend``.

``LocalBackend`` is checked against the contract directly; the log is then run on an
in-memory backend (a stand-in for an object store with conditional PUTs), which shows
the engine's commit protocol needs nothing but the interface.
"""

from __future__ import annotations

import os
import threading

import pytest

from spacefs.engine import format as fmt
from spacefs.engine.backend import Backend, LocalBackend, backend_for
from spacefs.engine.errors import UserInputError
from spacefs.engine.log import MetadataLog


class MemoryBackend:
    """Objects in a dict; ``put_if_absent`` is a conditional PUT (If-None-Match: *)."""

    def __init__(self, root: str = "mem://ds"):
        self.root = root
        self.objects: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def read_bytes(self, rel):
        try:
            return self.objects[rel]
        except KeyError:
            raise FileNotFoundError(rel) from None

    def put_if_absent(self, rel, data, *, sync=False, before_publish=None):
        if before_publish:
            before_publish()
        with self.lock:
            if rel in self.objects:
                return False
            self.objects[rel] = bytes(data)
            return True

    def put(self, rel, data):
        self.objects[rel] = bytes(data)

    def copy_if_absent(self, src, dst):
        return self.put_if_absent(dst, self.objects[src])

    def exists(self, rel):
        return rel in self.objects

    def list(self, prefix):
        p = prefix.rstrip("/") + "/"
        return sorted({k[len(p):].split("/")[0] for k in self.objects if k.startswith(p)})

    def read_range(self, rel, offset, length):
        return self.read_bytes(rel)[offset : offset + length]

    def local_path(self, rel):
        return None

    def open_record(self, rel):
        raise NotImplementedError


def entry(seq: int, snapshot: int | None = None) -> dict:
    return {"seq": seq, "time": "2026-01-01T00:00:00+00:00", "op": "test", "last_snapshot_id": snapshot or 0,
            "branches": {"main": snapshot or 0}, "tags": {}, "settings": {},
            "snapshot": {"id": snapshot} if snapshot is not None else None}


def test_local_backend_contract(tmp_path):
    b = LocalBackend(str(tmp_path))
    assert isinstance(b, Backend)
    os.makedirs(tmp_path / "metadata" / "log")
    rel = fmt.log_entry(1)
    assert b.put_if_absent(rel, b"one") and not b.put_if_absent(rel, b"two")
    assert b.read_bytes(rel) == b"one" and b.read_range(rel, 1, 5) == b"ne"
    b.put(fmt.LOG_HINT, b"1")
    b.put(fmt.LOG_HINT, b"2")
    assert b.read_bytes(fmt.LOG_HINT) == b"2" and b.exists(rel) and not b.exists(fmt.log_entry(2))
    assert sorted(b.list(fmt.LOG_DIR)) == ["000000000001.json", "LATEST"]  # no staged files left
    with pytest.raises(FileNotFoundError):
        b.read_bytes(fmt.log_entry(9))
    assert b.local_path(rel) == os.path.join(str(tmp_path), rel)
    with b.open_record(rel) as h:
        assert os.pread(h.fd, 3, 0) == b"one"


def test_only_one_writer_wins_a_name(tmp_path):
    b = LocalBackend(str(tmp_path))
    wins = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        if b.put_if_absent("x", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and b.read_bytes("x") == str(wins[0]).encode()


def test_the_log_runs_on_any_backend():
    mem = MemoryBackend()
    log = MetadataLog("mem://ds", backend=mem)
    assert log.try_publish(entry(0, 0))
    assert log.try_publish(entry(1, 1)) and not log.try_publish(entry(1, 1))  # the second writer loses
    assert log.try_publish(entry(2))
    assert log.head_seq() == 2 and log.latest().seq == 2
    assert log.snapshot_entry(1).seq == 1
    del mem.objects[fmt.LOG_HINT]  # the hint is only a hint
    assert log.head_seq() == 2


def test_backend_for_picks_the_backend_of_a_location(tmp_path):
    from spacefs.engine.objstore import S3Backend

    assert isinstance(backend_for(str(tmp_path)), LocalBackend)
    b = backend_for("s3://bucket/ds", {"endpoint": "http://127.0.0.1:9"})
    assert isinstance(b, S3Backend) and isinstance(b, Backend) and b.root == "s3://bucket/ds"
    with pytest.raises(UserInputError, match="gs://bucket/ds"):
        backend_for("gs://bucket/ds")
