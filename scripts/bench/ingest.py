"""Ingestion benchmark: ``append_from`` with the Ray runner on 1 worker and on 2.

Each source makes its rows inside its task (int64 id, string label, 4 KiB random blob),
so the driver ships no data and the figure is what the workers sustain: generating,
writing the ArrayRecord and index files, and the commit. Runs alternate between the two
settings so machine noise falls on both alike; the figure is the median of the repeats
and the ratio is the 1-worker time over the 2-worker time (2.0 would be perfect scaling).

    .venv/bin/python scripts/bench/ingest.py            # 4 sources x 25,000 rows
    .venv/bin/python scripts/bench/ingest.py --quick    # smoke run
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import SCHEMA, base_parser, flush_dirty_pages, fresh, say, scratch  # noqa: E402

from spacefs import Dataset, RayOptions  # noqa: E402

SOURCES = 4
BATCH_ROWS = 5_000


def source(first: int, rows: int, seed: int) -> Iterator[pa.Table]:
    """Rows ``first .. first+rows`` in batches, made where the task runs."""
    rng = np.random.default_rng(seed)
    for start in range(first, first + rows, BATCH_ROWS):
        n = min(BATCH_ROWS, first + rows - start)
        ids = np.arange(start, start + n, dtype=np.int64)
        offsets = (np.arange(n + 1, dtype=np.int32) * 4096)
        blobs = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(rng.bytes(n * 4096))])
        yield pa.table([pa.array(ids), pa.array([f"label_{i % 100}" for i in ids.tolist()]), blobs], schema=SCHEMA)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    args = p.parse_args(argv)
    per_source = 1_000 if args.quick else (args.rows or 100_000) // SOURCES
    repeats = 2 if args.quick else 3
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    times: dict[int, list[float]] = {1: [], 2: []}
    with scratch(args, "spacefs-bench-ingest-") as root:
        fns = [functools.partial(source, i * per_source, per_source, i) for i in range(SOURCES)]
        for r in range(repeats + 1):  # the first round warms the workers up
            for workers in ([1, 2] if r % 2 == 0 else [2, 1]):
                ds = Dataset.create(fresh(os.path.join(root, f"w{workers}")), SCHEMA, ["id"], ["blob"])
                runner = ds.ray(ray_options=RayOptions(max_parallelism=workers))
                t0 = time.perf_counter()
                runner.append_from(fns)
                dt = time.perf_counter() - t0
                flush_dirty_pages()
                assert ds.local().read_all(fields=["id"]).num_rows == SOURCES * per_source
                if r:
                    times[workers].append(dt)
                say(f"  round {r}: {workers} worker(s) {dt:.2f} s")
    m1, m2 = float(np.median(times[1])), float(np.median(times[2]))
    mib = SOURCES * per_source * 4096 / (1 << 20)
    print(f"\nappend_from, Ray runner, {SOURCES} sources x {per_source:,} rows ({mib:,.0f} MiB of blobs), "
          f"median of {repeats}:")
    print(f"  1 worker : {m1:.2f} s ({mib / m1:,.0f} MiB/s)")
    print(f"  2 workers: {m2:.2f} s ({mib / m2:,.0f} MiB/s)")
    print(f"  speed-up : {m1 / m2:.2f}x (2.0 is perfect)")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
