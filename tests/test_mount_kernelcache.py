"""What the kernel caches for the mount, counted in the daemon (``SPACEFS_COUNT_OPS``):
symlink targets read once however many path walks go through ``current/``, and a warm
re-read of ``files/`` served from the kernel's caches with no request per file (zero-message
opens, kept pages, day-long entry and attribute timeouts)."""

from __future__ import annotations

import errno
import os

import pyfuse3
import pytest
import trio
from mount_util import image_bytes, make_catalog, mounted, rows, wait_for

from spacefs.mount import client, fuse_ops
from spacefs.mount.fuse_ops import KERNEL_CAPS, ZERO_MESSAGE_OPEN, FuseOps
from spacefs.mount.tree import Tree


@pytest.fixture
def counting(monkeypatch):
    monkeypatch.setenv("SPACEFS_COUNT_OPS", "1")


def ops(mnt: str) -> dict[str, int]:
    with client.connect(mnt) as c:
        return c.ping()["fuse_ops"]


def test_pyfuse3_carries_the_kernel_caps_patch():
    assert KERNEL_CAPS and ZERO_MESSAGE_OPEN, (
        "pyfuse3 was installed without patches/pyfuse3-3.5.0-kernel-caps.patch: run scripts/setup.sh")


def test_symlink_targets_are_read_once(tmp_path, counting):
    _, ds = make_catalog(str(tmp_path), n=60)
    mnt = str(tmp_path / "mnt")
    with mounted(str(tmp_path / "catalog"), mnt):
        pets = os.path.join(mnt, "pets")
        before = ops(mnt).get("readlink", 0)
        for _ in range(3):
            for i in range(60):  # each walks current -> branches/main -> ../versions/<head>
                assert os.stat(os.path.join(pets, "current", "rows", str(i), "image")).st_size > 0
        # Two links on the way, each read once: not once per path walk (180 walks).
        assert ops(mnt).get("readlink", 0) - before <= 2

        # A commit moves main: the cached target must not hide the new version.
        ds.local().append(rows(range(60, 61)))
        wait_for(lambda: os.path.exists(os.path.join(pets, "current", "rows", "60", "image")),
                 what="current/ following the commit")
        assert os.readlink(os.path.join(pets, "branches", "main")) == "../versions/2"


def test_warm_reread_of_files_needs_no_request_per_file(tmp_path, counting):
    make_catalog(str(tmp_path), n=30)
    mnt = str(tmp_path / "mnt")
    with mounted(str(tmp_path / "catalog"), mnt):
        files = os.path.join(mnt, "pets", "versions", "1", "files")

        def epoch() -> dict[str, int]:
            before = ops(mnt)
            n = 0
            for root, _, names in os.walk(files):
                for name in names:
                    with open(os.path.join(root, name), "rb") as f:
                        assert f.read()
                    n += 1
            assert n == 30
            after = ops(mnt)
            return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}

        cold, warm = epoch(), epoch()
        assert cold.get("read", 0) <= 30, cold  # whole small files in one reply
        assert cold.get("open", 0) <= 1, cold  # zero-message opens: the first answers ENOSYS
        # Only the listing (os.walk) reaches the daemon: files cost no request at all.
        assert set(warm) <= {"opendir", "readdir", "releasedir"}, warm


def test_zero_message_opens_read_by_inode_within_a_bound(tmp_path, monkeypatch):
    """Tier 2 (handlers awaited directly): ``open`` answers ENOSYS, reads come by inode,
    read state stays within FILES_KEPT files and goes when the kernel forgets the inode."""
    monkeypatch.setattr(fuse_ops, "FILES_KEPT", 4)
    _, ds = make_catalog(str(tmp_path), n=10)
    ops = FuseOps(Tree(ds.location), zero_message_open=True)

    async def main():
        inos = []
        for i in range(10):
            ino = pyfuse3.ROOT_INODE
            for part in ("versions", "1", "rows", str(i), "image"):
                ino = (await ops.lookup(ino, part.encode())).st_ino
            with pytest.raises(pyfuse3.FUSEError) as e:
                await ops.open(ino, os.O_RDONLY)
            assert e.value.errno == errno.ENOSYS
            assert await ops.read(ino, 0, 1 << 20) == image_bytes(i)
            assert len(ops._by_inode) <= 4
            inos.append(ino)
        assert await ops.read(inos[0], 1, 5) == image_bytes(0)[1:6]  # evicted: made again
        await ops.forget([(inos[0], 1)])
        assert inos[0] not in ops._by_inode
        with pytest.raises(pyfuse3.FUSEError) as e:  # forgotten inode: stale
            await ops.read(inos[0], 0, 10)
        assert e.value.errno == errno.ENOENT

    trio.run(main)
