"""A ground-truth database for Label Studio.

Each labeling round is exported from Label Studio as JSON (the "JSON" export: a list of
tasks with their annotations). This script makes two such exports, keeps the ground
truth in a spacefs dataset with one tagged version per round (only tasks whose labels
changed are rewritten), diffs the two rounds, and writes a round back out in Label
Studio's import format (tasks with ``data`` and ``annotations``), ready to load into a
new project.

    python scripts/examples/label_studio.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import pyarrow as pa

from spacefs import ChangeType, Dataset

SCHEMA = pa.schema([
    ("task_id", pa.int64()),
    ("image", pa.string()),
    ("annotation_id", pa.int64()),
    ("annotator", pa.int64()),
    ("updated_at", pa.string()),
    ("labels", pa.list_(pa.string())),
    ("data", pa.string()),    # the task's data dict, as JSON
    ("result", pa.string()),  # the annotation's result list, as JSON (DuckDB's json functions read it)
])


# -- what Label Studio exports -----------------------------------------------------
def box(region_id: str, label: str, x: float, y: float) -> dict:
    return {"id": region_id, "type": "rectanglelabels", "from_name": "label", "to_name": "image",
            "original_width": 640, "original_height": 480, "image_rotation": 0,
            "value": {"rotation": 0, "x": x, "y": y, "width": 20.0, "height": 15.0, "rectanglelabels": [label]}}


def task(task_id: int, labels: list[str], annotator: int = 1, when: str = "2026-11-02T10:00:00.000Z",
         cancelled: bool = False) -> dict:
    """A task as Label Studio's JSON export writes it."""
    result = [box(f"r{task_id}_{i}", lab, 10.0 + 25 * i, 20.0) for i, lab in enumerate(labels)]
    return {"id": task_id, "data": {"image": f"/data/upload/1/img_{task_id:03d}.jpg"},
            "annotations": [{"id": 1000 + task_id, "completed_by": annotator, "result": result,
                             "was_cancelled": cancelled, "ground_truth": False, "created_at": when,
                             "updated_at": when, "lead_time": 4.2}],
            "predictions": [], "meta": {}, "created_at": "2026-11-01T09:00:00.000Z", "project": 1}


def round_one() -> list[dict]:
    labels = {1: ["Cat"], 2: ["Dog"], 3: ["Cat", "Dog"], 4: ["Dog"], 5: ["Cat"], 6: ["Cat", "Cat"], 7: ["Dog"], 8: []}
    return [task(i, labs) for i, labs in labels.items()]


def round_two() -> list[dict]:
    """Round 2: tasks 3 and 5 relabeled by a reviewer, task 7 removed from the project,
    task 8's annotation cancelled, tasks 9 and 10 new."""
    tasks = {t["id"]: t for t in round_one()}
    later = "2026-11-09T15:30:00.000Z"
    tasks[3] = task(3, ["Cat", "Fox"], annotator=2, when=later)
    tasks[5] = task(5, ["Dog"], annotator=2, when=later)
    del tasks[7]
    tasks[8] = task(8, [], when=later, cancelled=True)
    tasks[9] = task(9, ["Fox"], annotator=2, when=later)
    tasks[10] = task(10, ["Cat"], annotator=2, when=later)
    return [tasks[k] for k in sorted(tasks)]


# -- export <-> rows ---------------------------------------------------------------
def rows_from_export(tasks: list[dict]) -> pa.Table:
    """One row per task with a completed annotation (its latest one)."""
    rows = []
    for t in tasks:
        done = [a for a in t.get("annotations", []) if not a.get("was_cancelled")]
        if not done:
            continue
        a = max(done, key=lambda a: a["updated_at"])
        labels = [lab for r in a["result"] for lab in r.get("value", {}).get("rectanglelabels", [])]
        rows.append({"task_id": t["id"], "image": t["data"].get("image"), "annotation_id": a["id"],
                     "annotator": a.get("completed_by"), "updated_at": a["updated_at"], "labels": labels,
                     "data": json.dumps(t["data"], sort_keys=True), "result": json.dumps(a["result"], sort_keys=True)})
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def sync_round(ds: Dataset, tasks: list[dict], tag: str) -> dict[str, int]:
    """Make the dataset hold exactly this export: upsert new or changed tasks, delete
    tasks no longer annotated, then tag the version. Unchanged tasks are not rewritten,
    so the diff between rounds is exactly what the annotators changed."""
    new = rows_from_export(tasks)
    stored = {r["task_id"]: r for r in ds.local().read_all().to_pylist()}
    changed = [r for r in new.to_pylist() if stored.get(r["task_id"]) != r]
    gone = sorted(set(stored) - set(new.column("task_id").to_pylist()))
    if changed:
        ds.local().upsert(pa.Table.from_pylist(changed, schema=SCHEMA))
    if gone:
        ds.local().delete(f"task_id IN ({', '.join(map(str, gone))})")
    ds.add_tag(tag)
    return {"upserted": len(changed), "deleted": len(gone)}


