"""Parallel ingestion from WebDataset shards on Ray.

Eight tar shards (written with the ``webdataset`` package: ``.png``, ``.cls`` and
``.json`` per sample) are ingested by Ray tasks, one shard per task, all landing in one
snapshot: ``spacefs import webdataset --ray`` does the same from the command line. A
second batch of shards goes through the lower-level API, ``ds.ray().append_from`` with a
source function per shard. The result is read back as a Ray dataset, queried with SQL,
and exported to shards again.

    python scripts/examples/webdataset_ray.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
from functools import partial

import numpy as np
import ray
import webdataset as wds
from PIL import Image

from spacefs import Dataset, RayOptions
from spacefs.io import export_webdataset, import_webdataset
from spacefs.io.webdataset import rechunk_shard, shard_files

CLASSES = ["plane", "car", "bird"]


def write_shards(root: str, first: int, shards: int, per_shard: int = 40) -> None:
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(first)
    for s in range(first, first + shards):
        with wds.TarWriter(os.path.join(root, f"shard-{s:06d}.tar"), encoder=False) as sink:
            for i in range(per_shard):
                label = int(rng.integers(len(CLASSES)))
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
                sink.write({"__key__": f"{s:06d}_{i:04d}", "png": buf.getvalue(), "cls": str(label).encode(),
                            "json": json.dumps({"class": CLASSES[label], "shard": s}).encode()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="Directory to work in (created if missing; default: a new temporary one).")
    args = ap.parse_args()
    # Absolute, so every path printed below is one to paste; created if it does not exist yet.
    work = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="spacefs-wds-")
    os.makedirs(work, exist_ok=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    write_shards(os.path.join(work, "shards"), first=0, shards=8)
    loc = os.path.join(work, "samples")
    r = import_webdataset(os.path.join(work, "shards", "shard-{000000..000007}.tar"), loc, ray=True, max_parallelism=4)
    print(r.summary().replace(work + os.sep, ""))
    ds = Dataset.load(loc)
    print("schema:", ", ".join(f"{f.name}: {f.type}" for f in ds.schema), "| record fields:", ds.record_fields)
    assert r.snapshot_id == 1 and ds.num_rows() == 320

    # The same with the runner API: one source function per shard, one snapshot for all.
    write_shards(os.path.join(work, "more"), first=8, shards=4)
    sources = [partial(rechunk_shard, f, ds.schema) for f in shard_files(os.path.join(work, "more"))]
    job = ds.ray(RayOptions(max_parallelism=4)).append_from(sources)
    print(f"ds.ray().append_from({len(sources)} shard sources): {job.state.name}, snapshot {job.snapshot_id}, "
          f"+{job.storage_statistics_update['rows']} rows")
    assert ds.num_rows() == 480

    # Read back: a lazy Ray dataset, and SQL over the index files.
    rds = ds.ray_dataset(fields=["key", "cls"])
    print("ds.ray_dataset().count():", rds.count())
    per_class = ds.sql("SELECT cls, count(*) AS n FROM samples GROUP BY cls ORDER BY cls").to_pylist()
    print("samples per class:", {CLASSES[int(r["cls"])]: r["n"] for r in per_class})
    assert sum(r["n"] for r in per_class) == 480

    shards = export_webdataset(loc, os.path.join(work, "export"), samples_per_shard=100)
    n = sum(1 for s in shards for _ in wds.WebDataset(s, shardshuffle=False, empty_check=False))
    print(f"exported {len(shards)} shards with {n} samples")
    assert n == 480
    print("OK")


if __name__ == "__main__":
    main()
