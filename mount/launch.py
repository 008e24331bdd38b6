"""Starting and stopping mount daemons from another process (the CLI, tests, the demo).

``start`` runs ``python -m spacefs.mount.daemon`` in its own session and returns only
once the daemon reports, through a pipe, that the mount serves requests (or fails with
the daemon's error and the log's name). ``unmount`` unmounts with ``fusermount3 -u``
(``-z`` for a stale mount whose daemon is gone), then waits for the daemon to exit.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from spacefs.engine.backend import is_remote, open_backend
from spacefs.engine.catalog import datasets_at, is_dataset_at, normalize_location
from spacefs.engine.errors import NotFoundError, SpaceError, UserInputError

from . import paths
from .access import Grants

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

_children: dict[int, subprocess.Popen] = {}


class MountError(SpaceError):
    """A mount or unmount that could not be done."""


@dataclass(frozen=True)
class MountInfo:
    source: str
    mountpoint: str
    pid: int
    log: str


def _is_dataset(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "metadata", "dataset.json"))


def check_source(source: str) -> None:
    """Refuse a source that is neither a dataset nor a catalog (a directory holding
    datasets, or an empty one to fill later): it would mount as an empty tree."""
    if is_remote(source):
        if is_dataset_at(source) or datasets_at(source) or not open_backend(source).list(""):
            return
        raise UserInputError(f"{source} is neither a spacefs dataset nor a catalog of datasets")
    if not os.path.isdir(source):
        raise NotFoundError(f"{source}: no such catalog or dataset directory")
    if _is_dataset(source):
        return
    entries = [n for n in os.listdir(source) if not n.startswith(".")]
    if entries and not any(_is_dataset(os.path.join(source, n)) for n in entries):
        raise UserInputError(f"{source} is neither a spacefs dataset nor a catalog of datasets "
                             f"(none of its {len(entries)} entries is a dataset)")


def check_mountpoint(mountpoint: str) -> None:
    if paths.is_stale(mountpoint):
        raise MountError(f"{mountpoint} holds a stale mount (its daemon is gone); run 'spacefs umount {mountpoint}'")
    if not os.path.isdir(mountpoint):
        raise NotFoundError(f"{mountpoint}: the mountpoint must be an existing directory")
    if paths.mount_type(mountpoint) is not None:
        raise MountError(f"{mountpoint} is already a mountpoint")
    if os.listdir(mountpoint):
        raise UserInputError(f"{mountpoint} is not empty: mounting over it would hide its files; use an empty directory")


def start(source: str, mountpoint: str, *, allow_other: bool = False, allow_writes_from: Sequence[str] = (),
          trust_views: bool = False, limits: Mapping[str, float] | None = None, log: str | None = None,
          timeout: float = START_TIMEOUT, poll_interval: float | None = None, debug: bool = False,
          cache_dir: str | None = None, cache_size: int | None = None) -> MountInfo:
    """Mount ``source`` at ``mountpoint`` with a background daemon; return once it serves.

    The daemon logs to ``log`` (default: beside its control socket, removed again by a
    clean ``unmount``); ``debug`` makes it log every commit it sees and more. The mount's
    run directory is created and checked (``paths.prepare_mount_dir``) before the log is
    opened in it, and the log is opened without following symbolic links.
    """
    source, mountpoint = normalize_location(source), os.path.abspath(mountpoint)
    check_source(source)
    check_mountpoint(mountpoint)
    Grants.parse(allow_writes_from)  # a bad name fails here, not in the daemon's log
    paths.prepare_mount_dir(mountpoint, shared=allow_other or bool(allow_writes_from))
    if log:  # a log the user named: its directory is theirs to choose
        log = os.path.abspath(log)
        os.makedirs(os.path.dirname(log), mode=0o700, exist_ok=True)
    else:
        log = paths.default_log_path(mountpoint)
    cmd = [sys.executable, "-m", "spacefs.mount.daemon", source, mountpoint, "--log", log]
    if allow_other:
        cmd.append("--allow-other")
    for who in allow_writes_from:
        cmd += ["--allow-writes-from", who]
    if trust_views:
        cmd.append("--trust-views")
    for name, value in (limits or {}).items():
        cmd += ["--limit", f"{name}={value}"]
    if poll_interval is not None:
        cmd += ["--poll-interval", str(poll_interval)]
    if debug:
        cmd.append("--debug")
    if cache_dir:
        cmd += ["--cache-dir", os.path.abspath(cache_dir)]
    if cache_size:
        cmd += ["--cache-size", str(int(cache_size))]
    out = paths.open_log(log)
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(cmd + ["--ready-fd", str(w)], pass_fds=(w,), start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    finally:
        os.close(w)
        os.close(out)
    _children[proc.pid] = proc
    try:
        line = _read_line(r, proc, timeout)
    finally:
        os.close(r)
    if line != "ok":
        if proc.poll() is None:
            _stop_pid(proc.pid, 5.0)
        msg = line.removeprefix("error: ") if line else "the daemon did not report ready"
        raise MountError(f"mounting {source} at {mountpoint} failed: {msg} (log: {log})")
    os.stat(mountpoint)  # the first request: served once the FUSE session is up
    return MountInfo(source, mountpoint, proc.pid, log)


def _read_line(fd: int, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            _stop_pid(proc.pid, 5.0)
            return f"error: not ready within {timeout:.0f} s"
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors="replace").strip()


def _alive(pid: int) -> bool:
    proc = _children.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            _children.pop(pid, None)
            return False
        return True
    return paths.daemon_alive(pid)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _stop_pid(pid: int, timeout: float) -> None:
    """SIGTERM a daemon (it unmounts itself), then SIGKILL if it does not go."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(pid, timeout):
            return


