"""The pyfuse3 ``Operations``: a thin adapter from FUSE requests to the ``Tree``.

Owns what FUSE needs and the tree does not: inode numbers and their lookup counts, open
file and directory handles, errno mapping, cache lifetimes and read-ahead. Reads are
sized to the access pattern: a read that continues an earlier one on its open file gets
aligned 1 MiB chunks fetched ahead; any other read gets exactly the bytes it asked for,
so random 4 KiB reads of a large record read about 4 KiB each from disk.

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
from collections import OrderedDict, deque
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
CHUNK = 1 << 20  # sequential readers' disk reads fetch aligned chunks of this size
CHUNKS_KEPT = 6  # per open file: the chunks being read plus those fetched ahead
PREFETCH = 2  # chunks fetched ahead of a sequential reader
ENDS_KEPT = 8  # per open file: ends of the latest reads, to tell a sequential reader
READDIR_BATCH = 512
SMALL_FILE = 64 << 10  # read whole at open() when it needs no disk access
# The kernel keeps an entry it looked up (and so our inode for it) until memory pressure
# evicts it: with snapshot entries cached for a day, a mount walking new versions would
# hold ever more. Past this many, the daemon asks the kernel to drop the entries looked
# up longest ago (they come back on the next lookup); the kernel then forgets the inodes,
# and with them their cached pages. So the bound must hold a training set's working set:
# 10,000 small records are 20,000 inodes (row directories and files), and past the bound
# every epoch rereads them through the daemon. An inode costs the daemon ~0.7 KB.
INODES_KEPT = int(os.environ.get("SPACEFS_INODES_KEPT", "65536"))
# Trimming is work for the kernel and the daemon both: an invalidated directory takes its
# looked-up children with it (after ``ls`` of 100,000 rows, ~100,000 ``forget``s), and the
# notifying thread contends for the GIL with the loop. Run right after a big listing, it
# slowed the next workload (a 256 MiB read) ~3x. So the daemon trims once no request came
# for ``TRIM_IDLE`` seconds, or at once past twice the bound.
TRIM_IDLE = 0.5
# The patched pyfuse3 (patches/README.md) sends a list returned by read() in one gather
# write: page-cached records are then answered from maps of their files, copied once.
GATHER = hasattr(pyfuse3, "READ_GATHER_MAX")
# Read-ahead and DataLoader workers keep several reads in flight: the kernel's default
# of 12 outstanding background requests would queue them behind each other.
MAX_BACKGROUND = 64
# Whether pyfuse3 carries the project's patch (patches/): the kernel caches symlink
# targets and takes ``max_background`` from ``FuseOps``.
KERNEL_CAPS = hasattr(pyfuse3.Operations, "enable_symlink_caching")
# Whether it can serve zero-message opens (``read`` gets the inode when there is no handle).
ZERO_MESSAGE_OPEN = hasattr(pyfuse3.Operations, "enable_zero_message_open")
FILES_KEPT = 64  # zero-message opens: read state kept for this many files (no release comes)


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
    """Node <-> inode number, with the kernel's lookup counts (freed on ``forget``) and,
    oldest lookup first, the entry (parent inode, name) each was last looked up by: what
    to invalidate to make the kernel forget it (``over``)."""

    def __init__(self, root: Node):
        self.root = root
        self._ino: dict[Node, int] = {root: pyfuse3.ROOT_INODE}
        self._node: dict[int, Node] = {pyfuse3.ROOT_INODE: root}
        self._count: dict[int, int] = {}
        self._entries: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self._next = pyfuse3.ROOT_INODE + 1

    def node(self, ino: int) -> Node:
        try:
            return self._node[ino]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "stale inode", str(ino)) from None

    def get(self, node: Node) -> int | None:
        return self._ino.get(node)

    def get_node(self, ino: int) -> Node | None:
        return self._node.get(ino)

    def ino(self, node: Node) -> int:
        ino = self._ino.get(node)
        if ino is None:
            ino = self._next
            self._next += 1
            self._ino[node] = ino
            self._node[ino] = node
        return ino

    def remember(self, node: Node, parent: int | None = None, name: bytes | None = None) -> int:
        """An inode for ``node`` whose lookup count the kernel now holds one more of,
        looked up as ``name`` in directory inode ``parent``."""
        ino = self.ino(node)
        self._count[ino] = self._count.get(ino, 0) + 1
        if parent is not None and name is not None:
            self._entries[ino] = (parent, name)
            self._entries.move_to_end(ino)
        return ino

    def over(self, keep: int) -> list[tuple[int, bytes]]:
        """The entries looked up longest ago beyond the newest ``keep``, handed out once
        (the kernel forgets their inodes once it dropped them)."""
        out = []
        while len(self._entries) > keep:
            out.append(self._entries.popitem(last=False)[1])
        return out

    def looked_up(self) -> int:
        """How many entries the kernel may hold (looked up and not yet handed out by ``over``)."""
        return len(self._entries)

    def release_unused(self, ino: int) -> None:
        if ino != pyfuse3.ROOT_INODE and not self._count.get(ino):
            self._count.pop(ino, None)
            self._entries.pop(ino, None)
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
    chunks: OrderedDict[int, memoryview] = field(default_factory=OrderedDict)
    pending: dict[int, trio.Event] = field(default_factory=dict)
    last_chunk: int = -1
    ends: deque[int] = field(default_factory=lambda: deque([0], maxlen=ENDS_KEPT))
    closed: bool = False

    def sequential(self, off: int, end: int) -> bool:
        """Whether a read at ``off`` continues an earlier one (the kernel's read-ahead
        may have several in flight, so any of the latest ends counts); records ``end``."""
        seq = off in self.ends
        self.ends.append(end)
        return seq


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
    # Read by the patched pyfuse3 only (patches/README.md); ignored by a stock one.
    # Link targets change only with a ref, and the tree then invalidates the link's inode.
    enable_symlink_caching = True
    max_background = MAX_BACKGROUND

    def __init__(self, tree: Tree, notifier: Notifier | None = None, threads: int = 16,
                 uid: int | None = None, gid: int | None = None, zero_message_open: bool = False,
                 gather: bool = False):
        """``zero_message_open`` (needs the patched pyfuse3): every file is immutable, so
        the kernel may open files without asking (``open`` answers ENOSYS once) and keep
        their pages; a warm re-read then costs no request at all. ``read`` then gets the
        inode for a handle, and read state lives per inode (``FILES_KEPT``). ``gather``
        (needs it too): ``read`` may return a list of pieces of mapped record files."""
        super().__init__()
        self.enable_zero_message_open = zero_message_open
        self.gather = gather
        self._by_inode: OrderedDict[int, _File] = OrderedDict()
        self.tree = tree
        self.notifier = notifier
        self.inodes = InodeTable(tree.root)
        self.limiter = trio.CapacityLimiter(threads)
        self._notify_limiter = trio.CapacityLimiter(1)
        self.uid = os.geteuid() if uid is None else uid
        self.gid = os.getegid() if gid is None else gid
        self._files: dict[int, _File] = {}
        # Where read-ahead tasks run; set by the daemon (None: no read-ahead, as in tests).
        self.nursery: trio.Nursery | None = None
        # Run (in the nursery) once the kernel has the INIT reply; set by the daemon.
        self.after_init: Callable[[], Any] | None = None
        self._dirs: dict[int, tuple[Node, Sequence[tuple[str, Node]]]] = {}
        self._next_fh = 1
        self.last_request = -float("inf")  # trio clock of the latest lookup, readdir or read

    def init(self) -> None:
        """pyfuse3 calls this while it handles INIT, before the reply; a task started
        here runs after the reply was written (and the kernel, in that write, applied it)."""
        if self.after_init is not None and self.nursery is not None:
            fn = self.after_init

            async def run() -> None:
                fn()

            self.nursery.start_soon(run)

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
    def _lookup(self, parent: Node, name: str, io: bool) -> tuple[Node, Attr]:
        child = self.tree.lookup(parent, name, io=io)
        return child, self.tree.attrs(child, io=io)

    @_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        self.last_request = trio.current_time()
        parent = self.inodes.node(parent_inode)
        try:  # the hot path of every path walk: no extra coroutine, no thread
            child, a = self._lookup(parent, os.fsdecode(name), False)
        except NeedsIO:
            child, a = await trio.to_thread.run_sync(self._lookup, parent, os.fsdecode(name), True,
                                                     limiter=self.limiter)
        return self._entry(self.inodes.remember(child, parent_inode, name), a)

    @_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        node = self.inodes.node(inode)
        try:
            a = self.tree.attrs(node, io=False)
        except NeedsIO:
            a = await trio.to_thread.run_sync(functools.partial(self.tree.attrs, node, io=True), limiter=self.limiter)
        return self._entry(inode, a)

    @_errors
    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        return os.fsencode(await self._ask(self.tree.readlink, self.inodes.node(inode)))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            self.inodes.forget(ino, n)
            if self.inodes.get_node(ino) is None:
                f = self._by_inode.pop(ino, None)
                if f is not None:
                    f.closed = True

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
        self.last_request = trio.current_time()
        _, children = self._dirs[fh]
        i = start_id
        n = len(children)
        parent_ino = self.inodes.ino(self._dirs[fh][0])
        while i < n:
            batch = children[i : i + READDIR_BATCH]
            try:
                attrs = [self.tree.attrs(c, io=False) for _, c in batch]
            except NeedsIO:
                attrs = await trio.to_thread.run_sync(
                    lambda b=batch: [self.tree.attrs(c, io=True) for _, c in b], limiter=self.limiter)
            prev, entry = None, None
            for (name, child), a in zip(batch, attrs, strict=True):
                ino = self.inodes.ino(child)
                if a is prev:  # readdir_reply copies the attributes: reuse the object
                    entry.st_ino = ino
                else:
                    prev, entry = a, self._entry(ino, a)
                if not pyfuse3.readdir_reply(token, os.fsencode(name), entry, i + 1):
                    self.inodes.release_unused(ino)
                    return
                self.inodes.remember(child, parent_ino, os.fsencode(name))
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
        if self.enable_zero_message_open:
            # Success without a handle: the kernel stops asking, keeps pages (every
            # file is immutable) and sends no release.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        f = await self._new_file(node)
        fh = self._fh()
        self._files[fh] = f
        # Snapshot files never change: keep their pages across opens.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)

    async def _new_file(self, node: Node) -> _File:
        """Read state for an opened file; small in-memory files are read whole now."""
        a = await self._ask(self.tree.attrs, node)
        f = _File(node, a.size)
        try:
            if a.size <= SMALL_FILE and not self.tree.on_disk(node):
                f.data = self.tree.read(node, 0, a.size, io=False)  # index values, schema.json
        except NeedsIO:  # its snapshot view was just evicted: read() will reload it
            pass
        return f

    async def _inode_file(self, ino: int) -> _File:
        """Read state of a file opened without a message, by inode (the latest
        ``FILES_KEPT``; an evicted one is made again on its next read)."""
        f = self._by_inode.get(ino)
        if f is not None:
            self._by_inode.move_to_end(ino)
            return f
        f = await self._new_file(self.inodes.node(ino))
        other = self._by_inode.get(ino)  # a concurrent read may have made one meanwhile
        if other is not None:
            return other
        self._by_inode[ino] = f
        while len(self._by_inode) > FILES_KEPT:
            self._by_inode.popitem(last=False)[1].closed = True
        return f

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes | list[memoryview]:
        self.last_request = trio.current_time()
        f = self._files[fh] if not self.enable_zero_message_open else await self._inode_file(fh)
        if off >= f.size or size <= 0:
            return b""
        size = min(size, f.size - off)
        if f.data is not None:
            return f.data[off : off + size]
        first, last = off // CHUNK, (off + size - 1) // CHUNK
        sequential = f.sequential(off, off + size)
        if any(k not in f.chunks and k not in f.pending for k in range(first, last + 1)):
            # Not (all) fetched ahead: the exact bytes straight from the page cache, on the loop
            # (RWF_NOWAIT). The kernel's own read-ahead already makes a sequential
            # reader's requests large, so there is nothing to gain from whole chunks, and
            # no copy to keep: the buffer is freed with the reply and the next request
            # reuses it while it is still in the CPU cache (keeping 1 MiB chunks cycled
            # several MiB through the cache and cost ~0.1 ms per request).
            try:
                data = self.tree.read(f.node, off, size, io=False, gather=self.gather)
                f.last_chunk = last  # (no read-ahead: the page cache is serving this file)
                return data
            except NeedsIO:
                pass
            if not sequential:
                # A random reader gets what it asked for: a whole chunk per 4 KiB read
                # would read hundreds of times the bytes served.
                return await trio.to_thread.run_sync(self.tree.read, f.node, off, size, limiter=self.limiter)
        self._ahead(f, last)
        parts = [await self._chunk(f, k) for k in range(first, last + 1)]
        data = parts[0] if len(parts) == 1 else memoryview(b"".join(parts))
        rel = off - first * CHUNK
        return data[rel : rel + size]

    def _ahead(self, f: _File, k: int) -> None:
        """A reader moving forward through chunk ``k``: fetch the next chunks in the
        background so disk reads overlap with serving this one."""
        sequential = k in (0, f.last_chunk, f.last_chunk + 1)
        if k != f.last_chunk and sequential and self.nursery is not None:
            for j in range(k + 1, min(k + 1 + PREFETCH, (f.size + CHUNK - 1) // CHUNK)):
                if j not in f.chunks and j not in f.pending:
                    self.nursery.start_soon(self._prefetch, f, j)
        f.last_chunk = k

    async def _prefetch(self, f: _File, k: int) -> None:
        if f.closed or k in f.chunks or k in f.pending:
            return
        start = k * CHUNK
        try:  # already in the page cache? Then the reader is served from there, inline
            # (gathered, this only maps the range and asks ``cachestat``: no copy)
            self.tree.read(f.node, start, min(CHUNK, f.size - start), io=False, gather=self.gather)
            return  # (kept chunks would feed the reader and start more prefetches: a
            # page-cached file would go through worker threads and cycled buffers)
        except NeedsIO:
            pass
        except Exception:  # the reader will ask again and get the error itself
            return
        try:
            await self._chunk(f, k)
        except Exception as e:  # the reader will ask again and get the error itself
            log.debug("prefetch of chunk %d failed: %s", k, e)

    async def _chunk(self, f: _File, k: int) -> memoryview:
        """Aligned chunk ``k`` of an open file, read once in a worker thread however many
        concurrent requests (the kernel's read-ahead) fall into it."""
        while True:
            data = f.chunks.get(k)
            if data is not None:
                f.chunks.move_to_end(k)
                return data
            ev = f.pending.get(k)
            if ev is None:
                break
            await ev.wait()
        ev = f.pending[k] = trio.Event()
        try:
            start = k * CHUNK
            data = memoryview(await trio.to_thread.run_sync(self.tree.read, f.node, start, min(CHUNK, f.size - start),
                                                            limiter=self.limiter))
            f.chunks[k] = data
            while len(f.chunks) > CHUNKS_KEPT:
                f.chunks.popitem(last=False)
        finally:
            del f.pending[k]
            ev.set()
        return data

    async def release(self, fh: int) -> None:
        f = self._files.pop(fh, None)
        if f is not None:
            f.closed = True

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

    async def trim_inodes(self, keep: int = INODES_KEPT, idle: float = TRIM_IDLE) -> int:
        """Bound the inodes the kernel makes us keep: ask it to drop the entries looked
        up longest ago beyond ``keep`` (it sends ``forget`` for their inodes when it has),
        once no request came for ``idle`` seconds or at once past ``2 * keep``.
        Returns how many entries were dropped."""
        if (trio.current_time() - self.last_request < idle
                and self.inodes.looked_up() <= 2 * keep):
            return 0
        old = self.inodes.over(keep)
        if old and self.notifier is not None:
            notifier = self.notifier

            def send() -> None:
                for parent, name in old:
                    notifier.invalidate_entry(parent, name)

            await trio.to_thread.run_sync(send, limiter=self._notify_limiter)
        return len(old)
