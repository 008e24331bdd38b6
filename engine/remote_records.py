"""Records of ArrayRecord files on any backend, by byte range, through the chunk cache.

On disk a record is one ``pread`` (engine/records.py). On object storage the same index
references (physical offset, size) become ranges of one ``read_ranges`` per file: nearby
records share a GET, the GETs of a batch run in parallel, and with a ``ChunkCache`` a
second read of the same records makes no request. The record's physical extent includes
the 24-byte Riegeli block header at each 64 KiB boundary it crosses; those are cut out
here exactly as the local reader does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .backend import Backend
from .chunkcache import ChunkCache
from .errors import UserInputError
from .objstore import pool
from .records import _phys_end_vec, _strip_headers


def read_records(backend: Backend, path: str, offsets: Sequence[int] | np.ndarray,
                 sizes: Sequence[int] | np.ndarray, cache: ChunkCache | None = None) -> list[bytes]:
    """The records of ``path`` at physical ``offsets`` with byte ``sizes``, in that order."""
    off = np.asarray(offsets, dtype=np.int64)
    size = np.asarray(sizes, dtype=np.int64)
    if len(off) and int(off.min()) < 0:
        # Compressed chunks need the whole chunk decoded; datasets on object storage are
        # written uncompressed (the default), which is what makes ranged reads possible.
        raise UserInputError(f"{backend.uri}/{path} has compressed chunks: records cannot be read by range")
    end = np.where(size > 0, _phys_end_vec(off, np.maximum(size, 1)), off)
    ranges = [(int(o), int(e - o)) for o, e in zip(off, end, strict=True)]
    bufs = cache.read_ranges(backend, path, ranges) if cache else backend.read_ranges(path, ranges)
    out = []
    for buf, o, s in zip(bufs, off, size, strict=True):
        s = int(s)
        out.append(buf if len(buf) == s else _strip_headers(buf, int(o), s, int(o)))
    return out


def read_refs(backend: Backend, refs: Sequence[dict], cache: ChunkCache | None = None) -> list[bytes]:
    """The records of index references (``{file, offset, size, ...}``), in their order.

    References are grouped by record file; the files are read in parallel, each with one
    ``read_records`` (so one batched fetch per file, or none when cached).
    """
    by_file: dict[str, list[int]] = {}
    for k, ref in enumerate(refs):
        by_file.setdefault(ref["file"], []).append(k)
    out: list[bytes] = [b""] * len(refs)

    def one(path: str, ks: list[int]) -> None:
        got = read_records(backend, path, [refs[k]["offset"] for k in ks], [refs[k]["size"] for k in ks], cache)
        for k, v in zip(ks, got, strict=True):
            out[k] = v

    if len(by_file) == 1:
        one(*next(iter(by_file.items())))
    else:
        for f in [pool("files").submit(one, p, ks) for p, ks in by_file.items()]:
            f.result()
    return out
