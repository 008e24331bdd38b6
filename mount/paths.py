"""Where a mount keeps its control socket, state and log, and what the kernel says
about a mountpoint.

Layout (SECURITY.md): ``<run dir>/<key>/{control.sock,state.json,daemon.log}``, where the
run dir is ``SPACEFS_RUN_DIR`` if set, else ``/run/spacefs`` for root and
``/tmp/spacefs-<uid>`` for other users, and ``<key>`` hashes the mountpoint's real path.
Both depend only on the mountpoint and its owner (the uid the mount root reports), never
on who asks, so any user's client finds a mount's socket from the mountpoint alone.

The run dir is shared by one user's mounts: it is created once with mode 0711 (others may
pass through, not list) and later mounts never take permissions away from it. Each
mount's own directory carries that mount's mode: 0700, or 0711 when other users may
reach its socket. Before anything is created or opened in them, both are checked: not a
symbolic link, owned by the user (the run dir may also be a root-owned sticky directory),
not writable by group or others. So another user who pre-creates ``/tmp/spacefs-<uid>``
makes the mount fail with a clear error instead of receiving its log or socket.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
from typing import Any

from spacefs.engine.errors import SpaceError

SOCKET, STATE, LOG = "control.sock", "state.json", "daemon.log"


class UnsafeRunDirError(SpaceError):
    """A run directory (or a file in it) that another user could control."""


def run_dir(uid: int | None = None) -> str:
    """The directory of ``uid``'s mounts (``SPACEFS_RUN_DIR`` overrides, for every user)."""
    env = os.environ.get("SPACEFS_RUN_DIR")
    if env:
        return os.path.abspath(env)
    uid = os.geteuid() if uid is None else uid
    if uid == 0 and os.path.isdir("/run"):
        return "/run/spacefs"
    return f"/tmp/spacefs-{uid}"


def _key(mountpoint: str) -> str:
    return hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:24]


def mount_dir(mountpoint: str, uid: int | None = None) -> str:
    return os.path.join(run_dir(uid), _key(mountpoint))


def socket_path(mountpoint: str, uid: int | None = None) -> str:
    return os.path.join(mount_dir(mountpoint, uid), SOCKET)


def state_path(mountpoint: str, uid: int | None = None) -> str:
    return os.path.join(mount_dir(mountpoint, uid), STATE)


def default_log_path(mountpoint: str) -> str:
    return os.path.join(mount_dir(mountpoint), LOG)


def _unsafe(path: str, st: os.stat_result, uid: int, *, shared_ok: bool = False) -> str | None:
    """Why ``path`` (lstat ``st``) must not hold ``uid``'s files, or None if it may."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if shared_ok and st.st_uid == 0 and st.st_mode & stat.S_ISVTX:
        return None  # a root-owned sticky directory like /tmp: entries are safe from others
    if st.st_uid != uid:
        return f"belongs to uid {st.st_uid}, not to uid {uid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _make_dir(path: str, mode: int, uid: int, *, shared_ok: bool = False) -> bool:
    """Create ``path`` with exactly ``mode`` or check the existing one; True if created."""
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        created = False
    st = os.lstat(path)
    why = _unsafe(path, st, uid, shared_ok=shared_ok)
    if why:
        raise UnsafeRunDirError(f"{path} {why}; refusing to use it for spacefs sockets and logs "
                                "(remove it, or set SPACEFS_RUN_DIR to a directory of your own)")
    if created:
        os.chmod(path, mode)  # not left to the umask
    return created


def prepare_mount_dir(mountpoint: str, *, shared: bool = False) -> str:
    """Create (or check) the run dir and this mount's directory; return the latter.

    ``shared``: users other than the owner must reach the socket, so the mount's directory
    is 0711 and the run dir gains the search bits it may lack (never loses any).
    """
    uid = os.geteuid()
    base = run_dir()
    os.makedirs(os.path.dirname(base), exist_ok=True)
    _make_dir(base, 0o711, uid, shared_ok=True)
    st = os.lstat(base)
    if shared and st.st_uid == uid and (st.st_mode & 0o011) != 0o011:
        os.chmod(base, stat.S_IMODE(st.st_mode) | 0o011)
    d = mount_dir(mountpoint)
    mode = 0o711 if shared else 0o700
    _make_dir(d, mode, uid)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, mode)  # this mount's own directory: its mode is this mount's choice
    finally:
        os.close(fd)
    return d


def open_log(path: str) -> int:
    """Open a log for appending without following a symbolic link at ``path``; the file
    must be a regular file of this user. Returns the descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeRunDirError(f"log file {path} is a symbolic link; refusing to write through it") from None
        raise SpaceError(f"cannot open the log file {path}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise UnsafeRunDirError(f"log file {path} is not a regular file of uid {os.geteuid()}; refusing it")
    return fd


def write_state(path: str, state: dict[str, Any]) -> None:
    """Write a mount's state file (``state_path``) atomically, in its checked directory.
    Takes the path, not the mountpoint: once mounted, resolving the mountpoint would ask
    the daemon itself, which may be the caller."""
    tmp = path + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def remove_mount_files(directory: str) -> None:
    """Remove a mount's socket and state from its ``mount_dir`` (the log stays), and the
    directory if that leaves it empty."""
    for name in (SOCKET, STATE):
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(directory)
    except OSError:
        pass


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


def _mountinfo(mountpoint: str) -> tuple[str, str] | None:
    """(device ``major:minor``, file system type) of the mount exactly at ``mountpoint``
    (the topmost one), from /proc/self/mountinfo: no access to the mount itself."""
    target = os.path.abspath(mountpoint)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            if len(parts) >= 5 and _unescape(parts[4]) == target:
                found = parts[2], (right.split()[0] if right else "?")
    return found


def mount_type(mountpoint: str) -> str | None:
    """The file system type mounted exactly at ``mountpoint`` (e.g. ``fuse.spacefs``), or None."""
    found = _mountinfo(mountpoint)
    return found[1] if found else None


def mount_device(mountpoint: str) -> str | None:
    """The device (``major:minor``) mounted exactly at ``mountpoint``, or None. A daemon
    must learn its own mount's device this way, never by ``stat``: a thread of the daemon
    blocked in a request to its own mount keeps the connection alive if the daemon is
    killed, and everything using the mount hangs."""
    found = _mountinfo(mountpoint)
    return found[0] if found else None


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
