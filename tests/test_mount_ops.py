"""Tier 2: the pyfuse3 Operations awaited directly (no kernel, no mount)."""

from __future__ import annotations

import errno
import os
import stat
import threading

import pyarrow as pa
import pyfuse3
import pytest
import trio
from mount_util import image_bytes, make_catalog, rows

from spacefs import Dataset
from spacefs.mount import fuse_ops
from spacefs.mount.fuse_ops import IMMUTABLE_TIMEOUT, MUTABLE_TIMEOUT, FuseOps
from spacefs.mount.tree import NeedsIO, Tree


class RecordingNotifier:
    def __init__(self):
        self.entries, self.inodes = [], []

    def invalidate_entry(self, parent_ino, name):
        self.entries.append((parent_ino, name))

    def invalidate_inode(self, ino):
        self.inodes.append(ino)


@pytest.fixture
def ds(tmp_path):
    return make_catalog(str(tmp_path))[1]


@pytest.fixture
def ops(ds):
    return FuseOps(Tree(ds.location), RecordingNotifier())


@pytest.fixture
def hops(monkeypatch):
    """Counts trips to worker threads."""
    count = [0]
    real = trio.to_thread.run_sync

    async def counting(*a, **k):
        count[0] += 1
        return await real(*a, **k)

    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    return count


