"""The mount daemon: ``python -m spacefs.mount.daemon SOURCE MOUNTPOINT``.

Lifecycle, in order: open the tree (fails early on a bad source), bind the control
socket, mount (``pyfuse3.init``, ``auto_unmount`` so the kernel mount goes away even if
this process is killed), then in one trio nursery serve FUSE requests, the control
socket, the commit watcher and signals. SIGTERM, SIGINT and SIGHUP end the FUSE loop;
an unmount from outside (``fusermount3 -u``) ends it too. Then everything is torn down
in reverse (one exit stack): tasks cancelled, the file system unmounted, state and socket
files removed, the tree's datasets and every open record file closed.
``--ready-fd`` receives one line, ``ok`` or the error, once the mount is serving.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

import pyfuse3
import trio

from spacefs.engine.backend import is_remote
from spacefs.engine.catalog import normalize_location
from spacefs.engine.recordpool import POOL

from . import memdump, opcount, paths
from .access import Grants
from .control import ControlServer, Limits
from .fuse_ops import GATHER, KERNEL_CAPS, ZERO_MESSAGE_OPEN, FuseOps, KernelNotifier
from .recread import MAPPED
from .tree import Tree

log = logging.getLogger("spacefs.mount")

POLL_INTERVAL = 0.25
# A bucket source is polled less often: each poll is a LIST and a HEAD per open dataset
# (requests cost money and time on S3); commits still appear within a few seconds.
REMOTE_POLL_INTERVAL = 2.0
# Record files no read touched for this long are closed (the versions nobody reads any
# more): a mount following commits for weeks keeps a flat number of descriptors. Short,
# because a descriptor caches nothing the page cache does not: reopening a record file
# costs an open, an fstat and a map (tens of microseconds), while every descriptor kept
# for a file of an old version readers touched once is held for the whole window, and
# the set of such files grows with the history readers wander through: what stays open
# is the files read in the last few seconds, however long the history.
IDLE_CLOSE = float(os.environ.get("SPACEFS_IDLE_CLOSE", "2"))
# The kernel's read-ahead for the mount, in KiB. Its default, 128, makes a sequential
# reader cost one request per 128 KiB; at 1024 each request carries up to 1 MiB (the
# most libfuse accepts), 8x fewer round trips. Only root may set it (sysfs).
READ_AHEAD_KB = int(os.environ.get("SPACEFS_READ_AHEAD_KB", "1024"))
# Python's cyclic garbage collector runs after every 700 container allocations, and every
# FUSE request allocates dozens (trio tasks, coroutines, the memoryviews of a gathered
# read): a 256 MiB sequential read ran ~30 young collections and the odd full one, which
# walks every object the imports made (pyarrow, pandas: 12-27 ms, inside some request).
# The daemon makes few cycles, so it collects 15x less often, and the objects alive once
# it serves are frozen out of the collector's walks (``gc.freeze``).
GC_THRESHOLD = (10_000, 10, 10)


def set_read_ahead(mountpoint: str, kb: int = READ_AHEAD_KB) -> bool:
    """Set the mount's read-ahead window (``/sys/class/bdi/<dev>/read_ahead_kb``), as
    mergerfs does. Must run once the kernel has processed the daemon's INIT reply (which
    caps the window at what the kernel offered): ``FuseOps.init`` schedules it then. The
    device comes from /proc/self/mountinfo, not from a ``stat`` of the mount point: that
    is a request to the daemon itself, and a daemon killed while its own thread waited
    on it left the mount hung for every process (``paths.mount_device``). Best effort:
    returns whether it was set."""
    try:
        dev = paths.mount_device(mountpoint)
        if dev is None:
            raise OSError(f"{mountpoint} is not mounted")
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(kb))
    except OSError as e:  # not root, no sysfs: the kernel's default stays
        log.debug("read-ahead of %s left at the default: %s", mountpoint, e)
        return False
    return True


async def _watch(tree: Tree, ops: FuseOps, interval: float, poke: trio.MemoryReceiveChannel) -> None:
    """Poll the datasets' log heads; make the kernel forget refs that moved."""
    limiter = trio.CapacityLimiter(1)
    next_sweep = trio.current_time() + IDLE_CLOSE / 4
    while True:
        with trio.move_on_after(interval):
            await poke.receive()
        try:
            if trio.current_time() >= next_sweep:
                next_sweep = trio.current_time() + IDLE_CLOSE / 4
                await trio.to_thread.run_sync(POOL.close_idle, IDLE_CLOSE, limiter=limiter)
                MAPPED.drop_idle(IDLE_CLOSE)  # (maps keep deleted files' blocks, as descriptors do)
            changes = await trio.to_thread.run_sync(tree.poll, limiter=limiter)
            if changes:
                n = await ops.invalidate(changes)
                log.debug("commit seen: %d changes, %d kernel invalidations", len(changes), n)
            await ops.trim_inodes()
        except Exception:
            log.exception("watching for commits failed; retrying")


