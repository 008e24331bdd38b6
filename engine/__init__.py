"""The spacefs storage engine: versioned datasets on Parquet and ArrayRecord.

No FUSE here: the mount (``spacefs.mount``) and the public API (``spacefs``) build on it.
"""

from . import errors
from .catalog import DirCatalog
from .dataset import Dataset
from .mv import MaterializedView
from .options import FileOptions, RayOptions
from .tf_features import TfFeatures
from .types import ChangeData, ChangeType, JobResult

__all__ = ["ChangeData", "ChangeType", "Dataset", "DirCatalog", "FileOptions", "JobResult", "MaterializedView", "RayOptions", "TfFeatures", "errors"]
