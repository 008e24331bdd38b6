"""Small result types shared by runners."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pyarrow as pa


class ChangeType(Enum):
    """The kind of a change between versions."""

    DELETE = "DELETE"
    ADD = "ADD"


@dataclass
class ChangeData:
    """Rows added or deleted by one snapshot (deletes carry key columns only)."""

    snapshot_id: int
    change_type: ChangeType
    data: pa.Table


@dataclass
class JobResult:
    """The outcome of a write: SUCCEEDED with a snapshot id, or SKIPPED (no change)."""

    class State(Enum):
        """SUCCEEDED: a snapshot was made; FAILED: the write failed; SKIPPED: nothing to change."""
        SUCCEEDED = 1
        FAILED = 2
        SKIPPED = 3

    state: State
    storage_statistics_update: dict[str, int] = field(default_factory=dict)
    error_message: str | None = None
    snapshot_id: int | None = None
    # A merge that only moved the branch head to the source's snapshot (no new snapshot).
    fast_forward: bool = False

    @classmethod
    def skipped(cls) -> JobResult:
        """The result of a write that had nothing to change (no snapshot made)."""
        return cls(cls.State.SKIPPED)

    @classmethod
    def from_snapshot(cls, storage: Any, snap: dict[str, Any] | None) -> JobResult:
        """The result of the commit of ``snap`` (None: skipped), with its change in statistics."""
        if snap is None:
            return cls.skipped()
        parent = storage.snapshot(snap["parent"])["stats"] if snap["parent"] is not None else {}
        update = {k: v - parent.get(k, 0) for k, v in snap["stats"].items()}
        return cls(cls.State.SUCCEEDED, update, None, snap["id"])
