"""A bounded local cache of byte ranges of remote objects, shared by processes.

Record reads on object storage are small ranges of large immutable files; a GET costs a
round trip (tens of ms on S3) whatever its size up to a few hundred KiB. So reads go
through fixed-size aligned chunks (default 1 MiB) kept as files in a cache directory:

- a chunk file is named by a hash of (location, object path, etag, size, chunk size) and
  its index, so a changed object (new etag) can never be served stale bytes, and data files,
  which spacefs never modifies, are safe to keep forever;
- chunks are written to a temporary name and renamed into place, so any number of
  processes (FUSE workers, Ray tasks, loaders) can share one directory without locks: a
  reader sees a whole chunk or none, and two processes fetching one chunk both succeed;
- all the chunks one call misses are fetched by one ``read_ranges`` (coalesced, parallel);
- the directory is kept under ``cache_size`` bytes by evicting the least recently used
  chunks (a hit touches the file's mtime). Each process rescans after adding an eighth of
  the budget, so several processes overshoot by at most that much each, briefly.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence

from .backend import Backend, ObjectInfo
from .errors import UserInputError

DEFAULT_CHUNK = 1 << 20
DEFAULT_SIZE = 1 << 30
_TMP_GRACE = 60.0  # seconds a temporary chunk file may live before eviction counts it
_STAT_MEMO = 65536  # objects whose size/etag a process remembers (data files never change)


class ChunkCache:
    """Reads ranges of objects through chunk files under ``cache_dir``, at most ``cache_size`` bytes."""

    def __init__(self, cache_dir: str, cache_size: int = DEFAULT_SIZE, chunk_size: int = DEFAULT_CHUNK):
        if chunk_size <= 0 or cache_size < chunk_size:
            raise UserInputError(
                f"cache size {cache_size} must hold at least one chunk of {chunk_size} bytes")
        self.dir = os.path.abspath(cache_dir)
        self.cache_size = cache_size
        self.chunk_size = chunk_size
        os.makedirs(self.dir, exist_ok=True)
        self._stats: OrderedDict[tuple[str, str], ObjectInfo] = OrderedDict()
        self._added = 0
        self._used = self._scan_total()
        self._lock = threading.Lock()  # reads of several files run in parallel threads

    # -- reading ---------------------------------------------------------------
    def stat(self, backend: Backend, path: str) -> ObjectInfo:
        key = (backend.uri, path)
        with self._lock:
            info = self._stats.get(key)
        if info is None:
            info = backend.stat(path)
            with self._lock:
                self._stats[key] = info
                if len(self._stats) > _STAT_MEMO:
                    self._stats.popitem(last=False)
        return info

    def read_range(self, backend: Backend, path: str, start: int, length: int) -> bytes:
        return self.read_ranges(backend, path, [(start, length)])[0]

    def read_ranges(self, backend: Backend, path: str, ranges: Sequence[tuple[int, int]],
                    info: ObjectInfo | None = None) -> list[bytes]:
        """The bytes of each ``(start, length)`` of ``path``; misses cost one batched fetch."""
        info = info or self.stat(backend, path)
        cs = self.chunk_size
        for start, length in ranges:
            if start < 0 or length < 0 or start + length > info.size:
                raise UserInputError(
                    f"range [{start}, {start + length}) lies outside {backend.uri}/{path} ({info.size} bytes)")
        wanted = sorted({c for s, n in ranges if n for c in range(s // cs, (s + n - 1) // cs + 1)})
        base = self._base(backend, path, info)
        fds: dict[int, int] = {}  # cached chunks: read only the bytes asked for
        fetched: dict[int, bytes] = {}
        try:
            missing = []
            for c in wanted:
                fd = self._open(base, c, self._chunk_len(info, c))
                if fd is None:
                    missing.append(c)
                else:
                    fds[c] = fd
            if missing:
                got = backend.read_ranges(path, [(c * cs, self._chunk_len(info, c)) for c in missing])
                for c, data in zip(missing, got, strict=True):
                    fetched[c] = data
                    self._store(base, c, data)
            out = []
            for start, length in ranges:
                parts = []
                end = start + length
                pos = start
                while pos < end:
                    c, within = divmod(pos, cs)
                    take = min(end - pos, cs - within)
                    if c in fetched:
                        parts.append(fetched[c][within:within + take])
                    else:
                        parts.append(os.pread(fds[c], take, within))
                    pos += take
                out.append(parts[0] if len(parts) == 1 else b"".join(parts))
            return out
        finally:
            for fd in fds.values():
                os.close(fd)

    def _chunk_len(self, info: ObjectInfo, c: int) -> int:
        return min(self.chunk_size, info.size - c * self.chunk_size)

    def _base(self, backend: Backend, path: str, info: ObjectInfo) -> str:
        ident = f"{backend.uri}\0{path}\0{info.etag}\0{info.size}\0{self.chunk_size}"
        return hashlib.sha256(ident.encode()).hexdigest()[:32]

    def _file(self, base: str, c: int) -> str:
        return os.path.join(self.dir, base[:2], f"{base}-{c}")

    def _open(self, base: str, c: int, expect: int) -> int | None:
        """An open descriptor of a cached chunk, or None if it is not (wholly) cached."""
        try:
            fd = os.open(self._file(base, c), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        if os.fstat(fd).st_size != expect:
            os.close(fd)
            return None  # not ours (a hash clash or a hand-edited cache): fetch again
        os.utime(fd)  # recently used: the last to be evicted (an unlinked file takes it too)
        return fd

    # -- writing and eviction ------------------------------------------------------
    def _store(self, base: str, c: int, data: bytes) -> None:
        path = self._file(base, c)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            return  # removed by another process's eviction: the bytes are served, just not kept
        with self._lock:
            self._used += len(data)
            self._added += len(data)
            full = self._used > self.cache_size or self._added > self.cache_size // 8
            if full:
                self._added = 0  # one thread evicts; the others go on
        if full:
            self.evict()

    def _entries(self) -> list[tuple[float, int, str]]:
        out = []
        stale = time.time() - _TMP_GRACE
        for sub in os.scandir(self.dir):
            if not sub.is_dir():
                continue
            for e in os.scandir(sub.path):
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue
                if ".tmp-" in e.name and st.st_mtime > stale:
                    continue  # being written by a live process; older ones are crash leftovers
                out.append((st.st_mtime, st.st_size, e.path))
        return out

    def _scan_total(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def evict(self) -> None:
        """Remove least recently used chunks until the directory is within ``cache_size``."""
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        entries.sort()
        target = self.cache_size
        for _mtime, size, path in entries:
            if total <= target:
                break
            try:
                os.unlink(path)  # readers holding it open keep their bytes
            except FileNotFoundError:
                pass  # another process evicted it first
            total -= size
        with self._lock:
            self._used = total
