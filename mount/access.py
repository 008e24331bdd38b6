"""Who may do what over a mount's control socket (see SECURITY.md).

Every connection's peer is identified by the kernel (``SO_PEERCRED``, and
``SO_PEERGROUPS`` for supplementary groups), never by anything the peer sends. Reading
(``ping``, ``datasets``, ``sql``) is open to every user the mount lets in; writing,
tagging, branching and refreshing are the owner's and root's, and other users' only
where the mount grants them with ``--allow-writes-from USER|GROUP``.

``refresh`` unpickles a materialized view's stored definition (cloudpickled code) and
runs it inside the daemon, with the daemon's rights. So whoever may refresh, the daemon
only runs a definition that its own user (or root) wrote and that nobody else can change:
``check_view_trusted`` refuses the rest unless the owner mounted with ``--trust-views``.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from spacefs.engine import errors

from .protocol import AccessDeniedError

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; not exported by Python


@dataclass(frozen=True)
class Peer:
    """The process at the other end of a connection, as the kernel reports it."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]


def peer_of(sock: socket.socket) -> Peer:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    groups: frozenset[int] = frozenset()
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 256)
        groups = frozenset(struct.unpack(f"{len(raw) // 4}I", raw))
    except OSError:  # an old kernel, or more than 256 groups: primary group only
        pass
    return Peer(pid, uid, gid, groups | {gid})


@dataclass(frozen=True)
class Grants:
    """Users and groups granted writes with ``--allow-writes-from``."""

    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, names: Iterable[str]) -> Grants:
        """Each name is a user or a group (``user:NAME`` / ``group:NAME`` to say which; a
        bare name is looked up as a user first, numbers are uids)."""
        uids, gids = set(), set()
        for name in names:
            kind, _, rest = name.partition(":")
            if not rest:
                kind, rest = "", name
            if kind not in ("", "user", "group"):
                raise errors.UserInputError(f"--allow-writes-from {name!r}: say user:NAME or group:NAME")
            if kind in ("", "user"):
                if rest.isdigit():
                    uids.add(int(rest))
                    continue
                try:
                    uids.add(pwd.getpwnam(rest).pw_uid)
                    continue
                except KeyError:
                    if kind == "user":
                        raise errors.UserInputError(f"--allow-writes-from: no user named {rest!r}") from None
            try:
                gids.add(grp.getgrnam(rest).gr_gid)
            except KeyError:
                raise errors.UserInputError(f"--allow-writes-from: no user or group named {rest!r}") from None
        return cls(frozenset(uids), frozenset(gids))

    def __bool__(self) -> bool:
        return bool(self.uids or self.gids)

    def names(self) -> list[str]:
        return sorted(f"uid {u}" for u in self.uids) + sorted(f"gid {g}" for g in self.gids)


@dataclass(frozen=True)
class Policy:
    """The decisions for one mount: who may connect, who may write."""

    owner: int
    allow_other: bool = False
    writers: Grants = Grants()
    trust_views: bool = False

    def privileged(self, peer: Peer) -> bool:
        return peer.uid in (0, self.owner)

    def may_connect(self, peer: Peer) -> bool:
        return self.allow_other or self.privileged(peer) or self.may_write(peer)

    def may_write(self, peer: Peer) -> bool:
        return self.privileged(peer) or peer.uid in self.writers.uids or bool(peer.groups & self.writers.gids)

    def check_write(self, peer: Peer, op: str) -> None:
        if not self.may_write(peer):
            raise AccessDeniedError(
                f"uid {peer.uid} may not {op} on this mount: writes, tags, branches and refresh are for "
                f"the mount's owner (uid {self.owner}) and root, or users granted --allow-writes-from")


def check_view_trusted(mv_path: str, definition: str, owner: int) -> None:
    """Refuse to run a view definition that a user other than ``owner`` (or root) wrote or
    could have replaced: the MV directory, its metadata directory, ``dataset.json`` (which
    names the definition file) and the definition itself must be owned by ``owner`` or
    root and not writable by group or others. Symlinks are not followed."""
    meta = os.path.join(mv_path, "metadata")
    real = os.path.realpath(mv_path)
    if os.path.commonpath([real, os.path.realpath(definition)]) != real:
        raise AccessDeniedError(f"refusing to refresh {os.path.basename(mv_path)!r}: its definition {definition} "
                                "lies outside the view's directory")
    for p in (mv_path, meta, os.path.join(meta, "dataset.json"), os.path.dirname(definition), definition):
        try:
            st = os.lstat(p)
        except OSError as e:
            raise errors.NotFoundError(f"materialized view {mv_path}: {p}: {e.strerror}") from None
        why = None
        if stat.S_ISLNK(st.st_mode):
            why = "is a symbolic link"
        elif st.st_uid not in (0, owner):
            why = f"belongs to uid {st.st_uid}"
        elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            why = "is writable by group or others"
        if why:
            raise AccessDeniedError(
                f"refusing to refresh {os.path.basename(mv_path)!r}: {p} {why}, and refresh runs the view's "
                f"stored (pickled) code as uid {owner}; mount with --trust-views to allow it")
