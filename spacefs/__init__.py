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
    RayOptions,
    errors,
)

__all__ = ["ChangeData", "ChangeType", "Dataset", "DirCatalog", "FileOptions", "JobResult", "RayOptions", "errors"]
