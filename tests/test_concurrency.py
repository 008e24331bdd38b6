"""Concurrent writers in real processes and threads never lose a commit."""

from __future__ import annotations

import os
import subprocess
import threading

from conftest import PYTHON, rows

HERE = os.path.dirname(os.path.abspath(__file__))


def _spawn(ds, *args, env=None):
    return subprocess.Popen([PYTHON, os.path.join(HERE, "writer_proc.py"), ds.location, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_all(procs, timeout=180):
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        outs.append(out.split())
    return outs


def test_appends_from_four_processes_all_land(ds):
    n = 12
    outs = _wait_all([_spawn(ds, "append", k * 1000, n) for k in range(4)])
    ids = sorted(int(s) for o in outs for s in o)
    assert ids == list(range(1, 4 * n + 1))  # every commit its own id, no gaps
    got = sorted(ds.local().read_all(fields=["id"]).column("id").to_pylist())
    assert got == sorted(k * 1000 + i for k in range(4) for i in range(n))
    for sid in range(4 * n + 1):  # every snapshot readable, one more row each
        assert ds.local().read_all(version=sid, fields=["id"]).num_rows == sid


def test_conflicting_upserts_keep_keys_unique(ds):
    ds.local().append(rows(range(10)))
    outs = _wait_all([_spawn(ds, "upsert", t, 8, 1, 2, 3) for t in ("a", "b")] + [_spawn(ds, "append", 100, 8)])
    assert all(outs)
    t = ds.local().read_all()
    ids = t.column("id").to_pylist()
    assert sorted(ids) == sorted(list(range(10)) + list(range(100, 108)))
    assert len(set(ids)) == len(ids)
    assert ds.storage.head().last_snapshot_id == 1 + 8 + 8 + 8


def test_tags_from_processes_and_data_commits_interleave(ds):
    ds.local().append(rows([0]))
    _wait_all([_spawn(ds, "tag", "p", 10), _spawn(ds, "tag", "q", 10), _spawn(ds, "append", 50, 10)])
    head = ds.storage.head()
    assert len(head.tags) == 20
    assert head.last_snapshot_id == 11
    assert ds.num_rows() == 11


def test_threads_append_concurrently(ds):
    errors = []

    def work(k):
        try:
            r = ds.local()
            for i in range(10):
                r.append(rows([k * 100 + i]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert ds.num_rows() == 40
    assert ds.storage.head().last_snapshot_id == 40