def to_label_studio(ds: Dataset, version) -> list[dict]:
    """A version as tasks in Label Studio's import format."""
    out = []
    for r in ds.local().read_all(version=version).sort_by("task_id").to_pylist():
        out.append({"id": r["task_id"], "data": json.loads(r["data"]),
                    "annotations": [{"result": json.loads(r["result"]), "completed_by": r["annotator"]}]})
    return out


def round_diff(ds: Dataset, start: str, end: str) -> dict[str, list[int]]:
    """Tasks added, relabeled and removed between two tagged rounds."""
    deleted: set[int] = set()
    added: set[int] = set()
    for change in ds.local().diff(start, end):
        keys = set(change.data.column("task_id").to_pylist())
        if change.change_type == ChangeType.DELETE:
            deleted |= keys
        else:
            added |= keys
    return {"added": sorted(added - deleted), "relabeled": sorted(added & deleted), "removed": sorted(deleted - added)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="Directory to work in (created if missing; default: a new temporary one).")
    args = ap.parse_args()
    # Absolute, so every path printed below is one to paste; created if it does not exist yet.
    work = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="spacefs-labelstudio-")
    os.makedirs(work, exist_ok=True)
    for name, tasks in (("export_round1.json", round_one()), ("export_round2.json", round_two())):
        with open(os.path.join(work, name), "w") as f:
            json.dump(tasks, f, indent=1)

    ds = Dataset.create(os.path.join(work, "ground_truth"), SCHEMA, primary_keys=["task_id"])
    for tag, name in (("round-1", "export_round1.json"), ("round-2", "export_round2.json")):
        with open(os.path.join(work, name)) as f:
            stats = sync_round(ds, json.load(f), tag)
        print(f"{tag}: {stats}, {ds.num_rows()} tasks with ground truth")

    diff = round_diff(ds, "round-1", "round-2")
    print("diff round-1..round-2:", diff)
    assert diff == {"added": [9, 10], "relabeled": [3, 5], "removed": [7, 8]}, diff
    before = {r["task_id"]: r["labels"] for r in ds.local().read_all(version="round-1", fields=["task_id", "labels"]).to_pylist()}
    after = {r["task_id"]: r["labels"] for r in ds.local().read_all(fields=["task_id", "labels"]).to_pylist()}
    for t in diff["relabeled"]:
        print(f"  task {t}: {before[t]} -> {after[t]}")

    # SQL over rounds: label counts per round, straight from the index Parquet files.
    query = "SELECT label, count(*) AS n FROM (SELECT unnest(labels) AS label FROM ground_truth) GROUP BY label ORDER BY label"
    for tag in ("round-1", "round-2"):
        print(f"labels in {tag}:", {r["label"]: r["n"] for r in ds.sql(query, version=tag).to_pylist()})

    # Back to Label Studio: round 1 as an import file, identical to what was labeled then.
    tasks = to_label_studio(ds, "round-1")
    path = os.path.join(work, "import_round1.json")
    with open(path, "w") as f:
        json.dump(tasks, f, indent=1)
    original = {t["id"]: t for t in round_one()}
    for t in tasks:
        assert t["data"] == original[t["id"]]["data"]
        assert t["annotations"][0]["result"] == original[t["id"]]["annotations"][0]["result"]
    print(f"wrote {len(tasks)} tasks in Label Studio import format to {os.path.basename(path)}")
    print("OK")


if __name__ == "__main__":
    main()
