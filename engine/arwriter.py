"""ArrayRecord files written straight from Arrow buffers.

``ArrayRecordWriter`` takes one Python ``bytes`` per record: for many small-to-medium
records most of an append went into making those objects. An uncompressed ArrayRecord
file is simple to lay out ourselves (Riegeli blocks of 64 KiB, each opening with a
24-byte block header; a file signature chunk; simple chunks holding a varint size table
and the record bytes; the ArrayRecord footer chunk listing every chunk's offset; a
postscript chunk in the last block). Each chunk goes to ``pwritev`` as its pieces (its
header, the size table, and the Arrow value bytes themselves: the blob column is never
copied in user space); every record's physical offset falls out of the layout, so no
second pass over the file is needed.

Riegeli checks every header and chunk with HighwayHash-64 under a fixed key. The only
fast implementation at hand is the one compiled into ``array_record``'s own extension
(SIMD, ~10 GB/s; the PyPI package ``highwayhash-cffi`` is portable C at ~0.75 GB/s and
unmaintained). We call riegeli's ``Hash(string_view)`` there by address, found in the
extension's ELF symbol table, and only after it reproduces known hashes from a file that
``ArrayRecordWriter`` wrote. A chunk's data hash is taken over its pieces with
highwayhash's ``HighwayHashCat`` from the same extension (what riegeli's ``Hash(Chain)``
uses), once it agrees with ``Hash`` on random splits; without it the pieces are joined
first. When any step fails (stripped build, other ABI, other platform)
``writer_available()`` is False and callers keep using ``ArrayRecordWriter``.
The files are identical byte for byte to ``ArrayRecordWriter``'s with the same group
size (``tests/test_arwriter.py`` compares them).
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

BLOCK = 1 << 16
BLOCK_HEADER = 24
USABLE = BLOCK - BLOCK_HEADER
CHUNK_HEADER = 40
MAGIC = 0x71930E704FDAE05E  # ArrayRecord's postscript magic
_HASH_SYMBOL = b"_ZN7riegeli23chunk_encoding_internal4HashESt17basic_string_viewIcSt11char_traitsIcEE"
_ANCHOR_SYMBOL = b"PyInit_array_record_module"
# riegeli's key and highwayhash's pieces for hashing a sequence of fragments (what
# riegeli's ``Hash(const Chain&)`` does): a chunk is hashed straight from its pieces
# (size table, Arrow value bytes) instead of first being copied into one buffer.
_KEY_SYMBOL = b"_ZN7riegeli23chunk_encoding_internal12_GLOBAL__N_1L8kHashKeyE"
_SUPPORTED_SYMBOL = b"_ZN11highwayhash15InstructionSets9SupportedEv"
_CAT_SYMBOLS = {bits: f"_ZNK11highwayhash14HighwayHashCatILj{bits}EEclERA4_KmPKNS_10StringViewEmPm".encode()
                for bits in (4, 2, 1)}  # AVX2, SSE4.1, portable: the bits of Supported()
# Known answers, read from files written by ArrayRecordWriter: Hash("") is the data hash
# of the file signature chunk, and the second is the hash of its header's last 32 bytes.
_KNOWN = [(b"", 0x72C3B1E9C0139FE1),
          (struct.pack("<QQQQ", 0, 0x72C3B1E9C0139FE1, ord("s"), 0), 0xA9E187923CC2BA91)]
_IOV_MAX = 1000

_lock = threading.Lock()
_hash_fn: Callable[[int, int], int] | None = None
_cat_fn: Callable[[np.ndarray], int] | None = None
_resolved = False


def _symbols(path: str, names: list[bytes]) -> dict[bytes, int]:
    """Values of the named symbols in the ELF64 ``.symtab`` of ``path`` (missing: absent)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:5] != b"\x7fELF\x02" or data[5] != 1:  # 64-bit little-endian only
        return {}
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    out: dict[bytes, int] = {}
    for sec in sections:
        if sec[1] != 2:  # SHT_SYMTAB
            continue
        strtab = sections[sec[6]]
        strings = data[strtab[4] : strtab[4] + strtab[5]]
        sym = np.frombuffer(data, dtype=np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"),
                                                  ("shndx", "<u2"), ("value", "<u8"), ("size", "<u8")]),
                            count=sec[5] // 24, offset=sec[4])
        for name in names:
            at = strings.find(b"\0" + name + b"\0")
            if at < 0:
                continue
            hit = np.flatnonzero((sym["name"] == at + 1) & (sym["shndx"] != 0))
            if len(hit) == 1:
                out[name] = int(sym["value"][hit[0]])
    return out


