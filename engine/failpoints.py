"""Named points in the write path where a test can kill the writer.

Set ``SPACEFS_FAILPOINT=<name>`` in a writer's environment and the process SIGKILLs itself
when it reaches that point, so crash tests hit every step of a commit, not a lucky one.
"""

import os
import signal

POINTS = (
    "write:after_data",  # data files written, nothing referenced yet
    "commit:after_manifest",  # manifests written for the new snapshot
    "commit:before_publish",  # about to link the log entry
    "commit:after_publish",  # log entry linked: the commit has landed
    "commit:after_snapshot_link",  # snapshots/<id>.json linked, hint not yet updated
)


def hit(name: str) -> None:
    if os.environ.get("SPACEFS_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
