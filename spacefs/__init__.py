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
from spacefs.mount.client import connect
from spacefs.random_access import RandomAccessDataSource

__all__ = ["ChangeData", "ChangeType", "Dataset", "DirCatalog", "FileOptions", "JobResult", "MaterializedView", "RandomAccessDataSource", "RayOptions", "TfFeatures", "connect", "errors"]