def _resolve() -> tuple[Callable[[int, int], int] | None, Callable[[np.ndarray], int] | None]:
    """riegeli's HighwayHash inside the loaded array_record extension, verified; and the
    fragment hash beside it when it reproduces the first (else None: chunks are copied
    into one buffer to be hashed)."""
    if sys.platform != "linux" or sys.byteorder != "little" or struct.calcsize("P") != 8:
        return None, None
    try:
        from array_record.python import array_record_module as mod

        path = mod.__file__
        syms = _symbols(path, [_HASH_SYMBOL, _ANCHOR_SYMBOL, _KEY_SYMBOL, _SUPPORTED_SYMBOL, *_CAT_SYMBOLS.values()])
        if _HASH_SYMBOL not in syms or _ANCHOR_SYMBOL not in syms:
            return None, None
        lib = ctypes.CDLL(path)  # the already loaded object: dlopen returns its handle
        anchor = ctypes.cast(getattr(lib, _ANCHOR_SYMBOL.decode()), ctypes.c_void_p).value
        if anchor is None:
            return None, None
        bias = anchor - syms[_ANCHOR_SYMBOL]
        # A string_view is passed by value in two registers: (size, pointer).
        fn = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p)(bias + syms[_HASH_SYMBOL])
        for text, want in _KNOWN:
            buf = ctypes.create_string_buffer(text, max(len(text), 1))
            if fn(len(text), ctypes.addressof(buf)) != want:
                return None, None
        one = lambda addr, n: fn(n, addr)  # noqa: E731
        return one, _resolve_cat(syms, bias, one)
    except (OSError, AttributeError, ImportError, ValueError, struct.error):
        return None, None


def _resolve_cat(syms: dict[bytes, int], bias: int, one: Callable[[int, int], int]) -> Callable[[np.ndarray], int] | None:
    """``HighwayHashCat<target>`` for this CPU, as ``f(fragments) -> hash`` where
    ``fragments`` is a uint64 array of (address, size) rows; None unless it gives the
    same hashes as ``one`` over random splits of random data."""
    if not all(s in syms for s in (_KEY_SYMBOL, _SUPPORTED_SYMBOL, *_CAT_SYMBOLS.values())):
        return None
    supported = ctypes.CFUNCTYPE(ctypes.c_uint32)(bias + syms[_SUPPORTED_SYMBOL])()
    bits = next((b for b in _CAT_SYMBOLS if supported & b), None)
    if bits is None:
        return None
    # A const member function of an empty struct: (this, key, fragments, count, result).
    cat = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                           ctypes.c_void_p)(bias + syms[_CAT_SYMBOLS[bits]])
    key = bias + syms[_KEY_SYMBOL]
    this = ctypes.create_string_buffer(8)
    this_addr = ctypes.addressof(this)

    def hash_fragments(frags: np.ndarray) -> int:
        out = ctypes.c_uint64(0)
        cat(this_addr, key, frags.ctypes.data, len(frags), ctypes.addressof(out))
        return out.value

    hash_fragments.keep = this  # type: ignore[attr-defined]  # the buffer lives with the function
    rng = np.random.default_rng(5)
    for size in (0, 1, 31, 32, 33, 1000, 70_000):
        data = np.frombuffer(rng.bytes(size) or b"\0", dtype=np.uint8)[:size]
        cuts = np.sort(rng.integers(0, size + 1, 3))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, size], strict=True) if b > a]
        frags = np.array([(p.ctypes.data, len(p)) for p in parts], dtype=np.uint64).reshape(-1, 2)
        whole = one(data.ctypes.data if size else ctypes.addressof(_EMPTY), size)
        if hash_fragments(frags) != whole:
            return None
    return hash_fragments