@pytest.fixture
def listing(monkeypatch):
    """Replaces pyfuse3.readdir_reply (which needs a kernel request) by a recorder
    that accepts ``limit[0]`` entries per call."""
    got: list[tuple[str, int, int]] = []
    limit = [10**9]

    def reply(token, name, attr, next_id):
        if token["n"] >= limit[0]:
            return False
        token["n"] += 1
        got.append((name.decode(), attr.st_ino, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    return got, limit


async def walk(ops: FuseOps, path: str) -> pyfuse3.EntryAttributes:
    ino = pyfuse3.ROOT_INODE
    attr = await ops.getattr(ino)
    for part in [p for p in path.split("/") if p]:
        attr = await ops.lookup(ino, part.encode())
        ino = attr.st_ino
    return attr


async def cat(ops: FuseOps, path: str, chunk: int = 128 * 1024) -> bytes:
    a = await walk(ops, path)
    fi = await ops.open(a.st_ino, os.O_RDONLY)
    out = bytearray()
    while True:
        b = await ops.read(fi.fh, len(out), chunk)
        if not b:
            break
        out += b
    await ops.release(fi.fh)
    return bytes(out)


async def ls(ops: FuseOps, path: str) -> list[str]:
    a = await walk(ops, path)
    fh = await ops.opendir(a.st_ino)
    got: list[tuple[str, int, int]] = []
    saved = pyfuse3.readdir_reply

    def reply(token, name, attr, next_id):
        got.append((name.decode(), attr.st_ino, next_id))
        return True

    pyfuse3.readdir_reply = reply
    try:
        await ops.readdir(fh, 0, None)
    finally:
        pyfuse3.readdir_reply = saved
    await ops.releasedir(fh)
    return [n for n, _, _ in got]


def test_lookup_getattr_and_cache_lifetimes(ops):
    async def main():
        root = await ops.getattr(pyfuse3.ROOT_INODE)
        assert stat.S_ISDIR(root.st_mode) and root.st_uid == os.geteuid()
        img = await walk(ops, "versions/1/rows/4/image")
        assert stat.S_ISREG(img.st_mode) and img.st_mode & 0o777 == 0o444
        assert img.st_size == len(image_bytes(4))
        assert img.entry_timeout == img.attr_timeout == IMMUTABLE_TIMEOUT
        tag = await walk(ops, "tags/v1")
        assert stat.S_ISLNK(tag.st_mode) and tag.entry_timeout == MUTABLE_TIMEOUT
        assert await ops.readlink(tag.st_ino) == b"../versions/1"
        again = await walk(ops, "versions/1/rows/4/image")
        assert again.st_ino == img.st_ino

    trio.run(main)


def test_cache_hits_take_no_thread_hop(ops, hops):
    async def main():
        await walk(ops, "versions/1/rows/4/label")
        first = hops[0]
        assert first >= 1  # the snapshot's key index was built in a thread
        for i in range(30):
            await walk(ops, f"versions/1/rows/{i}/image")
            assert await cat(ops, f"versions/1/rows/{i}/label") in (b"cat", b"dog", b"bird")
        assert hops[0] == first

    trio.run(main)


def test_readdir_resumes_and_counts_lookups(ops, listing):
    got, limit = listing

    async def main():
        a = await walk(ops, "versions/1/rows")
        fh = await ops.opendir(a.st_ino)
        limit[0] = 7
        start = 0
        while True:
            token = {"n": 0}
            await ops.readdir(fh, start, token)
            if token["n"] == 0:
                break
            start = got[-1][2]
        await ops.releasedir(fh)
        assert sorted(int(n) for n, _, _ in got) == list(range(30))
        n_inodes = len(ops.inodes)
        await ops.forget([(ino, 1) for _, ino, _ in got])
        assert len(ops.inodes) == n_inodes - 30

    trio.run(main)


def test_reads_match_the_records(tmp_path, hops):
    schema = pa.schema([("id", pa.int64()), ("blob", pa.binary())])
    ds = Dataset.create(str(tmp_path / "big"), schema, ["id"], ["blob"])
    big = os.urandom(5 * 1024 * 1024 + 777)
    ds.local().append({"id": [1, 2], "blob": [b"tiny", big]})
    ops = FuseOps(Tree(ds.location))

    async def main():
        assert await cat(ops, "versions/1/rows/1/blob") == b"tiny"
        before = hops[0]
        assert await cat(ops, "versions/1/rows/2/blob") == big
        requests = len(big) // (128 * 1024) + 1
        assert hops[0] - before < requests // 4  # read-ahead: far fewer thread trips than requests
        a = await walk(ops, "versions/1/rows/2/blob")
        fi = await ops.open(a.st_ino, os.O_RDONLY)
        for off, n in [(3_000_000, 4096), (17, 100), (len(big) - 10, 4096), (len(big) + 5, 10)]:
            assert await ops.read(fi.fh, off, n) == big[off : off + n]
        await ops.release(fi.fh)

    trio.run(main)


def test_a_slow_read_does_not_stall_other_requests(ops, monkeypatch):
    gate = threading.Event()
    real_read = ops.tree.read

    def slow_read(node, off, size, io=True, gather=False):
        if not io:
            raise NeedsIO  # as if the page cache were cold
        gate.wait(10)
        return real_read(node, off, size, io=io)

    monkeypatch.setattr(ops.tree, "read", slow_read)

    async def main():
        a = await walk(ops, "versions/1/rows/3/image")
        fi = await ops.open(a.st_ino, os.O_RDONLY)
        done = []

        async def reader():
            done.append(await ops.read(fi.fh, 0, 4096))

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            await trio.sleep(0)
            # While the read waits on "disk", lookups and getattrs are still served.
            assert (await walk(ops, "versions/1/rows/5/label")).st_size == 4
            assert not done
            gate.set()
        assert done == [image_bytes(3)]

    trio.run(main)


@pytest.mark.parametrize("call", [
    ("setattr", (1, None, None, None, None)), ("mknod", (1, b"x", 0o644, 0, None)),
    ("mkdir", (1, b"x", 0o755, None)), ("unlink", (1, b"current", None)), ("rmdir", (1, b"versions", None)),
    ("symlink", (1, b"x", b"y", None)), ("rename", (1, b"tags", 1, b"t2", 0, None)),
    ("link", (2, 1, b"x", None)), ("write", (1, 0, b"data")), ("create", (1, b"x", 0o644, os.O_WRONLY, None)),
    ("setxattr", (1, b"user.x", b"1", None)), ("removexattr", (1, b"user.x", None)),
])
def test_every_write_is_erofs(ops, call):
    name, args = call

    async def main():
        with pytest.raises(pyfuse3.FUSEError) as e:
            await getattr(ops, name)(*args)
        assert e.value.errno == errno.EROFS

    trio.run(main)


def test_open_for_writing_is_erofs(ops):
    async def main():
        a = await walk(ops, "versions/1/rows/3/image")
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND):
            with pytest.raises(pyfuse3.FUSEError) as e:
                await ops.open(a.st_ino, flags)
            assert e.value.errno == errno.EROFS

    trio.run(main)


def test_errno_mapping(ops, monkeypatch):
    async def expect(code, coro):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await coro
        assert e.value.errno == code

    async def main():
        await expect(errno.ENOENT, ops.lookup(pyfuse3.ROOT_INODE, b"nope"))
        await expect(errno.ENOENT, walk(ops, "versions/1/rows/99"))
        await expect(errno.ENOENT, ops.getattr(123456))
        f = await walk(ops, "versions/1/schema.json")
        await expect(errno.ENOTDIR, ops.opendir(f.st_ino))
        await expect(errno.ENOTDIR, ops.lookup(f.st_ino, b"x"))
        await expect(errno.EINVAL, ops.readlink(f.st_ino))
        d = await walk(ops, "versions/1")
        await expect(errno.EISDIR, ops.open(d.st_ino, os.O_RDONLY))
        await expect(errno.ENOSYS, ops.getxattr(d.st_ino, b"user.x"))  # no xattrs: the kernel stops asking

        def broken(*a, **k):
            raise RuntimeError("a bug")

        monkeypatch.setattr(ops.tree, "attrs", broken)
        await expect(errno.EIO, ops.getattr(d.st_ino))

    trio.run(main)


def test_commits_invalidate_only_what_the_kernel_saw(ds, ops):
    notifier = ops.notifier

    async def main():
        await walk(ops, "branches/main")
        await walk(ops, "versions")
        ds.local().append(rows(range(40, 42)))
        sent = await ops.invalidate(ops.tree.poll())
        branches = ops.inodes.get(ops.tree.lookup(ops.tree.root, "branches"))
        assert (branches, b"main") in notifier.entries
        assert sent == len(notifier.entries) + len(notifier.inodes)
        # tags/ was never looked up: nothing about it reaches the kernel
        notifier.entries.clear()
        ds.add_tag("v2")
        await ops.invalidate(ops.tree.poll())
        assert all(name != b"v2" for _, name in notifier.entries)
        assert (await walk(ops, "branches/main")).st_size == len("../versions/2")

    trio.run(main)


def test_statfs_and_listing(ops, hops):
    async def main():
        s = await ops.statfs()
        assert s.f_namemax == 255
        assert await ls(ops, "") == ["versions", "tags", "branches", "current"]
        assert sorted(await ls(ops, "versions/1/files")) == ["bird", "cat", "dog"]

    trio.run(main)


def test_kernel_notifier_tolerates_unknown_entries(monkeypatch):
    calls = []

    def raising(*a):
        calls.append(a)
        raise OSError(errno.ENOENT, "not cached")

    monkeypatch.setattr(pyfuse3, "invalidate_entry", raising)
    monkeypatch.setattr(pyfuse3, "invalidate_inode", raising)
    n = fuse_ops.KernelNotifier()
    n.invalidate_entry(5, b"x")
    n.invalidate_inode(5)
    assert len(calls) == 2


def test_sequential_reads_fetch_ahead(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("blob", pa.binary())])
    ds = Dataset.create(str(tmp_path / "big"), schema, ["id"], ["blob"])
    big = os.urandom(6 * fuse_ops.CHUNK + 99)
    ds.local().append({"id": [1], "blob": [big]})
    ops = FuseOps(Tree(ds.location))

    def never_cached(node, off, size, io=True, gather=False, real=ops.tree.read):
        if not io:
            raise NeedsIO  # force the worker-thread path, as after a cold start
        return real(node, off, size, io=True)

    ops.tree.read = never_cached

    async def main():
        async with trio.open_nursery() as n:
            ops.nursery = n
            a = await walk(ops, "versions/1/rows/1/blob")
            fi = await ops.open(a.st_ino, os.O_RDONLY)
            out = bytearray()
            while chunk := await ops.read(fi.fh, len(out), 128 * 1024):
                out += chunk
                await trio.sleep(0)
            assert bytes(out) == big
            f = ops._files[fi.fh]
            assert f.last_chunk == 6
            await ops.release(fi.fh)

    trio.run(main)


def test_inodes_are_trimmed_once_idle_or_far_past_the_bound(ops):
    async def main():
        for i in range(12):
            await walk(ops, f"versions/1/rows/{i}/image")
        n = ops.inodes.looked_up()
        assert n > 12
        # busy (a request just now) and within twice the bound: later
        assert await ops.trim_inodes(keep=n // 2 + 1, idle=60) == 0
        assert ops.notifier.entries == []
        # busy but past twice the bound: at once
        assert await ops.trim_inodes(keep=n // 3, idle=60) == n - n // 3
        assert len(ops.notifier.entries) == n - n // 3
        # idle: down to the bound
        await walk(ops, "versions/1/rows/20/image")
        ops.last_request -= 61
        left = ops.inodes.looked_up()
        assert await ops.trim_inodes(keep=2, idle=60) == left - 2
        assert ops.inodes.looked_up() == 2

    trio.run(main)
