"""A log writer process for the object-storage commit tests: ``python objlog_writer.py LOCATION WRITER N``.

Publishes N snapshot entries through ``ObjectLog``, each rebuilt on the head it lost to,
and prints one line per landed entry so a test can follow (and kill) it.
"""

import random
import sys
import time

from spacefs.engine.backend import backend_for
from spacefs.engine.objlog import ObjectLog


def next_doc(head, writer: str, i: int) -> dict:
    sid = head.last_snapshot_id + 1
    snap = {"id": sid, "parent": head.branches["main"], "branch": "main", "op": "append",
            "writer": writer, "i": i, "manifests": [], "delta": None, "deleted": None}
    return {"seq": head.seq + 1, "op": "append", "last_snapshot_id": sid, "branches": {**head.branches, "main": sid},
            "tags": head.tags, "settings": head.settings, "snapshot": snap}


def main() -> None:
    location, writer, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    log = ObjectLog(backend_for(location))
    lost = 0
    for i in range(n):
        for attempt in range(1000):
            doc = next_doc(log.latest(), writer, i)
            if log.try_publish(doc):
                print(doc["seq"], flush=True)
                break
            lost += 1
            time.sleep(random.uniform(0, min(0.002 * 2 ** min(attempt, 6), 0.1)))  # jittered backoff
        else:
            raise SystemExit(f"{writer}: entry {i} lost 1000 times")
    print(f"lost {lost}", file=sys.stderr)


if __name__ == "__main__":
    main()
