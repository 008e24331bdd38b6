"""COCO-style detection data in spacefs: images plus a COCO annotation JSON.

The script draws a few images with coloured boxes, writes their COCO annotation file,
reads it with ``pycocotools``, and stores one row per image: the image bytes as a record,
the objects as ``TfFeatures`` (TFDS's bbox/label serializer, as TFDS's own COCO builder
does), and a few index fields that DuckDB queries directly. Then it fixes a label,
deletes a bad image, and reads the dataset as it was before the fix.

    python scripts/examples/coco_detection.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw
from pycocotools.coco import COCO

from spacefs import DirCatalog, TfFeatures

CATEGORIES = {1: ("red_box", (220, 30, 30)), 2: ("green_box", (30, 200, 30)), 3: ("blue_box", (30, 30, 220))}
NAMES = [name for name, _ in CATEGORIES.values()]


def make_coco(root: str, n_images: int = 10, seed: int = 7) -> str:
    """Images with 1-3 filled boxes each, and their COCO annotation JSON."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        w, h = 96, 64
        img = Image.new("RGB", (w, h), (245, 245, 245))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(1, 3)):
            cat = rng.choice(list(CATEGORIES))
            bw, bh = rng.randint(10, 30), rng.randint(10, 25)
            x, y = rng.randint(0, w - bw), rng.randint(0, h - bh)
            draw.rectangle([x, y, x + bw - 1, y + bh - 1], fill=CATEGORIES[cat][1])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
        name = f"{image_id:06d}.png"
        img.save(os.path.join(root, "images", name))
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": i, "name": n, "supercategory": "box"} for i, (n, _) in CATEGORIES.items()]}
    path = os.path.join(root, "annotations.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def objects_features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({"objects": tfds.features.Sequence({
        "bbox": tfds.features.BBoxFeature(),
        "label": tfds.features.ClassLabel(names=NAMES),
        "area": np.int64,
        "id": np.int64,
    })})


def to_objects(anns: list[dict], width: int, height: int) -> dict:
    """COCO boxes ([x, y, w, h] in pixels) as TFDS boxes ([ymin, xmin, ymax, xmax] in 0..1)."""
    boxes = [[a["bbox"][1] / height, a["bbox"][0] / width, (a["bbox"][1] + a["bbox"][3]) / height,
              (a["bbox"][0] + a["bbox"][2]) / width] for a in anns]
    return {"objects": {
        "bbox": np.array(boxes, np.float32).reshape(-1, 4),
        "label": np.array([NAMES.index(CATEGORIES[a["category_id"]][0]) for a in anns], np.int64),
        "area": np.array([a["area"] for a in anns], np.int64),
        "id": np.array([a["id"] for a in anns], np.int64),
    }}


def rows_from_coco(coco: COCO, image_dir: str, image_ids: list[int]) -> dict[str, list]:
    rows: dict[str, list] = {k: [] for k in ("image_id", "file_name", "width", "height", "labels",
                                             "num_objects", "image", "objects")}
    for info in coco.loadImgs(image_ids):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]]))
        with open(os.path.join(image_dir, info["file_name"]), "rb") as f:
            rows["image"].append(f.read())
        rows["image_id"].append(info["id"])
        rows["file_name"].append(info["file_name"])
        rows["width"].append(info["width"])
        rows["height"].append(info["height"])
        rows["labels"].append(sorted(CATEGORIES[a["category_id"]][0] for a in anns))
        rows["num_objects"].append(len(anns))
        rows["objects"].append(to_objects(anns, info["width"], info["height"]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="Directory to work in (created if missing; default: a new temporary one).")
    args = ap.parse_args()
    # Absolute, so every path printed below is one to paste; created if it does not exist yet.
    work = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="spacefs-coco-")
    os.makedirs(work, exist_ok=True)

    ann_file = make_coco(os.path.join(work, "coco"))
    coco = COCO(ann_file)
    objects_type = TfFeatures(objects_features())
    schema = pa.schema([("image_id", pa.int64()), ("file_name", pa.string()), ("width", pa.int32()),
                        ("height", pa.int32()), ("labels", pa.list_(pa.string())), ("num_objects", pa.int32()),
                        ("image", pa.binary()), ("objects", objects_type)])
    catalog = DirCatalog(os.path.join(work, "catalog"))
    ds = catalog.create_dataset("coco", schema, primary_keys=["image_id"], record_fields=["image", "objects"])
    ds.local().append(rows_from_coco(coco, os.path.join(work, "coco", "images"), sorted(coco.getImgIds())))
    ds.add_tag("raw")
    print(f"stored {ds.num_rows()} images, {len(coco.getAnnIds())} objects")

    # DuckDB over the index Parquet files: objects per category, checked against pycocotools.
    per_cat = ds.sql("SELECT label, count(*) AS n FROM (SELECT unnest(labels) AS label FROM coco) "
                     "GROUP BY label ORDER BY label").to_pylist()
    counts = {r["label"]: r["n"] for r in per_cat}
    for cat_id, (name, _) in CATEGORIES.items():
        assert counts.get(name, 0) == len(coco.getAnnIds(catIds=[cat_id])), (name, counts)
    print("objects per category (DuckDB):", counts)
    busy = ds.sql("SELECT image_id FROM coco WHERE num_objects >= 3 ORDER BY image_id").column("image_id").to_pylist()
    print("images with 3+ objects:", busy)

    # Records decode: the image is a PNG, the objects are TFDS-style numpy dicts.
    row = ds.local().read_all(filter_="image_id = 1").to_pylist()[0]
    assert Image.open(io.BytesIO(row["image"])).size == (96, 64)
    objs = objects_type.deserialize(row["objects"])["objects"]
    first = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
    x, y, w, h = first["bbox"]
    assert np.allclose(objs["bbox"][0], [y / 64, x / 96, (y + h) / 64, (x + w) / 96], atol=1e-6)
    print(f"image 1: {len(objs['label'])} objects, first box {[round(float(v), 3) for v in objs['bbox'][0]]}")

    # A reviewer relabels every object of image 2 and rejects image 5.
    fixed = rows_from_coco(coco, os.path.join(work, "coco", "images"), [2])
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[2]))
    fixed["objects"] = [to_objects([dict(a, category_id=3) for a in anns], 96, 64)]
    fixed["labels"] = [["blue_box"] * len(anns)]
    ds.local().upsert(fixed)
    ds.local().delete(pc.field("image_id") == 5)
    ds.add_tag("reviewed")
    print(f"after review: {ds.num_rows()} images; image 2 labels",
          ds.local().read_all(filter_="image_id = 2", fields=["labels"]).column("labels")[0].as_py())

    # Time travel: the raw version is still there, byte for byte.
    raw = ds.local().read_all(version="raw", filter_="image_id = 2", fields=["labels", "objects"]).to_pylist()[0]
    raw_labels = [NAMES[i] for i in objects_type.deserialize(raw["objects"])["objects"]["label"]]
    assert sorted(raw_labels) == raw["labels"]
    print("image 2 labels at 'raw':", raw["labels"])
    assert ds.num_rows("raw") == 10 and ds.num_rows("reviewed") == 9
    changes = [(c.snapshot_id, c.change_type.value, sorted(c.data.column("image_id").to_pylist()))
               for c in ds.local().diff("raw", "reviewed")]
    print("diff raw..reviewed:", changes)
    print("versions:", [(r["snapshot_id"], r["tag_or_branch"]) for r in ds.versions().to_pylist()])
    print("OK")


if __name__ == "__main__":
    main()
