"""``spacefs mount``, ``spacefs umount``, ``spacefs mounts`` and ``spacefs demo``."""

from __future__ import annotations

import os

import click

from spacefs.cli import echo_json, main, note
from spacefs.engine.errors import UserInputError

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``500M``, ``10G``, ``1048576``: a number of bytes with an optional binary unit."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _SIZE_UNITS else ""
    try:
        n = float(t[: len(t) - len(unit)])
    except ValueError:
        raise UserInputError(f"bad size {text!r}: use a number of bytes with an optional unit, like 500M or 10G") from None
    if n <= 0:
        raise UserInputError(f"bad size {text!r}: it must be positive")
    return int(n * _SIZE_UNITS[unit])


@main.command()
@click.argument("source", type=click.Path(file_okay=False))
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--foreground", "-f", is_flag=True, help="Stay attached (logs on stderr); Ctrl-C unmounts.")
@click.option("--allow-other", is_flag=True,
              help="Let other users read the mount and use the control socket's read operations (datasets, sql).")
@click.option("--allow-writes-from", "writers", multiple=True, metavar="USER|GROUP",
              help="Also let this user or group write, tag, branch and refresh over the control socket "
                   "(repeatable; user:NAME or group:NAME to be explicit).")
@click.option("--trust-views", is_flag=True,
              help="Let refresh run materialized views whose stored code other users wrote (see SECURITY.md).")
@click.option("--log", "log_file", type=click.Path(dir_okay=False),
              help="Daemon log file, kept after unmounting (default: beside the socket, removed by a clean umount).")
@click.option("--debug", is_flag=True, help="Make the daemon log at debug level (every commit it sees, and more).")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="With an s3:// SOURCE: keep record chunks read from the bucket in this directory.")
@click.option("--cache-size", default="1G", show_default=True, metavar="SIZE",
              help="Bytes the --cache-dir may hold, like 500M or 10G.")
def mount(source: str, mountpoint: str, foreground: bool, allow_other: bool, writers: tuple[str, ...],
          trust_views: bool, log_file: str | None, debug: bool, cache_dir: str | None, cache_size: str) -> None:
    """Mount a catalog (or one dataset) directory SOURCE at MOUNTPOINT, read-only.

    Returns once the mount serves requests, the daemon running in the background.
    Every version of every dataset appears as files; new commits appear within a second.
    MOUNTPOINT must be an empty directory; SOURCE a dataset, or a directory of datasets
    (or an empty one). 'spacefs mounts' lists the mounts running.

    Writes over the control socket are the owner's and root's unless granted with
    --allow-writes-from; SECURITY.md describes the trust model.

    SOURCE may be s3://bucket/prefix (set up by the AWS variables): records are read by
    range, through a bounded local cache with --cache-dir.
    """
    from spacefs.mount import launch

    size = parse_size(cache_size)
    if foreground:
        import logging
        import sys

        from spacefs.mount import daemon

        launch.check_source(source)
        launch.check_mountpoint(mountpoint)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.DEBUG if debug else logging.INFO)

        def ready(msg: str) -> None:
            if msg == "ok":
                click.echo(f"mounted {source} at {mountpoint}; Ctrl-C or 'spacefs umount {mountpoint}' to stop", err=True)

        daemon.run(source, mountpoint, allow_other=allow_other, allow_writes_from=writers, trust_views=trust_views,
                   ready=ready, log_path=None, cache_dir=cache_dir, cache_size=size)
        return
    info = launch.start(source, mountpoint, allow_other=allow_other, allow_writes_from=writers,
                        trust_views=trust_views, log=log_file, debug=debug, cache_dir=cache_dir, cache_size=size)
    note(f"mounted {info.source} at {info.mountpoint} (daemon pid {info.pid}, log {info.log})")


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--lazy", "-z", is_flag=True, help="Detach even if files are in use (fusermount3 -z).")
def umount(mountpoint: str, lazy: bool) -> None:
    """Unmount a spacefs MOUNTPOINT (also a stale one left by a killed daemon)."""
    from spacefs.mount import launch

    launch.unmount(mountpoint, lazy=lazy)
    note(f"unmounted {os.path.abspath(mountpoint)}")


@main.command("mounts", short_help="List the spacefs mounts running.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects, for programs.")
def mounts_cmd(as_json: bool) -> None:
    """List the spacefs mounts of this machine: mountpoint, source, daemon pid, state, log.

    A 'stale' mount's daemon is gone; 'spacefs umount MOUNTPOINT' clears it.
    """
    from spacefs.cli.engine_cmds import print_table
    from spacefs.mount.listing import active_mounts

    found = active_mounts()
    if as_json:
        echo_json([m.as_dict() for m in found])
    elif found:
        print_table(["MOUNTPOINT", "SOURCE", "PID", "STATE", "LOG"],
                    [[m.mountpoint, m.source or "?", m.pid or "?", m.state, m.log or "-"] for m in found])
    else:
        note("no spacefs mounts")


@main.command()
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Build the example catalog in this directory and keep it (default: a temporary one).")
def demo(keep: str | None) -> None:
    """Build a small image catalog, mount it, and show ls, cp, DuckDB and a live commit."""
    from spacefs.mount.demo import run_demo

    run_demo(keep)
