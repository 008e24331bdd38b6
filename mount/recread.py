"""Record bytes by range, from ArrayRecord files, with a non-blocking variant.

A record is a run of bytes in an uncompressed ArrayRecord file, interrupted every 64 KiB
by a 24-byte block header (see ``spacefs.engine.records``). ``read_range`` (the engine's
``read_record_range``) gathers a range of it with one ``preadv``, steering headers into a scratch buffer. With
``nowait`` it passes ``RWF_NOWAIT``: the kernel answers only from the page cache and
fails instead of waiting for the disk, so the event loop can try it inline and fall
back to a worker thread only on a real cache miss. Descriptors come leased from the
engine's record pool (``spacefs.engine.recordpool``), which owns every open record file.
"""

from __future__ import annotations

from spacefs.engine.records import read_record_range as read_range  # noqa: F401 (re-export)

INLINE_MAX = 1 << 20  # longest read tried on the event loop
