"""The pyfuse3 ``Operations``: a thin adapter from FUSE requests to the ``Tree``.

Owns what FUSE needs and the tree does not: inode numbers and their lookup counts, open
file and directory handles, errno mapping, cache lifetimes and read-ahead.

Concurrency model: pyfuse3 runs each request in its own trio task. A handler first asks
the tree from memory (``io=False``); on ``NeedsIO`` it asks again in a worker thread
under a ``CapacityLimiter``, so one slow disk read never stalls other requests and the
common cached case costs no thread hop. Snapshot contents never change, so their
entries, attributes and pages are cached by the kernel for a long time (``keep_cache``);
refs (tags, branches, ``current``) get short timeouts and are invalidated actively.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyfuse3
import trio

from spacefs.engine.errors import NotFoundError, SpaceError

from .tree import DIR, LINK, Attr, Invalidation, NeedsIO, Node, Tree

log = logging.getLogger("spacefs.mount")

IMMUTABLE_TIMEOUT = 86400.0
MUTABLE_TIMEOUT = 1.0
READ_WINDOW_MIN = 256 << 10
READ_WINDOW_MAX = 8 << 20
READDIR_BATCH = 512
SMALL_FILE = 64 << 10  # read whole at open() when it needs no disk access


class Notifier(Protocol):
    """Tells the kernel to forget cached entries and attributes (blocking calls)."""

    def invalidate_entry(self, parent_ino: int, name: bytes) -> None: ...

    def invalidate_inode(self, ino: int) -> None: ...


class KernelNotifier:
    """The real notifier. Called from a worker thread, as the pyfuse3 docs require:
    ``invalidate_entry`` blocks until related requests finish, which needs the loop."""

    def invalidate_entry(self, parent_ino: int, name: bytes) -> None:
        try:
            pyfuse3.invalidate_entry(parent_ino, name)
        except OSError as e:  # the kernel never looked it up, or already forgot it
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                log.warning("invalidate_entry(%d, %r): %s", parent_ino, name, e)

    def invalidate_inode(self, ino: int) -> None:
        try:
            pyfuse3.invalidate_inode(ino)
        except OSError as e:
            if e.errno != errno.ENOENT:
                log.warning("invalidate_inode(%d): %s", ino, e)


class InodeTable:
    """Node <-> inode number, with the kernel's lookup counts (freed on ``forget``)."""

    def __init__(self, root: Node):
        self.root = root
        self._ino: dict[Node, int] = {root: pyfuse3.ROOT_INODE}
        self._node: dict[int, Node] = {pyfuse3.ROOT_INODE: root}
        self._count: dict[int, int] = {}
        self._next = pyfuse3.ROOT_INODE + 1

    def node(self, ino: int) -> Node:
        try:
            return self._node[ino]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "stale inode", str(ino)) from None

    def get(self, node: Node) -> int | None:
        return self._ino.get(node)

    def ino(self, node: Node) -> int:
        ino = self._ino.get(node)
        if ino is None:
            ino = self._next
            self._next += 1
            self._ino[node] = ino
            self._node[ino] = node
        return ino

    def remember(self, node: Node) -> int:
        """An inode for ``node`` whose lookup count the kernel now holds one more of."""
        ino = self.ino(node)
        self._count[ino] = self._count.get(ino, 0) + 1
        return ino

    def release_unused(self, ino: int) -> None:
        if ino != pyfuse3.ROOT_INODE and not self._count.get(ino):
            self._count.pop(ino, None)
            node = self._node.pop(ino, None)
            if node is not None:
                self._ino.pop(node, None)

    def forget(self, ino: int, n: int) -> None:
        left = self._count.get(ino, 0) - n
        if left > 0:
            self._count[ino] = left
        else:
            self._count.pop(ino, None)
            self.release_unused(ino)

    def __len__(self) -> int:
        return len(self._node)


@dataclass
class _File:
    node: Node
    size: int
    data: bytes | None = None  # whole content, when it lives in memory
    buf_start: int = 0
    buf: bytes = b""
    next_off: int = 0
    window: int = READ_WINDOW_MIN
    pending: dict[tuple[int, int], trio.Event] = field(default_factory=dict)


