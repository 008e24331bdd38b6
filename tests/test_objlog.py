"""The commit protocol on object storage: real writer processes against moto's S3 server."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import uuid

import pytest

from spacefs.engine.backend import backend_for
from spacefs.engine.errors import AlreadyExistsError, VersionNotFoundError
from spacefs.engine.log import MetadataLog
from spacefs.engine.objlog import HINT, ObjectLog, entry_path, snapshot_path

from conftest import PYTHON, REPO

WRITER = os.path.join(REPO, "tests", "objlog_writer.py")
COMMIT_POINTS = ("commit:before_publish", "commit:after_publish", "commit:after_snapshot_link")


def doc0() -> dict:
    # Real entries carry their time and fresh file names, so two writers never build equal bytes.
    snap = {"id": 0, "time": uuid.uuid4().hex, "parent": None, "branch": "main", "op": "create", "manifests": [], "delta": None, "deleted": None}
    return {"seq": 0, "op": "create", "last_snapshot_id": 0, "branches": {"main": 0}, "tags": {}, "settings": {},
            "snapshot": snap}


def next_doc(head, writer="t", i=0) -> dict:
    from objlog_writer import next_doc as make

    return make(head, writer, i)


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "ds")
    return request.getfixturevalue("s3_bucket") + "/ds"


@pytest.fixture
def s3_location(s3_bucket) -> str:
    return s3_bucket + "/ds"


def new_log(location: str) -> ObjectLog:
    log = ObjectLog(backend_for(location))
    log.init(doc0())
    return log


def check_log(location: str) -> int:
    """Every entry from 0 to the head is complete, consecutive and chained; returns the head."""
    log = ObjectLog(backend_for(location))
    head = log.latest()
    for seq in range(head.seq + 1):
        e = log.entry(seq)
        assert e.doc["seq"] == seq and e.last_snapshot_id == seq
        assert e.doc["snapshot"]["parent"] == (seq - 1 if seq else None)
        assert log.snapshot_entry(seq).seq == seq  # repairs a pointer a crash skipped
    return head.seq


def run_writer(location: str, writer: str, n: int, **env) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, WRITER, location, writer, str(n)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def test_publish_read_and_refuse(location):
    log = new_log(location)
    with pytest.raises(AlreadyExistsError, match="already exists"):
        ObjectLog(backend_for(location)).init(doc0())
    for i in range(3):
        assert log.try_publish(next_doc(log.latest(), i=i))
    assert log.head_seq() == 3 and log.latest().branches == {"main": 3}
    stale = next_doc(log.entry(1), i=9)  # built on an old head: seq 2 is taken
    assert not log.try_publish(stale)
    assert log.entry(2).doc["snapshot"]["i"] == 1
    with pytest.raises(VersionNotFoundError, match="log entry 7 does not exist"):
        log.entry(7)
    with pytest.raises(VersionNotFoundError, match="snapshot 8 does not exist"):
        log.snapshot_entry(8)


def test_hint_is_only_a_hint(location):
    log = new_log(location)
    for i in range(4):
        log.try_publish(next_doc(log.latest(), i=i))
    b = backend_for(location)
    for hint in (b"1", b"0", b"99", b"garbage", None):
        if hint is None:
            b.delete([HINT])
        else:
            b.put(HINT, hint)
        assert ObjectLog(b).head_seq() == 4, hint
    with pytest.raises(VersionNotFoundError, match="not a dataset"):
        ObjectLog(backend_for(location + "-empty")).head_seq()


def test_a_lost_answer_to_our_own_put_counts_as_landed(s3_location):
    log = new_log(s3_location)
    doc = next_doc(log.latest())
    assert log.try_publish(doc)
    # The library retried a PUT that had landed: the retry is refused, the bytes are ours.
    assert ObjectLog(backend_for(s3_location)).try_publish(doc)
    assert not log.try_publish({**doc, "op": "other"})
    assert log.head_seq() == 1


def test_skipped_snapshot_pointer_is_repaired(location):
    log = new_log(location)
    log.try_publish(next_doc(log.latest()))
    b = backend_for(location)
    b.delete([snapshot_path(1)])
    assert log.snapshot_entry(1).seq == 1
    assert b.read(snapshot_path(1)) == b.read(entry_path(1))


def test_same_layout_as_a_directory(tmp_path, s3_location):
    """A log written on disk reads the same from a bucket after a plain object-for-object copy."""
    local = str(tmp_path / "ds")
    log = new_log(local)
    for i in range(3):
        log.try_publish(next_doc(log.latest(), i=i))
    assert MetadataLog(local).latest().doc == log.latest().doc  # the link-based reader agrees
    src, dst = backend_for(local), backend_for(s3_location)
    for rel in src.list_paths(""):
        dst.put(rel, src.read(rel))
    assert ObjectLog(dst).latest().doc == log.latest().doc
    assert check_log(s3_location) == 3
    # ...and back: a bucket copied to disk is a dataset the disk reader accepts.
    back = str(tmp_path / "back")
    for rel in dst.list_paths(""):
        backend_for(back).put(rel, dst.read(rel))
    assert MetadataLog(back).latest().doc == log.latest().doc


@pytest.mark.parametrize("writers,per_writer", [(4, 12)])
def test_concurrent_writer_processes_never_lose_a_commit(location, writers, per_writer):
    new_log(location)
    procs = [run_writer(location, f"w{k}", per_writer) for k in range(writers)]
    lost = 0
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert len(out.split()) == per_writer
        lost += int(err.split()[-1])
    print(f"{lost} publishes lost to another writer and retried")
    assert check_log(location) == writers * per_writer
    log = ObjectLog(backend_for(location))
    landed = sorted((log.entry(s).doc["snapshot"]["writer"], log.entry(s).doc["snapshot"]["i"])
                    for s in range(1, writers * per_writer + 1))
    assert landed == sorted((f"w{k}", i) for k in range(writers) for i in range(per_writer))


@pytest.mark.parametrize("point", COMMIT_POINTS)
def test_writer_killed_at_each_commit_step_leaves_a_readable_log(s3_location, point):
    log = new_log(s3_location)
    log.try_publish(next_doc(log.latest()))
    p = run_writer(s3_location, "victim", 3, SPACEFS_FAILPOINT=point)
    p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL
    head = check_log(s3_location)
    assert head == (1 if point == "commit:before_publish" else 2)
    p = run_writer(s3_location, "next", 2)  # writers after the crash carry on from the head
    assert p.communicate(timeout=120)[0].split() == [str(head + 1), str(head + 2)]
    assert check_log(s3_location) == head + 2


def test_writer_killed_at_a_random_instant_leaves_a_readable_log(s3_location):
    new_log(s3_location)
    rng = random.Random(7)
    for _ in range(3):
        p = run_writer(s3_location, "victim", 1000)
        for _ in range(rng.randint(1, 6)):  # let it land a few, then kill it mid-flight
            assert p.stdout.readline()
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        check_log(s3_location)
    p = run_writer(s3_location, "after", 3)
    assert p.communicate(timeout=120)[1].startswith("lost") and p.returncode == 0
    check_log(s3_location)


def test_concurrent_writers_on_a_directory_match_the_link_log(tmp_path):
    """ObjectLog on a LocalBackend is MetadataLog: both see the same consecutive entries."""
    location = str(tmp_path / "ds")
    new_log(location)
    procs = [run_writer(location, f"w{k}", 5) for k in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    assert MetadataLog(location).head_seq() == check_log(location) == 10
    shutil.rmtree(location)
