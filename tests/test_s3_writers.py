"""Writer processes on one dataset in a bucket: none loses a commit, a killed one harms nothing.

Real subprocesses (fresh interpreters: obstore does not survive ``fork``) against moto on
127.0.0.1, through the public API (tests/writer_proc.py), exactly as on disk.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import tempfile

import pytest

from spacefs import Dataset
from spacefs.engine.failpoints import POINTS

from conftest import PYTHON, REPO, SCHEMA, rows

WRITER = os.path.join(REPO, "tests", "writer_proc.py")


def start(location: str, *args: object, **env: str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, WRITER, location, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def new_dataset(s3_bucket: str) -> str:
    uri = s3_bucket + "/ds"
    Dataset.create(uri, SCHEMA, primary_keys=["id"], record_fields=["feature"]).local().append(rows([0]))
    return uri


def check(uri: str) -> int:
    """The dataset reads whole at its head: ids 0..head, each snapshot readable; the head."""
    ds = Dataset.load(uri)
    head = ds.snapshot_id()
    assert ds.versions().column("snapshot_id").to_pylist()[::-1] == list(range(head + 1))
    for sid in range(head + 1):
        t = ds.local().read_all(version=sid)
        assert t.num_rows == ds.num_rows(sid)
        assert t.column("feature").to_pylist() == [f"data{i}".encode() for i in t.column("id").to_pylist()]
    return head


def test_four_writer_processes_never_lose_a_commit(s3_bucket):
    uri = new_dataset(s3_bucket)
    per_writer = 6
    procs = [start(uri, "append", 1000 * (k + 1), per_writer) for k in range(4)]
    sids = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        sids += [int(s) for s in out.split()]
    assert sorted(sids) == list(range(2, 2 + 4 * per_writer))  # consecutive, none twice
    assert check(uri) == 1 + 4 * per_writer
    ids = sorted(Dataset.load(uri).local().read_all(fields=["id"]).column("id").to_pylist())
    assert ids == [0] + sorted(1000 * (k + 1) + i for k in range(4) for i in range(per_writer))


@pytest.mark.parametrize("point", POINTS)
def test_writer_killed_at_each_commit_step_leaves_the_last_snapshot(s3_bucket, point):
    uri = new_dataset(s3_bucket)
    p = start(uri, "append", 100, 3, SPACEFS_FAILPOINT=point)
    p.communicate(timeout=300)
    assert p.returncode == -signal.SIGKILL
    victim = p.pid
    staging = os.path.join(tempfile.gettempdir(), f"spacefs-staging-{os.getuid()}")
    assert [n for n in os.listdir(staging) if n.startswith(f"{victim}-")]  # left by the kill
    head = check(uri)
    landed = point in ("commit:after_publish", "commit:after_snapshot_link")
    assert head == (2 if landed else 1)
    p = start(uri, "append", 200, 2)  # the next writer carries on from the head
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert out.split() == [str(head + 1), str(head + 2)]
    assert check(uri) == head + 2
    # The victim's local staging directory was removed by the next writer that staged files.
    assert not [n for n in os.listdir(staging) if n.startswith(f"{victim}-")]


def test_writer_killed_at_a_random_instant_leaves_the_last_snapshot(s3_bucket):
    uri = new_dataset(s3_bucket)
    rng = random.Random(11)
    base = 100
    for _ in range(2):
        p = start(uri, "append", base, 1000)
        for _ in range(rng.randint(1, 4)):  # let it land a few, then kill it mid-flight
            assert p.stdout.readline()
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        check(uri)
        base += 1000
    head = check(uri)
    p = start(uri, "append", base, 2)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert out.split() == [str(head + 1), str(head + 2)]
