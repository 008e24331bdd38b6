"""``spacefs demo``: a small image catalog, mounted, read the way tools read folders.

Builds a catalog with one dataset of PNG images (shapes, labelled by shape) and a file
layout ``{label}/{image_name}``, mounts it, and shows ``ls``, ``cp``, a DuckDB query over
``index/`` through the mount, and a commit appearing live; then unmounts.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time

import pyarrow as pa

from spacefs.engine.catalog import DirCatalog

from .client import connect
from .launch import mounted

LABELS = ("circle", "square", "triangle")
SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("image_name", pa.string()),
                    ("width", pa.int32()), ("image", pa.binary())])
LAYOUT = {"path": "{label}/{image_name}", "content": "image"}


def draw(label: str, i: int, size: int = 48) -> bytes:
    """A small PNG of ``label`` (a shape) in a colour that varies with ``i``."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (250, 250, 245))
    d = ImageDraw.Draw(img)
    colour = ((60 + 37 * i) % 256, (120 + 53 * i) % 256, (200 + 71 * i) % 256)
    m = 6 + i % 6
    box = (m, m, size - m, size - m)
    if label == "circle":
        d.ellipse(box, fill=colour)
    elif label == "square":
        d.rectangle(box, fill=colour)
    elif label == "triangle":
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=colour)
    else:  # star
        c, r = size / 2, size / 2 - m
        pts = []
        for k in range(10):
            import math

            rad = r if k % 2 == 0 else r / 2.5
            a = math.pi / 2 + k * math.pi / 5
            pts.append((c + rad * math.cos(a), c - rad * math.sin(a)))
        d.polygon(pts, fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def rows(labels: tuple[str, ...], per_label: int, start_id: int = 0) -> dict[str, list]:
    out: dict[str, list] = {n: [] for n in SCHEMA.names}
    i = start_id
    for label in labels:
        for k in range(per_label):
            out["id"].append(i)
            out["label"].append(label)
            out["image_name"].append(f"{label}_{k:03d}.png")
            out["width"].append(48)
            out["image"].append(draw(label, i))
            i += 1
    return out


def build(catalog_dir: str, per_label: int = 10) -> DirCatalog:
    """The example catalog: dataset ``shapes`` with 3 labels x ``per_label`` images."""
    cat = DirCatalog(catalog_dir)
    ds = cat.create_dataset("shapes", SCHEMA, primary_keys=["id"], record_fields=["image"], file_layout=LAYOUT)
    ds.local().append(rows(LABELS, per_label))
    ds.add_tag("first")
    return cat


def _say(cmd: str) -> None:
    print(f"\n$ {cmd}", flush=True)


def _ls(path: str, limit: int = 12) -> None:
    names = sorted(os.listdir(path))
    shown = names[:limit]
    print("  ".join(n + ("/" if os.path.isdir(os.path.join(path, n)) and not os.path.islink(os.path.join(path, n)) else "")
                    for n in shown) + (f"  ... ({len(names)} entries)" if len(names) > limit else ""))


def run_demo(keep: str | None = None) -> None:
    t0 = time.monotonic()
    work = os.path.abspath(keep) if keep else tempfile.mkdtemp(prefix="spacefs-demo-")
    os.makedirs(work, exist_ok=True)
    catalog, mnt = os.path.join(work, "catalog"), os.path.join(work, "mnt")
    os.makedirs(mnt, exist_ok=True)
    try:
        print(f"Building an example catalog in {catalog}: dataset 'shapes', 30 PNG images in 3 labels,")
        print(f"file layout {LAYOUT}")
        build(catalog)
        with mounted(catalog, mnt) as info:
            print(f"Mounted at {mnt} (daemon pid {info.pid}, log {info.log})")
            cur = os.path.join(mnt, "shapes", "current")
            _say(f"ls {mnt}/shapes")
            _ls(os.path.join(mnt, "shapes"))
            _say("ls shapes/versions shapes/tags   # every snapshot; tags and branches are symlinks")
            _ls(os.path.join(mnt, "shapes", "versions"))
            print("tags/first -> " + os.readlink(os.path.join(mnt, "shapes", "tags", "first")))
            _say("ls shapes/current/   # current -> branches/main -> ../versions/<head>")
            _ls(cur)
            _say("ls shapes/current/files/circle   # the file layout: an ImageFolder-style tree")
            _ls(os.path.join(cur, "files", "circle"), 5)
            _say("ls shapes/current/rows/7   # one directory per row, one file per field")
            _ls(os.path.join(cur, "rows", "7"))
            print(f"label: {open(os.path.join(cur, 'rows', '7', 'label')).read()}")

            out = os.path.join(work, "circle_000.png")
            _say(f"cp shapes/current/files/circle/circle_000.png {out}")
            shutil.copyfile(os.path.join(cur, "files", "circle", "circle_000.png"), out)
            from PIL import Image

            with Image.open(out) as im:
                print(f"copied {os.path.getsize(out)} bytes: a {im.format} image of {im.size[0]}x{im.size[1]}")

            import duckdb

            q = (f"SELECT label, count(*) AS n, sum(image.size) AS png_bytes "
                 f"FROM read_parquet('{cur}/index/*.parquet') GROUP BY label ORDER BY label")
            print(f"\n>>> duckdb.sql(\"{q.replace(cur, 'shapes/current')}\")   # DuckDB's Python API", flush=True)
            for row in duckdb.sql(q).fetchall():
                print(f"  {row[0]:<9} {row[1]:>3} images {row[2]:>7} bytes")

            _say("spacefs.connect(mnt).append('shapes', <5 star images>)   # a commit through the control socket")
            before = os.readlink(os.path.join(mnt, "shapes", "branches", "main"))
            t = time.monotonic()
            with connect(mnt) as c:
                res = c.append("shapes", rows(("star",), 5, start_id=1000))
            star = os.path.join(cur, "files", "star")
            deadline = time.monotonic() + 5
            while not os.path.isdir(star) and time.monotonic() < deadline:
                time.sleep(0.01)
            after = os.readlink(os.path.join(mnt, "shapes", "branches", "main"))
            print(f"snapshot {res.snapshot_id} committed; branches/main: {before} -> {after}; "
                  f"files/star/ appeared after {1000 * (time.monotonic() - t):.0f} ms")
            _ls(star)
            old = os.path.join(mnt, "shapes", "tags", "first", "files")
            print(f"tags/first/files still shows {sorted(os.listdir(old))} (old versions never change)")
        print(f"\nUnmounted. Demo finished in {time.monotonic() - t0:.1f} s."
              + (f" The catalog is kept in {catalog}; mount it with: spacefs mount {catalog} {mnt}" if keep else ""))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
