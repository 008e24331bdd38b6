"""The spacefs mounts of this machine, as ``spacefs mounts`` shows them.

The kernel's mount table (``/proc/self/mountinfo``) says what is mounted where; each
daemon's state file (beside its control socket, see ``paths``) adds the source, the
daemon's pid and its log. A mount whose daemon is gone is listed as stale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from . import paths

FSTYPE = "fuse.spacefs"  # the daemon mounts with subtype=spacefs


@dataclass(frozen=True)
class ActiveMount:
    """One spacefs mount: where, of what, served by which daemon, logging where."""

    mountpoint: str
    source: str | None
    pid: int | None
    log: str | None
    state: str  # "serving", or "stale" when the daemon is gone (spacefs umount clears it)

    def as_dict(self) -> dict[str, Any]:
        """The mount as a plain dict (for ``--json``)."""
        return asdict(self)


def mountpoints() -> list[str]:
    """Mountpoints of spacefs file systems in the kernel's mount table, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            if len(parts) >= 5 and right.split()[:1] == [FSTYPE]:
                out.append(paths._unescape(parts[4]))
    return out


def active_mounts() -> list[ActiveMount]:
    """Every spacefs mount of this machine visible here, with its daemon's details."""
    found = []
    for mp in mountpoints():
        state = paths.read_state(mp) or {}
        pid = state.get("pid")
        # Never stat the mountpoint: a wedged daemon would hang the listing with it.
        alive = bool(pid) and paths.daemon_alive(pid)
        found.append(ActiveMount(mp, state.get("source"), pid, state.get("log"), "serving" if alive else "stale"))
    return found
