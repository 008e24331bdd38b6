"""ArrayRecord files: written with the array_record library, read by reference.

Records are written with ``ArrayRecordWriter`` (real ArrayRecord files any ArrayRecord
reader opens). After a file is closed we walk its Riegeli chunks once and note where the
bytes of every record lie in the file. With uncompressed chunks a record is then one
``pread`` away (minus the 24-byte Riegeli block headers that interrupt the stream every
64 KiB), which is what makes random access, full scans and FUSE range reads fast. Files
written with compression fall back to ``ArrayRecordReader``. Open files belong to
``recordpool``; this module only says where records lie and how to read them.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from array_record.python.array_record_module import ArrayRecordWriter

from . import arwriter
from .backend import is_remote
from .recordpool import POOL, RecordHandle, RecordPool
from .sparse import punch_zero_pages

BLOCK = 1 << 16
BLOCK_HEADER = 24
USABLE = BLOCK - BLOCK_HEADER
CHUNK_HEADER = 40
_SIMPLE_CHUNK = ord("r")

# Records per Riegeli chunk are chosen so that a chunk holds about this many bytes: the
# writer buffers a whole chunk, so a byte bound keeps memory flat for huge records.
TARGET_CHUNK_BYTES = 4 << 20
MAX_GROUP = 1024

REF_TYPE = pa.struct(
    [
        ("file", pa.string()),
        ("pos", pa.int64()),
        ("size", pa.int64()),
        ("offset", pa.int64()),
    ]
)


def _phys(logical: int) -> int:
    """Physical file offset of a logical (block-header-free) stream offset."""
    return logical + BLOCK_HEADER * (logical // USABLE + 1)


def _logical(physical: int) -> int:
    block, within = divmod(physical, BLOCK)
    return block * USABLE + max(within - BLOCK_HEADER, 0)


def _add_with_overhead(pos: int, size: int) -> int:
    blocks = (size + (pos + USABLE - 1) % BLOCK) // USABLE
    return pos + size + blocks * BLOCK_HEADER


def _round_up_boundary(pos: int) -> int:
    remaining = BLOCK - 1 - (pos + BLOCK - 1) % BLOCK
    return pos + max(remaining - (USABLE - 1), 0)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


class _LogicalFile:
    """Reads a Riegeli file as its logical byte stream (block headers removed)."""

    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.size = size

    def read(self, logical: int, n: int) -> bytes:
        start = _phys(logical)
        out = []
        while n > 0:
            take = min(n, BLOCK - start % BLOCK)
            out.append(os.pread(self.fd, take, start))
            n -= take
            start += take + BLOCK_HEADER
        return b"".join(out)


def scan_offsets(path: str, sizes: np.ndarray) -> np.ndarray | None:
    """Physical offset of each record of an ArrayRecord file, or None when compressed.

    Walks the Riegeli chunk headers from the file start; records inside a simple
    uncompressed chunk lie back to back after its sizes, so ``sizes`` (known to the
    writer) place them without decoding every varint.
    """
    expected = len(sizes)
    logical = np.empty(expected, dtype=np.int64)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        lf = _LogicalFile(fd, size)
        chunk_begin = 0
        found = 0
        while found < expected:
            if chunk_begin >= size:
                return None
            lbegin = _logical(chunk_begin if chunk_begin % BLOCK else chunk_begin + BLOCK_HEADER)
            header = lf.read(lbegin, CHUNK_HEADER)
            data_size, _hash, type_records, _decoded = struct.unpack_from("<QQQQ", header, 8)
            ctype, nrec = type_records & 0xFF, type_records >> 8
            if ctype == _SIMPLE_CHUNK and nrec:
                ldata = lbegin + CHUNK_HEADER
                head = lf.read(ldata, min(data_size, 11))
                if head[0] != 0:
                    return None  # compressed chunk: no byte offsets
                sizes_size, i = _read_varint(head, 1)
                take = min(nrec, expected - found)
                part = sizes[found : found + take]
                rel = np.zeros(take, dtype=np.int64)
                np.cumsum(part[:-1], out=rel[1:])
                logical[found : found + take] = ldata + i + sizes_size + rel
                found += nrec
            chunk_begin = max(
                _add_with_overhead(chunk_begin, CHUNK_HEADER + data_size),
                _round_up_boundary(chunk_begin + nrec),
            )
        return logical + BLOCK_HEADER * (logical // USABLE + 1)
    finally:
        os.close(fd)


def write_records(path: str, values: pa.Array, options: str = "") -> np.ndarray:
    """Write ``values`` (binary) as one ArrayRecord file; return each record's offset.

    Offsets are -1 when the file's chunks are compressed. The default (uncompressed)
    layout is written straight from the Arrow buffers (``arwriter``); explicit writer
    options go through ``ArrayRecordWriter``.
    """
    n = len(values)
    nbytes = values.buffers()[2].size if n and values.buffers()[2] is not None else 0
    avg = max(nbytes // max(n, 1), 1)
    group = max(1, min(MAX_GROUP, TARGET_CHUNK_BYTES // avg))
    if not options and arwriter.writer_available():
        # Its padding is left as holes: a small file's 64 KiB of zeros costs no disk.
        return arwriter.write_uncompressed(path, values, group)
    # Uncompressed chunks of about TARGET_CHUNK_BYTES; the writer's own thread pool
    # overlaps file writes with our calls (measured faster on disk than one thread).
    opts = options or f"group_size:{group},uncompressed"
    writer = ArrayRecordWriter(path, opts)
    try:
        write = writer.write
        for v in values.to_pylist():
            write(v)
    finally:
        writer.close()
    punch_zero_pages(path)  # a small file's 64 KiB padding costs no disk
    sizes = pc.binary_length(values).to_numpy(zero_copy_only=False).astype(np.int64) if n else np.zeros(0, np.int64)
    offsets = scan_offsets(path, sizes) if "uncompressed" in opts else None
    if offsets is None:
        return np.full(n, -1, dtype=np.int64)
    return offsets


class RecordReader:
    """Reads the records of one dataset by reference.

    Holds no descriptors: every call leases the handles it needs from the process-wide
    ``recordpool.POOL`` and returns them before it returns, so readers are cheap to make,
    need no closing, and any number of them share one bounded set of open files.
    Thread-safe (``os.pread`` needs no shared position).

    For a dataset on a bucket (``s3://...``) the constructor returns a
    ``remote_records.RemoteRecordReader`` instead: the same methods, reading by range.
    """

    remote = False  # records read by range from a bucket (``RemoteRecordReader``)

    def __new__(cls, root: str, *args, **kwargs):
        if cls is RecordReader and is_remote(str(root)):
            from .remote_records import RemoteRecordReader  # loads obstore: buckets only

            return RemoteRecordReader(str(root))
        return super().__new__(cls)

    def __init__(self, root: str, max_open: int | None = None, mmap_max: int = 0, pool: RecordPool | None = None):
        self.root = os.path.abspath(root)
        # ``read_batch`` copies records of at most ``mmap_max`` bytes out of a read-only
        # memory map instead of calling pread: on page cache that is ~3x cheaper per
        # record. Maps belong to the pool (one per open file, within its budget).
        self.mmap_max = mmap_max
        self.pool = pool or POOL
        del max_open  # the pool's budget bounds open files now (kept for callers)

    def read_range(self, rel: str, offset: int, size: int, start: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[start, start+length)`` of the record at physical ``offset``."""
        length = clamp_length(size, start, length)
        if length == 0:
            return b""
        h = self.pool.lease(self.root, rel)
        try:
            pos = record_position(offset, start)
            if pos % BLOCK + length <= BLOCK:
                return os.pread(h.fd, length, pos)
            return read_record_range(h.fd, offset, start, length)  # type: ignore[return-value]
        finally:
            self.pool.release(h)

    def read_one(self, rel: str, pos: int, offset: int, size: int) -> bytes:
        if offset >= 0:
            return self.read_range(rel, offset, size)
        leases: list[RecordHandle] = []
        try:
            return self._slow(leases, rel, [pos])[0]
        finally:
            self.pool.release(leases)

    def _slow(self, leases: list[RecordHandle], rel: str, positions: Sequence[int]) -> list[bytes]:
        h = self.pool.lease(self.root, rel)
        leases.append(h)
        return self.pool.reader(h).read(list(positions))

    def _fd_batch(self, leases: list[RecordHandle], rels: Sequence[str]) -> list[int]:
        """Descriptors for all of ``rels`` at once, leased until the caller's call ends."""
        hs = self.pool.lease_many(self.root, rels)
        leases.extend(hs)
        return [h.fd for h in hs]

    def _map_batch(self, leases: list[RecordHandle], rels: Sequence[str]) -> tuple[list[int], list[mmap.mmap | None]]:
        """Descriptors and read-only maps of ``rels`` (None for an empty file), leased."""
        hs = self.pool.lease_many(self.root, rels)
        leases.extend(hs)
        return [h.fd for h in hs], [self.pool.mapping(h) for h in hs]

    def read_batch(self, files: Sequence[str], file_idx: np.ndarray, offset: np.ndarray,
                   size: np.ndarray, pos: np.ndarray, threads: int = 0) -> list[bytes]:
        """Records given as parallel arrays (``files[file_idx[i]]``, offset, size, position),
        returned in the order asked.

        Reads go in (file, offset) order; records that lie within ``COALESCE_GAP`` of each
        other are fetched with one ``pread`` and cut apart, so a batch of neighbours costs
        one syscall and a batch of strangers one each, the physical minimum.
        """
        leases: list[RecordHandle] = []
        try:
            return self._read_batch(leases, files, file_idx, offset, size, pos, threads)
        finally:
            if leases:
                self.pool.release(leases)

    def _read_batch(self, leases: list[RecordHandle], files: Sequence[str], file_idx: np.ndarray,
                    offset: np.ndarray, size: np.ndarray, pos: np.ndarray, threads: int) -> list[bytes]:
        n = len(offset)
        out: list[bytes] = [b""] * n
        if n == 0:
            return out
        slow = offset < 0
        if slow.any():
            for f in np.unique(file_idx[slow]).tolist():
                idx = np.flatnonzero(slow & (file_idx == f))
                for i, v in zip(idx.tolist(), self._slow(leases, files[f], pos[idx].tolist()), strict=True):
                    out[i] = v
            keep = np.flatnonzero(~slow)
        else:
            if self.mmap_max > 0:
                return self._read_mapped(leases, files, file_idx, offset, size)
            keep = None
        fi = file_idx if keep is None else file_idx[keep]
        off = offset if keep is None else offset[keep]
        sz = size if keep is None else size[keep]
        if len(off) == 0:
            return out
        m = len(off)
        if int(off.max()) < (1 << 40) and int(fi.max()) < (1 << 22):
            order = np.argsort((fi.astype(np.int64) << 40) | off)  # one key sorts faster
        else:
            order = np.lexsort((off, fi))
        rows = order if keep is None else keep[order]
        fi, off, sz = fi[order], off[order], sz[order]
        end = np.where(sz > 0, _phys_end_vec(off, sz), off)
        new_file = fi[1:] != fi[:-1]
        brk = np.empty(m, dtype=bool)
        brk[0] = True
        brk[1:] = new_file | (off[1:] - end[:-1] > COALESCE_GAP)
        starts = np.flatnonzero(brk)
        stops = np.append(starts[1:], m)
        gend = np.maximum.reduceat(end, starts)
        file_starts = np.concatenate(([0], np.flatnonzero(new_file) + 1))
        uniq = fi[file_starts]
        inv = np.zeros(m, dtype=np.int64)
        inv[file_starts[1:]] = 1
        fd_of = np.asarray(self._fd_batch(leases, [files[f] for f in uniq.tolist()]), dtype=np.int64)[np.cumsum(inv)]
        span = gend - off[starts]
        # A lone record (no neighbour to merge with) that is plain or straddles one block
        # boundary is one pread; nearly all of a random batch is. They are read in the
        # order asked, so the common case needs no scatter: the sort only found neighbours.
        lone = ((stops - starts) == 1) & (span <= sz[starts] + BLOCK_HEADER)
        rest = ~lone
        fd_full = np.zeros(n, dtype=np.int64)
        fd_full[rows] = fd_of
        span_full = np.zeros(n, dtype=np.int64)
        span_full[rows[starts]] = span
        if lone.all() and keep is None:
            l_rows = None
            l_fd, l_off, l_span, l_size = fd_full, offset, span_full, size
        else:
            mask = np.zeros(n, dtype=bool)
            mask[rows[starts[lone]]] = True
            l_rows = np.flatnonzero(mask)
            l_fd, l_off, l_span, l_size = fd_full[l_rows], offset[l_rows], span_full[l_rows], size[l_rows]
        args = [l_fd.tolist(), l_off.tolist(), l_span.tolist()]
        count = len(args[0])
        step = max(256, -(-count // max(threads, 1)))
        chunks = [[a[c : c + step] for a in args] for c in range(0, count, step)]

        def lone_reads(job: list[list[int]]) -> list[bytes]:
            pread = os.pread
            return [pread(fd, s, o) for fd, o, s in zip(*job, strict=True)]

        if threads > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(min(threads, len(chunks))) as ex:
                vals = [v for part in ex.map(lone_reads, chunks) for v in part]
        else:
            vals = lone_reads(args)
        if sum(map(len, vals)) != int(l_span.sum()):
            raise OSError(f"short read in {[files[f] for f in uniq.tolist()]} (truncated record file?)")
        cut = np.flatnonzero(l_span != l_size)
        for p, k in zip(cut.tolist(), (BLOCK - l_off[cut] % BLOCK).tolist(), strict=True):
            b = vals[p]
            vals[p] = b[:k] + b[k + BLOCK_HEADER :]
        if l_rows is None:
            return vals
        for j, v in zip(l_rows.tolist(), vals, strict=True):
            out[j] = v
        if not rest.any():
            return out
        plain = (end - off) == sz  # no block header inside the record
        rows_c, off_c, sz_c, plain_c = rows.tolist(), off.tolist(), sz.tolist(), plain.tolist()
        for a, b, g1, fd in zip(starts[rest].tolist(), stops[rest].tolist(), gend[rest].tolist(),
                                fd_of[starts[rest]].tolist(), strict=True):
            g0 = off_c[a]
            buf = os.pread(fd, g1 - g0, g0)
            if len(buf) != g1 - g0:
                raise OSError(f"short read in {files[int(fi[a])]}: {len(buf)} of {g1 - g0} bytes at {g0}")
            for k in range(a, b):
                r = off_c[k] - g0
                out[rows_c[k]] = buf[r : r + sz_c[k]] if plain_c[k] else _strip_headers(buf, off_c[k], sz_c[k], g0)
        return out

    def _read_mapped(self, leases: list[RecordHandle], files: Sequence[str], file_idx: np.ndarray, offset: np.ndarray,
                     size: np.ndarray) -> list[bytes]:
        """Records copied out of memory maps, in the order asked. No sort: a copy from a
        map costs the same whether or not its neighbour is wanted too."""
        lo, hi = int(file_idx.min()), int(file_idx.max())
        if lo == hi:
            uniq, local = [lo], [0] * len(file_idx)
        else:
            u, inv = np.unique(file_idx, return_inverse=True)
            uniq, local = u.tolist(), inv.tolist()
        rels = [files[f] for f in uniq]
        fds, maps = self._map_batch(leases, rels)
        span = np.where(size > 0, _phys_end_vec(offset, np.maximum(size, 1)) - offset, 0)
        limit, pread = self.mmap_max, os.pread
        vals = [maps[f][o : o + s] if s <= limit else pread(fds[f], s, o)  # type: ignore[index]
                for f, o, s in zip(local, offset.tolist(), span.tolist(), strict=True)]
        if sum(map(len, vals)) != int(span.sum()):
            raise OSError(f"short read in {rels} (truncated record file?)")
        cut = np.flatnonzero(span != size)  # records with block headers inside
        for p, o, s, k in zip(cut.tolist(), offset[cut].tolist(), size[cut].tolist(),
                              (BLOCK - offset[cut] % BLOCK).tolist(), strict=True):
            b = vals[p]
            # One header (any record shorter than a block): cut it out in one go.
            vals[p] = b[:k] + b[k + BLOCK_HEADER :] if len(b) == s + BLOCK_HEADER else _strip_headers(b, o, s, o)
        return vals

    def read_refs(self, refs: pa.Array, threads: int = 0) -> pa.Array:
        """Resolve a column of references to a binary column (nulls stay null)."""
        refs = refs.combine_chunks() if isinstance(refs, pa.ChunkedArray) else refs
        n = len(refs)
        if n == 0:
            return pa.array([], pa.binary())
        valid = refs.is_valid().to_numpy(zero_copy_only=False)
        live = np.flatnonzero(valid) if refs.null_count else None
        sub = refs if live is None else refs.take(pa.array(live))
        files = sub.field("file").dictionary_encode()
        vals = self.read_batch(
            files.dictionary.to_pylist(),
            files.indices.to_numpy(zero_copy_only=False),
            sub.field("offset").to_numpy(zero_copy_only=False),
            sub.field("size").to_numpy(zero_copy_only=False),
            sub.field("pos").to_numpy(zero_copy_only=False),
            threads,
        )
        if live is not None:
            full: list[bytes | None] = [None] * n
            for i, v in zip(live.tolist(), vals, strict=True):
                full[i] = v
            return pa.array(full, pa.binary())
        return pa.array(vals, pa.binary())

    def scan_refs(self, refs: pa.Array) -> pa.Array:
        """Like ``read_refs`` but for runs of consecutive records (full scans).

        Each run of records that lie back to back in a file is read with one ``preadv``
        straight into the output buffer, the block headers steered into a scratch buffer:
        no per-record Python objects, no copy after the read.
        """
        refs = refs.combine_chunks() if isinstance(refs, pa.ChunkedArray) else refs
        off = refs.field("offset").to_numpy(zero_copy_only=False)
        if len(refs) < 64 or refs.null_count or (off < 0).any():
            return self.read_refs(refs)
        enc = refs.field("file").dictionary_encode()
        names = enc.dictionary.to_pylist()
        fidx = enc.indices.to_numpy(zero_copy_only=False)
        size = refs.field("size").to_numpy(zero_copy_only=False)
        lstart = _logical_vec(off)
        offsets = np.zeros(len(refs) + 1, dtype=np.int64)
        np.cumsum(size, out=offsets[1:])
        total = int(offsets[-1])
        buf = pa.allocate_buffer(total, resizable=False)
        view = memoryview(buf).cast("B") if total else memoryview(b"")
        # A run breaks where the next record is not the next byte of the same file.
        brk = np.flatnonzero((lstart[1:] != lstart[:-1] + size[:-1]) | (fidx[1:] != fidx[:-1])) + 1
        starts = np.concatenate([[0], brk]).astype(np.int64)
        lo = offsets[starts]
        hi = offsets[np.append(starts[1:], len(refs))]
        phys = lstart[starts] + BLOCK_HEADER * (lstart[starts] // USABLE + 1)
        # A run inside one block (most records read by key: a diff's rows at the fork
        # point, scattered over a large file) is one plain ``preadv`` with no header to
        # steer: the per-run work is the system call, not Python.
        plain = (hi > lo) & (phys % BLOCK + (hi - lo) <= BLOCK)
        with self.pool.leased(self.root, names) as hs:
            fds = [h.fd for h in hs]
            preadv = os.preadv
            for f, a, b, p in zip(fidx[starts[plain]].tolist(), lo[plain].tolist(), hi[plain].tolist(),
                                  phys[plain].tolist(), strict=True):
                if preadv(fds[f], [view[a:b]], p) != b - a:
                    raise OSError(f"short read: {b - a} bytes at {p} of {names[f]} (truncated record file?)")
            for i in np.flatnonzero(~plain & (hi > lo)).tolist():
                _read_logical_into(fds[int(fidx[starts[i]])], int(lstart[starts[i]]), view[int(lo[i]):int(hi[i])])
        return binary_array(offsets, buf)

    def close(self) -> None:
        """Nothing to close: the pool owns the files (kept so old callers still work)."""


# Records of one file at most this far apart are read with a single pread and cut
# apart. Records that touch always are; bridging gaps measured slower on page cache
# (copying the gap costs about what the saved syscall does).
COALESCE_GAP = 0


def _phys_end_vec(offset: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Physical end (exclusive) of records starting at physical ``offset``; size > 0."""
    last = _logical_vec(offset) + size - 1
    return last + BLOCK_HEADER * (last // USABLE + 1) + 1


def _strip_headers(buf: bytes, offset: int, size: int, base: int) -> bytes:
    """The logical bytes of a record read, block headers included, into ``buf`` (which
    starts at physical ``base``)."""
    parts = []
    pos = offset
    while size > 0:
        take = min(size, BLOCK - pos % BLOCK)
        parts.append(buf[pos - base : pos - base + take])
        size -= take
        pos += take + BLOCK_HEADER
    return b"".join(parts)


def _logical_vec(physical: np.ndarray) -> np.ndarray:
    block, within = np.divmod(physical, BLOCK)
    return block * USABLE + np.maximum(within - BLOCK_HEADER, 0)


_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_IOV_MAX = 1000


def gather_iovecs(out: memoryview, pos: int, scratch: memoryview, max_iov: int = 0) -> tuple[list[memoryview], int]:
    """The ``preadv`` buffers that fill ``out`` from physical position ``pos`` on: pieces
    of ``out`` between block headers, each header steered into ``scratch``.

    Stops after ``max_iov`` buffers when given; returns (buffers, physical end).
    """
    n = len(out)
    iov: list[memoryview] = []
    done = 0
    while done < n and (not max_iov or len(iov) < max_iov):
        take = min(n - done, BLOCK - pos % BLOCK)
        iov.append(out[done : done + take])
        done += take
        pos += take
        if done < n:
            iov.append(scratch)
            pos += BLOCK_HEADER
    return iov, pos


def record_position(record_offset: int, start: int) -> int:
    """File position of byte ``start`` of the record at physical ``record_offset``."""
    return _phys(_logical(record_offset) + start)


def read_record_range(fd: int, record_offset: int, start: int, length: int, nowait: bool = False) -> memoryview | None:
    """Bytes ``[start, start+length)`` of the record at physical ``record_offset``;
    None when ``nowait`` and the bytes are not all in the page cache.

    The buffer is left uninitialised (``np.empty``, not a zeroed ``bytearray``): ``preadv``
    overwrites all of it, and zeroing 1 MiB cost ~11 us of a ~55 us FUSE read."""
    if length <= 0:
        return memoryview(b"")
    if nowait and not _NOWAIT:
        return None
    pos = record_position(record_offset, start)
    out = memoryview(np.empty(length, np.uint8))
    iov, end = gather_iovecs(out, pos, memoryview(bytearray(BLOCK_HEADER)))
    want = end - pos
    got = 0
    while got < want:
        rest = _skip(iov, got)
        try:
            n = os.preadv(fd, rest, pos + got, _NOWAIT if nowait else 0)
        except BlockingIOError:
            return None
        if n == 0:
            raise OSError(f"short read of a record: {got} of {want} bytes")
        if nowait and got + n < want:
            return None  # partly cached: let a worker thread read it whole
        got += n
    return out  # no copy: callers hand out memoryview slices of it


def _skip(iov: list, n: int) -> list:
    if n == 0:
        return iov
    out = []
    for b in iov:
        size = len(b)
        if n >= size:
            n -= size
            continue
        out.append(memoryview(b)[n:])
        n = 0
    return out


def binary_array(offsets: np.ndarray, data, validity=None, null_count: int = -1) -> pa.Array:
    """A binary column over ``data`` cut at ``offsets`` (n + 1 int64 values), without a
    copy: ``large_binary`` when the values pass 2 GiB, ``binary`` otherwise."""
    large = int(offsets[-1]) >= (1 << 31)
    offs = offsets.astype(np.int64 if large else np.int32, copy=False)
    return pa.Array.from_buffers(pa.large_binary() if large else pa.binary(), len(offsets) - 1,
                                 [validity, pa.py_buffer(offs), data], null_count=null_count)


def clamp_length(size: int, start: int, length: int | None) -> int:
    """The bytes of ``[start, start+length)`` that lie within a record of ``size`` bytes
    (to its end when ``length`` is None): what a range read of a record returns."""
    return max(0, min(size - start if length is None else length, size - start))


def _read_logical_into(fd: int, logical: int, out: memoryview) -> None:
    """Fill ``out`` with the logical bytes starting at ``logical``: one ``preadv`` per
    ~32 MiB, block headers read into a scratch buffer instead of being copied out."""
    pos = _phys(logical)
    scratch = memoryview(bytearray(BLOCK_HEADER))
    while len(out):
        iov, end = gather_iovecs(out, pos, scratch, _IOV_MAX)
        got = os.preadv(fd, iov, pos)
        if got != end - pos:
            raise OSError(f"short read: {got} of {end - pos} bytes at {pos}")
        filled = sum(len(b) for b in iov if b is not scratch)
        out = out[filled:]
        pos = end