def _fusermount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["fusermount3", *args], capture_output=True, text=True)


def unmount(mountpoint: str, *, lazy: bool = False, timeout: float = STOP_TIMEOUT) -> None:
    """Unmount a spacefs mount (also a stale one) and wait for its daemon to exit."""
    mountpoint = os.path.abspath(mountpoint)
    clean = False
    state = paths.read_state(mountpoint) or {}
    pid = state.get("pid")
    fstype = paths.mount_type(mountpoint)
    if fstype is None:
        if pid and _alive(pid):
            _stop_pid(pid, timeout)
        elif not state:
            raise UserInputError(f"{mountpoint} is not mounted")
    elif not fstype.startswith("fuse"):
        raise UserInputError(f"{mountpoint} is a {fstype} mount, not a spacefs mount")
    else:
        stale = paths.is_stale(mountpoint)
        clean = not stale
        res = _fusermount("-u", "-z", mountpoint) if (stale or lazy) else _fusermount("-u", mountpoint)
        if res.returncode != 0 and paths.mount_type(mountpoint) is not None:
            if paths.is_stale(mountpoint):
                res = _fusermount("-u", "-z", mountpoint)
            if paths.mount_type(mountpoint) is not None:
                raise MountError(f"unmounting {mountpoint} failed: {res.stderr.strip() or res.returncode}"
                                 + ("" if lazy else " (use --lazy to detach a busy mount)"))
        if pid and not _wait_gone(pid, timeout):
            _stop_pid(pid, 5.0)
    if not pid or not _alive(pid):
        # The default log goes with a clean mount (one per mount would pile up); a stale
        # mount's log is kept for the post-mortem, and a --log file chosen by the user stays.
        if clean and state.get("log") == paths.default_log_path(mountpoint):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(state["log"])
        paths.remove_mount_files(paths.mount_dir(mountpoint))


@contextlib.contextmanager
def mounted(source: str, mountpoint: str, **kwargs) -> Iterator[MountInfo]:
    """Mount for the duration of a ``with`` block; always unmounts, even on errors."""
    info = start(source, mountpoint, **kwargs)
    try:
        yield info
    finally:
        try:
            unmount(mountpoint)
        finally:
            if _alive(info.pid):
                _stop_pid(info.pid, 5.0)
