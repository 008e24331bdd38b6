"""A Segment-Anything-style transform: masks for images as a materialized view.

Space's example runs the Segment Anything model in a UDF. Model weights cannot be
downloaded here, so a classical segmentation (Gaussian blur, Otsu threshold, connected
components with scikit-image) stands in for it: same shape of pipeline, image bytes in,
a mask image and region stats out. The MV is refreshed on Ray, read through the FUSE
mount (the masks appear as PNG files under ``files/``), and refreshed again after new
images arrive: only those are segmented, and the mount shows them within a second.

    python scripts/examples/segment_anything.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import ray
from PIL import Image

from spacefs import DirCatalog

SIZE = 64


def make_image(seed: int, n_blobs: int) -> bytes:
    """A noisy dark image with ``n_blobs`` bright, well separated disks."""
    rng = np.random.default_rng(seed)
    img = rng.normal(40, 8, (SIZE, SIZE))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    centres = [(14, 14), (14, 48), (48, 14), (48, 48), (31, 31)][:n_blobs]
    for cy, cx in centres:
        r = rng.integers(5, 8)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.normal(200, 8)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def segment(batch: dict) -> dict:
    """The MV's UDF: one mask per image (each region its own grey level) and its stats."""
    from skimage import filters, measure, morphology

    masks, counts, areas = [], [], []
    for data in batch["image"]:
        img = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64) / 255.0
        smooth = filters.gaussian(img, sigma=1.0)
        foreground = morphology.remove_small_objects(smooth > filters.threshold_otsu(smooth), max_size=15)
        labels = measure.label(foreground)
        regions = measure.regionprops(labels)
        mask = (labels * (255 // max(1, len(regions)))).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(mask).save(buf, format="PNG")
        masks.append(buf.getvalue())
        counts.append(len(regions))
        areas.append([int(r.area) for r in regions])
    return {"id": batch["id"], "name": batch["name"], "num_segments": counts, "areas": areas, "mask": masks}


def spacefs(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "spacefs.cli", *args], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"spacefs {' '.join(args)} failed: {p.stderr.strip()}")
    return p.stdout.strip()


def wait_for(path: str, timeout: float = 10.0) -> float:
    """Seconds until ``path`` exists (a bounded poll: the mount shows commits within 1 s)."""
    start = time.monotonic()
    while not os.path.exists(path):
        if time.monotonic() - start > timeout:
            raise SystemExit(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="Directory to work in (created if missing; default: a new temporary one).")
    args = ap.parse_args()
    # Absolute, so every path printed below is one to paste; created if it does not exist yet.
    work = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="spacefs-sam-")
    os.makedirs(work, exist_ok=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    catalog = DirCatalog(os.path.join(work, "catalog"))
    images = catalog.create_dataset(
        "images", pa.schema([("id", pa.int64()), ("name", pa.string()), ("image", pa.binary())]),
        primary_keys=["id"], record_fields=["image"], file_layout={"path": "{name}", "content": "image"})
    blobs = {i: 1 + i % 5 for i in range(6)}  # image id -> number of disks drawn
    images.local().append({"id": [0, 1, 2, 3], "name": [f"img_{i:03d}.png" for i in range(4)],
                           "image": [make_image(i, blobs[i]) for i in range(4)]})

    out = pa.schema([("id", pa.int64()), ("name", pa.string()), ("num_segments", pa.int32()),
                     ("areas", pa.list_(pa.int64())), ("mask", pa.binary())])
    view = images.map_batches(segment, output_schema=out, input_fields=["name", "image"], output_record_fields=["mask"])
    mv = catalog.materialize("masks", view)
    mv.set_file_layout({"path": "{name}", "content": "mask"})
    r = mv.ray().refresh()
    first = r.snapshot_id  # (snapshot 1 is the layout's: the layout belongs to the snapshot)
    print(f"MV refreshed on Ray: {r.storage_statistics_update['rows']} masks")

    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt, exist_ok=True)
    spacefs("mount", catalog.location, mnt)
    try:
        files = os.path.join(mnt, "masks", "current", "files")
        print("mount: masks/current/files/ =", sorted(os.listdir(files)))
        for i in range(4):
            mask = np.asarray(Image.open(os.path.join(files, f"img_{i:03d}.png")))
            with open(os.path.join(mnt, "masks", "current", "rows", str(i), "num_segments")) as f:
                n = int(f.read())
            assert n == blobs[i] == len(np.unique(mask)) - 1, (i, n, blobs[i])
        print("masks read through the mount match the drawn disks:", [blobs[i] for i in range(4)])

        # New images arrive: the refresh segments only them; the mount shows them promptly.
        images.local().append({"id": [4, 5], "name": ["img_004.png", "img_005.png"],
                               "image": [make_image(i, blobs[i]) for i in (4, 5)]})
        r = mv.ray().refresh()
        print(f"refresh after 2 new images: +{r.storage_statistics_update['rows']} rows (snapshot {r.snapshot_id})")
        assert r.storage_statistics_update["rows"] == 2
        waited = wait_for(os.path.join(files, "img_005.png"))
        print(f"img_005.png visible in the mount after {waited:.2f} s; files now", len(os.listdir(files)))
        mask = np.asarray(Image.open(os.path.join(files, "img_005.png")))
        assert len(np.unique(mask)) - 1 == blobs[5]
        old = os.path.join(mnt, "masks", "versions", str(first), "files")
        print(f"masks/versions/{first}/files/ still holds", len(os.listdir(old)), "masks")
        assert len(os.listdir(old)) == 4
    finally:
        spacefs("umount", mnt)
    print("OK")


if __name__ == "__main__":
    main()
