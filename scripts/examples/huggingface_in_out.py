"""HuggingFace in and out.

A small image-classification dataset made with ``datasets`` (an ``Image`` column and a
``ClassLabel``) is saved with ``save_to_disk``, imported into spacefs (images stored as
ArrayRecord records, the HuggingFace features kept), edited with versions, read back
with ``load_dataset("parquet", data_files=ds.index_files())`` as in Space, and converted
back to a ``datasets.Dataset`` whose images decode as images again.

    python scripts/examples/huggingface_in_out.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile

import datasets
from PIL import Image

from spacefs import Dataset
from spacefs.io.huggingface import export_hf, import_hf

LABELS = ["circle", "square"]


def make_hf(path: str, n: int = 12) -> datasets.Dataset:
    images = []
    for i in range(n):
        img = Image.new("L", (16, 16), 0)
        img.paste(255 if i % 2 else 128, (4, 4, 12, 12))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
    features = datasets.Features({"id": datasets.Value("int64"), "image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=LABELS), "caption": datasets.Value("string")})
    hf = datasets.Dataset.from_dict({"id": list(range(n)), "image": images, "label": [i % 2 for i in range(n)],
                                     "caption": [f"shape number {i}" for i in range(n)]}, features=features)
    hf.save_to_disk(path)
    return hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="Directory to work in (created if missing; default: a new temporary one).")
    args = ap.parse_args()
    # Absolute, so every path printed below is one to paste; created if it does not exist yet.
    work = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="spacefs-hf-")
    os.makedirs(work, exist_ok=True)
    datasets.disable_progress_bars()
    make_hf(os.path.join(work, "hf_in"))

    # In: the same as `spacefs import hf hf_in shapes -k id` on the command line.
    r = import_hf(os.path.join(work, "hf_in"), os.path.join(work, "shapes"), primary_keys=["id"])
    ds = Dataset.load(r.location)
    print(r.summary().replace(work + os.sep, ""))
    print("record fields:", ds.record_fields, "| index fields:", [n for n in ds.schema.names if n not in ds.record_fields])
    ds.add_tag("imported")

    # Edit: captions fixed for two rows, one row dropped.
    ds.local().upsert({"id": [0, 1], "image": ds.local().read_all(filter_="id < 2", fields=["image"]).column("image"),
                       "label": [0, 1], "caption": ["a grey square", "a white square"]})
    ds.local().delete("id = 11")
    print(f"edited: {ds.num_rows('imported')} rows at 'imported', {ds.num_rows()} now")

    # Parquet index files load directly with HuggingFace, as in Space (records as references).
    hf_index = datasets.load_dataset("parquet", data_files={"train": ds.index_files()}, split="train")
    print("load_dataset('parquet', data_files=ds.index_files()):", hf_index.num_rows, "rows, columns",
          hf_index.column_names)
    assert hf_index.num_rows == 11 and set(hf_index[0]["image"]) == {"file", "pos", "size", "offset"}

    # Out: any version back to a datasets.Dataset, images decoded as PIL images again.
    now = ds.to_huggingface()
    old = ds.to_huggingface(version="imported")
    assert isinstance(now.features["image"], datasets.Image) and isinstance(now.features["label"], datasets.ClassLabel)
    first = next(r for r in now if r["id"] == 0)
    print("to_huggingface():", now.num_rows, "rows; row 0:", first["caption"], first["image"].size,
          now.features["label"].int2str(first["label"]))
    assert old.num_rows == 12 and next(r for r in old if r["id"] == 0)["caption"] == "shape number 0"

    # ...and to disk, ready for datasets.load_from_disk (or `spacefs export hf`).
    export_hf(ds.location, os.path.join(work, "hf_out"), version="imported")
    back = datasets.load_from_disk(os.path.join(work, "hf_out"))
    print("export_hf(version='imported') -> load_from_disk:", back.num_rows, "rows")
    assert back.num_rows == 12

    # The command line does the same.
    cli = [sys.executable, "-m", "spacefs.cli"]
    p = subprocess.run(cli + ["export", "hf", ds.location, os.path.join(work, "hf_cli")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    print("spacefs export hf:", p.stdout.strip().replace(work + os.sep, ""))
    print("OK")


if __name__ == "__main__":
    main()
