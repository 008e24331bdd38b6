"""A live mount follows merges (heads move like any commit) and expiry (versions leave)."""

from __future__ import annotations

import os
import textwrap

from mount_util import PYTHON, make_catalog, mounted, wait_for


def commit_in_subprocess(location: str, code: str) -> None:
    import subprocess

    script = f"from spacefs import Dataset\nfrom mount_util import rows\nds = Dataset.load({location!r})\n" + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}
    subprocess.run([PYTHON, "-c", script], check=True, env=env, timeout=120)


def test_mount_follows_merge_and_expire(tmp_path):
    c, ds = make_catalog(str(tmp_path))
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    with mounted(c.location, mnt):
        pets = os.path.join(mnt, "pets")
        versions = os.path.join(pets, "versions")
        assert sorted(os.listdir(versions), key=int) == ["0", "1"]
        commit_in_subprocess(ds.location, """
            ds.add_branch("dev")
            dev = Dataset.load(ds.location); dev.set_current_branch("dev")
            dev.local().upsert(rows([100]))
            ds.local().upsert(rows([0]))
            ds.merge("dev")
        """)
        wait_for(lambda: os.readlink(os.path.join(pets, "branches", "main")) == "../versions/4", 1.0, "merged head")
        assert os.path.exists(os.path.join(pets, "current", "rows", "100", "image"))
        assert sorted(os.listdir(versions), key=int) == ["0", "1", "2", "3", "4"]
        commit_in_subprocess(ds.location, "ds.expire_snapshots('0s', apply=True)\n")
        # 1 is tagged, 2 is dev's head (and merge base), 4 main's head; 0 and 3 go.
        wait_for(lambda: sorted(os.listdir(versions), key=int) == ["1", "2", "4"], 1.0, "expired versions gone")
        assert not os.path.exists(os.path.join(versions, "3"))
        assert not os.path.exists(os.path.join(versions, "0"))
        assert os.path.exists(os.path.join(versions, "4", "rows", "100", "image"))
        assert os.readlink(os.path.join(pets, "tags", "v1")) == "../versions/1"
