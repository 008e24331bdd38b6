"""Give the zero padding of small files back to the file system (hole punching).

An ArrayRecord file ends with a postscript block aligned to 64 KiB, so even a file of
one 10-byte record is 128 KiB long, almost all zeros. Punching holes over its all-zero
pages keeps the file byte-identical for every reader (holes read as zeros) while the
disk keeps only the pages with data: a one-row write costs about its bytes plus
metadata. Where the file system cannot punch holes, nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
PAGE = 4096
# Only small files are worth it: in large ones the padding is a rounding error.
MAX_BYTES = 1 << 20

_libc = None
_supported = True


def _fallocate():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    return _libc.fallocate


def punch_zero_pages(path: str) -> int:
    """Deallocate the all-zero pages of a small file; returns the bytes given back."""
    global _supported
    if not _supported:
        return 0
    try:
        size = os.path.getsize(path)
        if size > MAX_BYTES or size < 2 * PAGE:
            return 0
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return 0
    try:
        data = os.pread(fd, size, 0)
        zero = bytes(PAGE)
        freed = 0
        start = None
        fallocate = _fallocate()
        for off in range(0, size - PAGE + 1, PAGE):
            if data[off:off + PAGE] == zero:
                start = off if start is None else start
            elif start is not None:
                freed += _punch(fallocate, fd, start, off - start)
                start = None
        if start is not None:
            freed += _punch(fallocate, fd, start, size - size % PAGE - start)
        return freed
    except OSError:
        return 0
    finally:
        os.close(fd)


def _punch(fallocate, fd: int, off: int, length: int) -> int:
    global _supported
    if length <= 0:
        return 0
    if fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, off, length) != 0:
        _supported = False  # EOPNOTSUPP and the like: stop trying in this process
        return 0
    return length
