"""Where a mount keeps its control socket, state and log, and what the kernel says
about a mountpoint. Both the daemon and its clients derive the same paths from the
mountpoint alone (its real path, hashed), so a client needs nothing but the mountpoint.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from typing import Any


def run_dir(uid: int | None = None) -> str:
    """The per-user directory of sockets and state files (``SPACEFS_RUN_DIR`` overrides)."""
    env = os.environ.get("SPACEFS_RUN_DIR")
    if env:
        return env
    uid = os.geteuid() if uid is None else uid
    if uid == 0 and os.path.isdir("/run") and os.access("/run", os.W_OK):
        return "/run/spacefs"
    return f"/tmp/spacefs-{uid}"


def _key(mountpoint: str) -> str:
    return hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:24]


def socket_path(mountpoint: str, uid: int | None = None) -> str:
    return os.path.join(run_dir(uid), f"{_key(mountpoint)}.sock")


def state_path(mountpoint: str, uid: int | None = None) -> str:
    return os.path.join(run_dir(uid), f"{_key(mountpoint)}.json")


def default_log_path(mountpoint: str) -> str:
    return os.path.join(run_dir(), f"{_key(mountpoint)}.log")


def read_state(mountpoint: str) -> dict[str, Any] | None:
    try:
        with open(state_path(mountpoint)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 0 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_type(mountpoint: str) -> str | None:
    """The file system type mounted exactly at ``mountpoint`` (e.g. ``fuse.spacefs``), or None."""
    target = os.path.abspath(mountpoint)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            if len(parts) >= 5 and _unescape(parts[4]) == target:
                found = right.split()[0] if right else "?"
    return found


def is_stale(mountpoint: str) -> bool:
    """A FUSE mount whose daemon is gone: every access fails with ENOTCONN."""
    try:
        os.stat(mountpoint)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def daemon_alive(pid: int) -> bool:
    """Whether ``pid`` is a running spacefs daemon (not a recycled pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"spacefs.mount.daemon" in cmd and state != "Z"