async def _signals(on_signal: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        async for s in sigs:
            log.info("signal %s: unmounting", signal.Signals(s).name)
            on_signal()
            return


async def _serve(tree: Tree, ops: FuseOps, control: ControlServer, sock, poke_recv, interval: float,
                 ready: Callable[[], None], mountpoint: str) -> None:
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        ops.after_init = lambda: set_read_ahead(mountpoint)
        nursery.start_soon(_watch, tree, ops, interval, poke_recv)
        await nursery.start(control.serve, sock)
        nursery.start_soon(_signals, pyfuse3.terminate)
        if memdump.interval() > 0:
            nursery.start_soon(memdump.dump_forever, tree, ops, memdump.interval())
        ready()
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def _warm_parquet() -> None:
    """Read a one-row Parquet table from memory: pyarrow's first read sets up its reader
    (thread pool, codecs), ~6 ms that otherwise fall on the first path walk into a
    snapshot (the 256 MiB sequential read on a fresh mount took ~7 ms more to start than
    on the in-memory floor)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"a": [1]}), sink)
    pq.read_table(pa.BufferReader(sink.getvalue()))


def run(source: str, mountpoint: str, *, allow_other: bool = False, allow_writes_from: Sequence[str] = (),
        trust_views: bool = False, limits: Sequence[str] = (), ready: Callable[[str], None] | None = None,
        interval: float | None = None, log_path: str | None = None, cache_dir: str | None = None,
        cache_size: int | None = None) -> None:
    """Mount ``source`` (a catalog or dataset directory) at ``mountpoint`` until unmounted.

    ``allow_writes_from`` names users or groups that may write over the control socket
    (besides the owner and root); ``trust_views`` lets refresh run view definitions
    written by other users; ``limits`` are ``NAME=VALUE`` overrides of ``control.Limits``.
    ``cache_dir``/``cache_size``: the chunk cache of record reads from a bucket source.

    Every resource goes on one exit stack the moment it is acquired, so whatever step
    fails (or however the serving ends) what was set up is undone in reverse order, once.
    """
    ready = ready or (lambda msg: None)
    mountpoint = os.path.abspath(mountpoint)
    if interval is None:
        interval = REMOTE_POLL_INTERVAL if is_remote(source) else POLL_INTERVAL
    import pyarrow.dataset  # noqa: F401 - imported now, not on the first directory listing
    import pyarrow.parquet  # noqa: F401

    _warm_parquet()

    if cache_dir and is_remote(source):
        from spacefs.engine.chunkcache import DEFAULT_SIZE
        from spacefs.engine.remote_records import set_default_cache

        set_default_cache(os.path.abspath(cache_dir), cache_size or DEFAULT_SIZE)
    with contextlib.ExitStack() as stack:
        stack.callback(log.info, "unmounted %s", mountpoint)
        tree = stack.enter_context(Tree(source))
        stack.callback(POOL.close)  # last: every record file the daemon opened
        ops = FuseOps(tree, KernelNotifier(), zero_message_open=ZERO_MESSAGE_OPEN, gather=GATHER)
        poke_send, poke_recv = trio.open_memory_channel(1)

        def poke() -> None:
            with contextlib.suppress(trio.WouldBlock):
                poke_send.send_nowait(None)

        control = ControlServer(source, allow_other=allow_other, writers=Grants.parse(allow_writes_from),
                                trust_views=trust_views, on_commit=poke, limits=Limits.parse(list(limits)))
        if opcount.enabled():
            counts = opcount.install(ops)
            control.diagnostics = lambda: {"fuse_ops": dict(counts)}
        run_dir = paths.prepare_mount_dir(mountpoint, shared=control.shared)
        sock_path, state_path = paths.socket_path(mountpoint), paths.state_path(mountpoint)  # before mounting
        sock = control.bind(sock_path)
        stack.callback(paths.remove_mount_files, run_dir)  # after the unmount, as launch expects
        stack.callback(sock.close)
        options = set(pyfuse3.default_options) | {"fsname=spacefs", "subtype=spacefs", "ro", "auto_unmount"}
        if allow_other:
            options.add("allow_other")
        if not (KERNEL_CAPS and ZERO_MESSAGE_OPEN):
            log.warning("pyfuse3 lacks the project's patch (patches/README.md): the kernel will not cache "
                        "symlink targets (paths through current/, tags/ and branches/ are slow) and "
                        "asks the daemon on every open")
        pyfuse3.init(ops, mountpoint, options)
        stack.callback(pyfuse3.close, unmount=True)
        paths.write_state(state_path, {"pid": os.getpid(), "source": normalize_location(source),
                                       "mountpoint": mountpoint, "socket": sock_path, "log": log_path,
                                       "allow_other": allow_other, "writers": control.policy.writers.names(),
                                       "trust_views": trust_views})
        log.info("mounted %s at %s (control socket %s%s)", source, mountpoint, sock_path,
                 f"; writes also from {', '.join(control.policy.writers.names())}" if control.shared else "")
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLD)
        trio.run(_serve, tree, ops, control, sock, poke_recv, interval, lambda: ready("ok"), mountpoint)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spacefs.mount.daemon", description=__doc__.splitlines()[0])
    p.add_argument("source")
    p.add_argument("mountpoint")
    p.add_argument("--allow-other", action="store_true")
    p.add_argument("--allow-writes-from", action="append", default=[], metavar="USER|GROUP")
    p.add_argument("--trust-views", action="store_true")
    p.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--log", help="log file (default: stderr)")
    p.add_argument("--ready-fd", type=int, help="write 'ok' or an error line here once serving")
    p.add_argument("--poll-interval", type=float, default=None)
    p.add_argument("--debug", action="store_true")
    p.add_argument("--cache-dir", help="chunk cache of a bucket source's record reads")
    p.add_argument("--cache-size", type=int, help="bytes the chunk cache may hold")
    args = p.parse_args(argv)

    try:
        out = os.fdopen(paths.open_log(args.log), "a", buffering=1) if args.log else sys.stderr
    except Exception as e:
        print(f"spacefs daemon: {e}", file=sys.stderr)
        if args.ready_fd is not None:
            with contextlib.suppress(OSError), os.fdopen(args.ready_fd, "w") as f:
                f.write(f"error: {e}\n")
        return 1
    handler: logging.Handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if args.debug else logging.INFO)
    logging.getLogger("pyfuse3").setLevel(logging.INFO)

    ready_file = os.fdopen(args.ready_fd, "w") if args.ready_fd is not None else None

    def ready(msg: str) -> None:
        nonlocal ready_file
        if ready_file is not None:
            with contextlib.suppress(OSError):
                ready_file.write(msg.replace("\n", " ") + "\n")
                ready_file.close()
            ready_file = None

    try:
        run(args.source, args.mountpoint, allow_other=args.allow_other, allow_writes_from=args.allow_writes_from,
            trust_views=args.trust_views, limits=args.limit, ready=ready,
            interval=args.poll_interval, log_path=args.log, cache_dir=args.cache_dir, cache_size=args.cache_size)
    except Exception as e:
        log.exception("the mount daemon failed")
        ready(f"error: {e}")
        return 1
    finally:
        ready("error: the daemon exited before the mount was ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
