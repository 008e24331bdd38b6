"""A writer process for concurrency and crash tests: ``python writer_proc.py DS OP ARGS``.

Prints one line per finished operation so a test can follow (and kill) it.
"""

import sys

from spacefs import Dataset


def rows(ids, tag=""):
    ids = list(ids)
    return {"id": ids, "image_name": [f"{i}{tag}.jpg" for i in ids], "feature": [f"data{i}{tag}".encode() for i in ids]}


def main() -> None:
    location, op = sys.argv[1], sys.argv[2]
    ds = Dataset.load(location)
    r = ds.local()
    if op == "append":  # append BASE COUNT: COUNT commits of one row each
        base, count = int(sys.argv[3]), int(sys.argv[4])
        for i in range(count):
            res = r.append(rows([base + i]))
            print(res.snapshot_id, flush=True)
    elif op == "upsert":  # upsert TAG COUNT KEYS...: COUNT upserts of the same keys
        tag, count, keys = sys.argv[3], int(sys.argv[4]), [int(k) for k in sys.argv[5:]]
        for i in range(count):
            r.upsert(rows(keys, tag=f"{tag}{i}"))
            print(i, flush=True)
    elif op == "tag":  # tag PREFIX COUNT
        prefix, count = sys.argv[3], int(sys.argv[4])
        for i in range(count):
            ds.add_tag(f"{prefix}{i}")
            print(i, flush=True)
    elif op == "delete":  # delete ID
        r.delete(f"id = {int(sys.argv[3])}")
        print("done", flush=True)
    elif op == "merge":  # merge SOURCE INTO ON_CONFLICT
        res = ds.merge(sys.argv[3], into=sys.argv[4], on_conflict=sys.argv[5])
        print(res.state.name, res.snapshot_id, flush=True)
    else:
        raise SystemExit(f"unknown op {op}")


if __name__ == "__main__":
    main()
