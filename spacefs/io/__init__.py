"""Getting data in and out: Parquet, folders of files, WebDataset shards, HuggingFace.

Each importer writes one snapshot or none, creating the dataset if it does not exist;
each exporter writes a version into a new directory, renamed into place when complete.
"""

from .folder import export_folder, import_folder
from .parquet import export_parquet, import_parquet
from .target import ImportResult
from .webdataset import export_webdataset, import_webdataset

__all__ = [
    "ImportResult",
    "export_folder",
    "export_parquet",
    "export_webdataset",
    "import_folder",
    "import_parquet",
    "import_webdataset",
]
