"""Where everything of a dataset lives, relative to its directory (engine/FORMAT.md).

The one module that spells the on-disk layout: every other module (engine, mount, CLI,
importers) asks here, so the layout can change, or be served by another storage backend
(``backend.py``), in one place.
"""

from __future__ import annotations

import os
import uuid

FORMAT = "spacefs/1"

METADATA = "metadata"
DATASET_JSON = "metadata/dataset.json"  # immutable: format, kind, schema, keys, record fields
LOG_DIR = "metadata/log"  # <seq>.json, one per change of state
LOG_HINT = "metadata/log/LATEST"  # the newest seq, a hint only
SNAPSHOTS_DIR = "metadata/snapshots"  # <id>.json, hard links to log entries
MANIFESTS_DIR = "metadata/manifests"  # <uuid>.parquet
CHANGES_DIR = "metadata/changes"  # <uuid>.parquet: keys a snapshot deleted
VIEW_DEFINITION = "metadata/view.pkl"  # a materialized view's pickled view
DATA_DIR = "data"
INDEX_DIR = "data/index"  # <uuid>.parquet
RECORDS_DIR = "data/records"  # <field>/<uuid>.array_record

# The directories a new dataset is created with.
DIRS = (LOG_DIR, SNAPSHOTS_DIR, MANIFESTS_DIR, CHANGES_DIR, INDEX_DIR, RECORDS_DIR)
# Directories of files that may become unreferenced (vacuum looks there).
COLLECTABLE_DIRS = (DATA_DIR, MANIFESTS_DIR, CHANGES_DIR)

SEQ_DIGITS = 12  # log entry names: zero-padded sequence numbers


def data_path(location: str, rel: str) -> str:
    """The absolute path of ``rel`` (any path stored in metadata) in the dataset."""
    return os.path.join(location, rel)


def dataset_json(location: str) -> str:
    return os.path.join(location, DATASET_JSON)


def is_dataset(location: str) -> bool:
    """Whether ``location`` holds a dataset (its ``dataset.json`` exists)."""
    return os.path.isfile(dataset_json(location))


def datasets_in(directory: str) -> list[str]:
    """Names of the datasets directly under a catalog directory, sorted; hidden entries
    (datasets being created or deleted) are not datasets yet or any more."""
    return sorted(n for n in os.listdir(directory)
                  if not n.startswith(".") and is_dataset(os.path.join(directory, n)))


def log_entry(seq: int) -> str:
    return f"{LOG_DIR}/{seq:0{SEQ_DIGITS}d}.json"


def snapshot_entry(sid: int) -> str:
    return f"{SNAPSHOTS_DIR}/{sid:0{SEQ_DIGITS}d}.json"


def new_index_file() -> str:
    return f"{INDEX_DIR}/{uuid.uuid4().hex}.parquet"


def new_record_file(field: str) -> str:
    return f"{RECORDS_DIR}/{field}/{uuid.uuid4().hex}.array_record"


def new_manifest() -> str:
    return f"{MANIFESTS_DIR}/{uuid.uuid4().hex}.parquet"


def new_changes_file() -> str:
    return f"{CHANGES_DIR}/{uuid.uuid4().hex}.parquet"