def _errors(fn: Callable) -> Callable:
    """Map exceptions to FUSE errors: OSErrors keep their errno, missing datasets and
    versions are ENOENT, anything else is logged and EIO."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except NotFoundError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except (SpaceError, Exception) as e:
            log.exception("%s failed: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _erofs(fn: Callable) -> Callable:
    @functools.wraps(fn)
    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    return refuse


class FuseOps(pyfuse3.Operations):
    """pyfuse3 handlers over a ``Tree``; collaborators come in through the constructor."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, tree: Tree, notifier: Notifier | None = None, threads: int = 16,
                 uid: int | None = None, gid: int | None = None):
        super().__init__()
        self.tree = tree
        self.notifier = notifier
        self.inodes = InodeTable(tree.root)
        self.limiter = trio.CapacityLimiter(threads)
        self._notify_limiter = trio.CapacityLimiter(1)
        self.uid = os.geteuid() if uid is None else uid
        self.gid = os.getegid() if gid is None else gid
        self._files: dict[int, _File] = {}
        self._dirs: dict[int, tuple[Node, Sequence[tuple[str, Node]]]] = {}
        self._next_fh = 1

    # -- plumbing --------------------------------------------------------------
    async def _ask(self, fn: Callable, *args: Any) -> Any:
        """``fn(*args, io=False)`` on the loop; on a cache miss, in a worker thread."""
        try:
            return fn(*args, io=False)
        except NeedsIO:
            return await trio.to_thread.run_sync(functools.partial(fn, *args, io=True), limiter=self.limiter)

    def _entry(self, ino: int, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        timeout = IMMUTABLE_TIMEOUT if a.immutable else MUTABLE_TIMEOUT
        e.entry_timeout = timeout
        e.attr_timeout = timeout
        if a.kind == DIR:
            e.st_mode = stat.S_IFDIR | 0o555
        elif a.kind == LINK:
            e.st_mode = stat.S_IFLNK | 0o777
        else:
            e.st_mode = stat.S_IFREG | 0o444
        e.st_nlink = 1
        e.st_uid = self.uid
        e.st_gid = self.gid
        e.st_rdev = 0
        e.st_size = a.size
        e.st_blksize = 128 * 1024
        e.st_blocks = (a.size + 511) // 512
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = a.mtime_ns
        return e

    def _fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    # -- lookups and attributes ------------------------------------------------
    @_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        parent = self.inodes.node(parent_inode)
        child = await self._ask(self.tree.lookup, parent, os.fsdecode(name))
        a = await self._ask(self.tree.attrs, child)
        return self._entry(self.inodes.remember(child), a)

    @_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        node = self.inodes.node(inode)
        return self._entry(inode, await self._ask(self.tree.attrs, node))

    @_errors
    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        return os.fsencode(await self._ask(self.tree.readlink, self.inodes.node(inode)))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            self.inodes.forget(ino, n)

    # -- directories -----------------------------------------------------------
    @_errors
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        node = self.inodes.node(inode)
        if self.tree.kind_of(node) != DIR:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory")
        children = await self._ask(self.tree.children, node)
        fh = self._fh()
        self._dirs[fh] = (node, children)  # a stable listing for this handle
        return fh

    @_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        _, children = self._dirs[fh]
        i = start_id
        n = len(children)
        while i < n:
            batch = children[i : i + READDIR_BATCH]
            try:
                attrs = [self.tree.attrs(c, io=False) for _, c in batch]
            except NeedsIO:
                attrs = await trio.to_thread.run_sync(
                    lambda b=batch: [self.tree.attrs(c, io=True) for _, c in b], limiter=self.limiter)
            for (name, child), a in zip(batch, attrs, strict=True):
                ino = self.inodes.ino(child)
                if not pyfuse3.readdir_reply(token, os.fsencode(name), self._entry(ino, a), i + 1):
                    self.inodes.release_unused(ino)
                    return
                self.inodes.remember(child)
                i += 1

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files -----------------------------------------------------------------
    @_errors
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self.inodes.node(inode)
        kind = self.tree.kind_of(node)
        if kind == DIR:
            raise pyfuse3.FUSEError(errno.EISDIR)
        a = await self._ask(self.tree.attrs, node)
        f = _File(node, a.size)
        if a.size <= SMALL_FILE:
            try:  # in memory (index values, schema.json) or in the page cache
                f.data = self.tree.read(node, 0, a.size, io=False)
            except NeedsIO:
                pass
        fh = self._fh()
        self._files[fh] = f
        # Snapshot files never change: keep their pages across opens.
        return pyfuse3.FileInfo(fh=fh, keep_cache=a.immutable, direct_io=False)

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        f = self._files[fh]
        if off >= f.size or size <= 0:
            return b""
        size = min(size, f.size - off)
        if f.data is not None:
            return f.data[off : off + size]
        while True:
            got = self._buffered(f, off, size)
            if got is not None:
                return got
            waiting = next((ev for (s, e), ev in f.pending.items() if s <= off and off + size <= e), None)
            if waiting is None:
                break
            await waiting.wait()
        try:  # straight from the page cache, on the loop (RWF_NOWAIT: never waits for the disk)
            data = self.tree.read(f.node, off, size, io=False)
            f.next_off = off + len(data)
            return data
        except NeedsIO:
            pass
        # Sequential readers get a growing read-ahead window, amortising the thread hop.
        f.window = min(f.window * 2, READ_WINDOW_MAX) if off == f.next_off and off else READ_WINDOW_MIN
        end = min(f.size, off + max(size, f.window))
        ev = trio.Event()
        f.pending[(off, end)] = ev
        try:
            data = await trio.to_thread.run_sync(self.tree.read, f.node, off, end - off, limiter=self.limiter)
        finally:
            f.pending.pop((off, end), None)
            ev.set()
        f.buf_start, f.buf = off, data
        f.next_off = off + len(data)
        return data[:size]

    @staticmethod
    def _buffered(f: _File, off: int, size: int) -> bytes | None:
        rel = off - f.buf_start
        if 0 <= rel and rel + size <= len(f.buf):
            if off + size == f.buf_start + len(f.buf):
                f.next_off = off + size
            return f.buf[rel : rel + size]
        return None

    async def release(self, fh: int) -> None:
        self._files.pop(fh, None)

    # ENOSYS makes the kernel stop sending these at all: a close then costs no round
    # trip for flush, and xattr probes (ls -l, cp -a) none for getxattr.
    async def flush(self, fh: int) -> None:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def listxattr(self, inode: int, ctx: Any = None) -> Sequence[bytes]:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.inodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # -- everything that writes: read-only filesystem ----------------------------
    @_erofs
    async def setattr(self, *a: Any, **k: Any) -> Any: ...
    @_erofs
    async def mknod(self, *a: Any, **k: Any) -> Any: ...
    @_erofs
    async def mkdir(self, *a: Any, **k: Any) -> Any: ...
    @_erofs
    async def unlink(self, *a: Any, **k: Any) -> Any: ...
    @_erofs
    async def rmdir(self, *a: Any, **k: Any) -> Any: ...
    @_erofs
    async def symlink(self, *a: Any, **k: Any) -> Any: ...
    @_erofs
    async def rename(self, *a: Any, **k: Any) -> Any: ...
    @_erofs
    async def link(self, *a: Any, **k: Any) -> Any: ...
    @_erofs
    async def write(self, *a: Any, **k: Any) -> Any: ...
    @_erofs
    async def create(self, *a: Any, **k: Any) -> Any: ...
    @_erofs
    async def setxattr(self, *a: Any, **k: Any) -> Any: ...
    @_erofs
    async def removexattr(self, *a: Any, **k: Any) -> Any: ...

    # -- liveness --------------------------------------------------------------
    async def invalidate(self, changes: Sequence[Invalidation]) -> int:
        """Make the kernel forget what ``changes`` name, if it ever saw it. Returns how
        many invalidations were sent. Runs the blocking calls in a worker thread."""
        calls: list[tuple[str, int, bytes | None]] = []
        for c in changes:
            ino = self.inodes.get(c.node)
            if ino is None:
                continue
            calls.append(("inode", ino, None) if c.name is None else ("entry", ino, os.fsencode(c.name)))
        if not calls or self.notifier is None:
            return len(calls)
        notifier = self.notifier

        def send() -> None:
            for what, ino, name in calls:
                if what == "entry":
                    notifier.invalidate_entry(ino, name)  # type: ignore[arg-type]
                else:
                    notifier.invalidate_inode(ino)

        await trio.to_thread.run_sync(send, limiter=self._notify_limiter)
        return len(calls)
