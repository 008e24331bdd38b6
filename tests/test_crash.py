"""A writer killed with SIGKILL at any point leaves every committed snapshot readable."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from spacefs import Dataset
from spacefs.engine.failpoints import POINTS

from conftest import PYTHON, rows

HERE = os.path.dirname(os.path.abspath(__file__))


def _snapshot_contents(ds):
    last = ds.storage.head().last_snapshot_id
    return {sid: ds.local().read_all(version=sid).sort_by("id").to_pydict() for sid in range(last + 1)}


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_commit_point(ds, point):
    ds.local().append(rows(range(5)))
    ds.add_tag("before")
    before = _snapshot_contents(ds)
    env = {**os.environ, "SPACEFS_FAILPOINT": point}
    for op in (["append", 100, 1], ["delete", 2]):
        p = subprocess.run([PYTHON, os.path.join(HERE, "writer_proc.py"), ds.location, *map(str, op)],
                           env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == -signal.SIGKILL, p.stderr
    fresh = Dataset.load(ds.location)
    after = _snapshot_contents(fresh)
    landed = point in ("commit:after_publish", "commit:after_snapshot_link")
    assert {k: after[k] for k in before} == before  # nothing earlier changed
    assert len(after) == len(before) + (2 if landed else 0)
    if landed:
        assert [r for r in after[max(after)]["id"]] == [0, 1, 3, 4, 100]
    # The dataset keeps working, ids stay gapless.
    res = fresh.local().append(rows([7]))
    assert res.snapshot_id == max(after) + 1
    assert fresh.storage.head().tags == {"before": 1}


def test_kill_at_random_instants(ds):
    """Kill a busy writer after varying amounts of progress; check integrity each time."""
    expected_rows = 0
    for round_, lines in enumerate([1, 3, 7, 2, 5]):
        p = subprocess.Popen([PYTHON, os.path.join(HERE, "writer_proc.py"), ds.location, "append", str(round_ * 1000), "1000"],
                             stdout=subprocess.PIPE, text=True)
        for _ in range(lines):
            assert p.stdout.readline()
        p.kill()
        p.wait(timeout=60)
        p.stdout.close()
        fresh = Dataset.load(ds.location)
        last = fresh.storage.head().last_snapshot_id
        assert last >= expected_rows + lines
        for sid in range(last + 1):
            assert fresh.local().read_all(version=sid, fields=["id"]).num_rows == sid
        expected_rows = last
