"""spacefs: one versioned store for ML data that is also a filesystem.

The API mirrors Google's Space (``from space import X`` becomes ``from spacefs import X``).
"""

from spacefs.engine import (
    ChangeData,
    ChangeType,
    Dataset,
    DirCatalog,
    FileOptions,
    JobResult,
    MaterializedView,
    RayOptions,
    TfFeatures,
    errors,
)
from spacefs.random_access import RandomAccessDataSource


def __getattr__(name: str):
    # ``connect`` lives in the mount layer: loaded on first use, so importing the
    # engine (which imports this package first) never loads the mount.
    if name == "connect":
        from spacefs.mount.client import connect

        return connect
    raise AttributeError(f"module 'spacefs' has no attribute {name!r}")

__all__ = ["ChangeData", "ChangeType", "Dataset", "DirCatalog", "FileOptions", "JobResult", "MaterializedView", "RandomAccessDataSource", "RayOptions", "TfFeatures", "connect", "errors"]