def _hasher() -> Callable[[int, int], int] | None:
    global _hash_fn, _cat_fn, _resolved
    if _resolved:  # called per block header: no lock once settled
        return _hash_fn
    with _lock:
        if not _resolved:
            if os.environ.get("SPACEFS_ARWRITER") != "0":
                _hash_fn, _cat_fn = _resolve()
            _resolved = True
        return _hash_fn


def _hash_pieces(pieces: list[np.ndarray]) -> int:
    """The hash of the concatenation of ``pieces`` (uint8 arrays), without making it
    where the fragment hash is available."""
    _hasher()
    pieces = [p for p in pieces if len(p)]
    if _cat_fn is not None:
        return _cat_fn(np.array([(p.ctypes.data, len(p)) for p in pieces], dtype=np.uint64).reshape(-1, 2))
    return _hash_bytes(np.concatenate(pieces) if pieces else np.zeros(0, np.uint8))


def writer_available() -> bool:
    """Whether files can be written here without ``ArrayRecordWriter``."""
    return _hasher() is not None


def _hash_bytes(b: bytes | bytearray | np.ndarray) -> int:
    fn = _hasher()
    assert fn is not None
    if isinstance(b, bytes):  # ctypes passes a bytes object's buffer: ~20x cheaper than numpy's
        return fn(b, len(b))  # type: ignore[arg-type]
    arr = np.frombuffer(b, dtype=np.uint8) if not isinstance(b, np.ndarray) else b
    return fn(arr.ctypes.data if len(arr) else ctypes.addressof(_EMPTY), len(arr))


_EMPTY = ctypes.create_string_buffer(1)


def varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LEB128 encoding of every value at once: (bytes, end offset of each value)."""
    v = values.astype(np.uint64, copy=False)
    nbytes = np.ones(len(v), dtype=np.int64)
    for k in range(1, 10):
        nbytes += v >= np.uint64(1 << (7 * k))
    ends = np.cumsum(nbytes)
    out = np.empty(int(ends[-1]) if len(v) else 0, dtype=np.uint8)
    starts = ends - nbytes
    for k in range(int(nbytes.max()) if len(v) else 0):
        live = nbytes > k
        byte = (v[live] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (nbytes[live] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[live] + k] = (byte | more).astype(np.uint8)
    return out, ends


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _remaining(pos: int) -> int:
    return -pos % BLOCK


def _add_with_overhead(begin: int, length: int) -> int:
    return begin + length + (length + (begin + USABLE - 1) % BLOCK) // USABLE * BLOCK_HEADER


def _round_up_boundary(pos: int) -> int:
    return pos + max(_remaining(pos) - (USABLE - 1), 0)


def _logical(physical: int) -> int:
    block, within = divmod(physical, BLOCK)
    return block * USABLE + max(within - BLOCK_HEADER, 0)


def _chunk_end(begin: int, size: int, nrec: int) -> int:
    return max(_add_with_overhead(begin, CHUNK_HEADER + size), _round_up_boundary(begin + nrec))


class _ChunkOut:
    """Writes one chunk at its known position with ``pwritev``: the layout of a file is
    fixed by the record sizes alone, so chunks can be written by several threads."""

    def __init__(self, fd: int, begin: int, end: int):
        self.fd = fd
        self.begin = begin
        self.end = end
        self.pos = begin
        self.at = begin  # where the pending pieces go
        self.iov: list[memoryview | bytes] = []

    def write(self, data: np.ndarray | bytes | list[np.ndarray], ctype: str, nrec: int, decoded: int,
              zeros: bool = False) -> None:
        """Write a chunk whose data is ``data``, or the concatenation of its pieces (they
        go out as they are: Arrow's value bytes are neither copied nor joined).

        With ``zeros`` (the data is all zero: a padding chunk) the data is not written
        but skipped, like the zero padding after any chunk: the file gets holes, which
        read as zeros. A one-row file's 64 KiB padding then costs neither a write nor
        a disk block (it was written, read back and punched out)."""
        pieces = data if isinstance(data, list) else [np.frombuffer(data, dtype=np.uint8)]
        size = sum(len(p) for p in pieces)
        dhash = _hash_pieces(pieces)
        tail = struct.pack("<QQQQ", size, dhash, ord(ctype) | (nrec << 8), decoded)
        self._emit(struct.pack("<Q", _hash_bytes(tail)) + tail)
        if zeros:
            self._skip(self.end - self.pos)
        for piece in [] if zeros else pieces:
            self._emit(memoryview(piece))
        self._skip(self.end - self.pos)  # zero padding (records cannot share a position)
        self.flush()

    def _skip(self, n: int) -> None:
        """Leave ``n`` bytes of zeros unwritten (block headers in them are written)."""
        end = self.pos + n
        while self.pos < end:
            if self.pos % BLOCK == 0:
                self._block_header()
            take = min(end - self.pos, BLOCK - self.pos % BLOCK)
            self.flush()
            self.pos += take
            self.at = self.pos

    def _block_header(self) -> None:
        words = struct.pack("<QQ", self.pos - self.begin, self.end - self.pos)
        self._add(struct.pack("<Q", _hash_bytes(words)) + words)

    def _emit(self, piece: memoryview | bytes) -> None:
        view = memoryview(piece)
        done = 0
        while done < len(view):
            if self.pos % BLOCK == 0:
                self._block_header()
            take = min(len(view) - done, BLOCK - self.pos % BLOCK)
            self._add(view[done : done + take])
            done += take

    def _add(self, piece: memoryview | bytes) -> None:
        self.iov.append(piece)
        self.pos += len(piece)
        if len(self.iov) >= _IOV_MAX:
            self.flush()

    def flush(self) -> None:
        iov, self.iov = self.iov, []
        while iov:
            n = os.pwritev(self.fd, iov, self.at)
            if n <= 0:
                raise OSError(f"pwritev wrote nothing at {self.at}")
            self.at += n
            while iov and n >= len(iov[0]):  # drop what went out (partial writes)
                n -= len(iov[0])
                iov.pop(0)
            if n:
                iov[0] = memoryview(iov[0])[n:]


def _write_chunk(fd: int, begin: int, data: np.ndarray | bytes | list[np.ndarray], ctype: str, nrec: int,
                 decoded: int, zeros: bool = False) -> int:
    """Write a chunk at ``begin`` (its data in one piece or several); return its end."""
    size = sum(len(p) for p in data) if isinstance(data, list) else len(data)
    end = _chunk_end(begin, size, nrec)
    _ChunkOut(fd, begin, end).write(data, ctype, nrec, decoded, zeros)
    return end


def _padding(fd: int, pos: int) -> int:
    """Riegeli's padding chunk up to the next block boundary (after footer, postscript)."""
    length = _remaining(pos)
    if length == 0:
        return pos
    if length < CHUNK_HEADER:
        length += USABLE
    return _write_chunk(fd, pos, bytes(length - CHUNK_HEADER), "p", 0, 0, zeros=True)


def _binary_parts(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets as int64, values buffer as uint8) of a binary or large_binary array."""
    if pa.types.is_large_binary(values.type):
        odt = np.int64
    elif pa.types.is_binary(values.type):
        odt = np.int32
    else:
        raise TypeError(f"binary values expected, got {values.type}")
    n = len(values)
    bufs = values.buffers()
    offsets = np.frombuffer(bufs[1], dtype=odt, count=n + 1, offset=values.offset * np.dtype(odt).itemsize)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None and bufs[2].size else np.zeros(0, np.uint8)
    return offsets.astype(np.int64), data


def write_uncompressed(path: str, values: pa.Array, group: int, threads: int = 2) -> np.ndarray:
    """Write ``values`` (binary, no nulls) as an uncompressed ArrayRecord file with
    ``group`` records per chunk; return each record's physical offset in the file.

    Chunks are built and written by ``threads`` threads (hashing and ``pwritev`` release
    the GIL; measured faster with 2 than 1 even on a busy 2-core machine).
    """
    if not writer_available():
        raise RuntimeError("the ArrayRecord fast writer is not available here")
    if values.null_count:
        raise ValueError("null records cannot be written")
    group = max(1, int(group))
    offs, data = _binary_parts(values)
    n = len(values)
    enc, ends = varints(np.diff(offs))
    positions = np.empty(n, dtype=np.int64)
    # The layout first: where every chunk begins follows from the sizes alone.
    jobs = []
    footers: list[bytes] = []
    pos = _chunk_end(0, 0, 0)  # after the file signature
    for a in range(0, n, group):
        b = min(n, a + group)
        e0, e1 = int(ends[a - 1]) if a else 0, int(ends[b - 1])
        head = b"\x00" + _varint(e1 - e0)
        v0, v1 = int(offs[a]), int(offs[b])
        size = len(head) + e1 - e0 + v1 - v0
        first = _logical(pos) + CHUNK_HEADER + len(head) + e1 - e0
        positions[a:b] = first + (offs[a:b] - v0)
        jobs.append((pos, head, e0, e1, v0, v1, b - a))
        footers.append(b"\x08" + _varint(pos) + b"\x10" + _varint(v1 - v0) + b"\x18" + _varint(b - a))
        pos = _chunk_end(pos, size, b - a)

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def run(job: tuple) -> None:
        begin, head, e0, e1, v0, v1, count = job
        _write_chunk(fd, begin, [np.frombuffer(head, np.uint8), enc[e0:e1], data[v0:v1]], "r", count, v1 - v0)

    try:
        _write_chunk(fd, 0, b"", "s", 0, 0)  # file signature
        if threads > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(min(threads, len(jobs))) as ex:
                for _ in ex.map(run, jobs):
                    pass
        else:
            for job in jobs:
                run(job)
        options = (f"group_size:{group},transpose:false,pad_to_block_boundary:false,uncompressed,"
                   "max_parallelism:1").encode()
        meta = (b"\x08\x01\x10" + _varint(len(footers)) + b"\x18" + _varint(n) + b"\x22"
                + _varint(len(options)) + options)
        meta = b"\x0a" + _varint(len(meta)) + meta
        footer_begin = pos
        pos = _write_chunk(fd, pos, _simple_chunk([meta, *footers]), "r", len(footers) + 1,
                           len(meta) + sum(map(len, footers)))
        pos = _padding(fd, pos)
        post = b"\x08" + _varint(footer_begin) + b"\x10" + _varint(MAGIC)
        pos = _write_chunk(fd, pos, _simple_chunk([post] * 3), "r", 3, 3 * len(post))
        os.ftruncate(fd, _padding(fd, pos))  # the padding at the end is a hole: give the file its length
    finally:
        os.close(fd)
    return positions + BLOCK_HEADER * (positions // USABLE + 1)


def _simple_chunk(records: list[bytes]) -> bytes:
    """Data of an uncompressed simple chunk holding ``records``."""
    table = b"".join(_varint(len(r)) for r in records)
    return b"\x00" + _varint(len(table)) + table + b"".join(records)
