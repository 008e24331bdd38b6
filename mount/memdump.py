"""Diagnostics for a long-running daemon: what its memory is made of.

With ``SPACEFS_MEMDUMP=SECONDS`` in its environment the daemon traces allocations
(``tracemalloc``, which slows it) and every SECONDS logs the sizes of its own tables
and the allocation sites that grew most since the previous dump. For finding leaks
(``scripts/bench/soak.py``), never on in normal use.
"""

from __future__ import annotations

import logging
import os
import tracemalloc
from typing import Any

import pyarrow as pa
import trio

log = logging.getLogger("spacefs.mount.memdump")


def interval() -> float:
    """Seconds between dumps from ``SPACEFS_MEMDUMP``; 0 when off."""
    try:
        return float(os.environ.get("SPACEFS_MEMDUMP", "0"))
    except ValueError:
        return 0.0


def table_sizes(tree: Any, ops: Any) -> dict[str, int]:
    """Entry counts of the daemon's caches and tables."""
    sizes = {"inodes": len(ops.inodes), "open_files": len(ops._files), "open_dirs": len(ops._dirs),
             "view_cache_entries": len(tree.cache), "view_cache_kib": tree.cache.nbytes // 1024,
             "datasets": len(tree._states), "arrow_kib": pa.total_allocated_bytes() // 1024}
    for name, st in list(tree._states.items()):
        sizes[f"{name}.snap_ns"] = len(st.snap_ns)
        sizes[f"{name}.dir_attrs"] = len(st.dir_attrs)
        sizes[f"{name}.snapshots"] = len(st.storage._snapshots)
        sizes[f"{name}.live"] = len(st.storage._live)
    return sizes


async def dump_forever(tree: Any, ops: Any, every: float) -> None:
    tracemalloc.start(8)
    prev = tracemalloc.take_snapshot()
    while True:
        await trio.sleep(every)
        snap = tracemalloc.take_snapshot()
        cur, peak = tracemalloc.get_traced_memory()
        log.info("memdump: traced %.1f MiB (peak %.1f); tables %s", cur / 2**20, peak / 2**20, table_sizes(tree, ops))
        for stat in snap.compare_to(prev, "traceback")[:6]:
            log.info("memdump: %+.1f KiB (%d blocks) %s", stat.size_diff / 1024, stat.count_diff,
                     " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in stat.traceback[:6]))
        prev = snap
