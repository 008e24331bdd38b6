"""Who may do what over the control socket, with real second users (created here with
``useradd`` if missing; the tests run as root): other users read, writes are granted
explicitly, refresh never runs code another user wrote; mounts never change each other's
permissions; a run directory another user prepared is refused before anything is
written through it."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile

import pytest
from mount_util import PYTHON, make_catalog, mounted, wait_for

import spacefs
from spacefs.engine import errors
from spacefs.mount import launch, paths
from spacefs.mount import protocol as proto

READER, WRITER, GROUP = "spacefs-probe", "spacefs-probe2", "spacefs-probe-w"
TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="session")
def users():
    """Two throwaway users and a group (left in place: they own nothing and cannot log in)."""
    for name in (READER, WRITER):
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                           check=True, capture_output=True)
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True, capture_output=True)
    return {n: pwd.getpwnam(n) for n in (READER, WRITER)} | {GROUP: grp.getgrnam(GROUP)}


@pytest.fixture()
def shared_root():
    """A directory every user can reach (pytest's tmp dirs are 0700), and a run dir."""
    root = tempfile.mkdtemp(prefix="spacefs-access-")
    os.chmod(root, 0o755)
    run = tempfile.mkdtemp(prefix="spacefs-test-run-")
    os.environ["SPACEFS_RUN_DIR"] = run
    try:
        yield root
    finally:
        del os.environ["SPACEFS_RUN_DIR"]
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def drop(user: pwd.struct_passwd, extra_groups: tuple[int, ...] = ()) -> str:
    """Code that turns the (root) interpreter into ``user``. The interpreter lives under
    /root, which other users cannot read: so it starts as root, imports what it needs,
    then drops its privileges before it touches the mount or the socket."""
    return (f"import os; os.setgroups({list(extra_groups)!r}); os.setgid({user.pw_gid}); "
            f"os.setuid({user.pw_uid})\n")


def run_as(user: pwd.struct_passwd, code: str, *args: str, extra_groups: tuple[int, ...] = (),
           env: dict | None = None) -> subprocess.CompletedProcess:
    imports = "import sys, json, os\nimport spacefs.mount.client, spacefs.mount.launch, spacefs.mount.paths\n"
    return subprocess.run([PYTHON, "-c", imports + code.replace("#DROP\n", drop(user, extra_groups)), *args],
                          cwd="/", capture_output=True, text=True, timeout=120,
                          env={**(os.environ if env is None else env), "PYTHONDONTWRITEBYTECODE": "1"})


CLIENT = """
import json, sys
sys.path.insert(0, {tests!r})
import pyarrow as pa
import spacefs
from mount_util import SCHEMA, rows
from spacefs.mount import protocol
pa.table(rows([1])).cast(SCHEMA)
#DROP
mnt, ops = sys.argv[1], sys.argv[2].split(",")
out = {{}}
def run(name, fn):
    try:
        out[name] = ["ok", repr(fn())[:200]]
    except Exception as e:
        out[name] = [type(e).__name__, str(e)]
calls = {{
    "datasets": lambda c: c.datasets(),
    "sql": lambda c: c.sql("SELECT count(*) AS n FROM pets").column("n")[0].as_py(),
    "listdir": lambda c: sorted(__import__("os").listdir(mnt)),
    "append": lambda c: c.append("pets", pa.table(rows([7000])).cast(SCHEMA)).state.name,
    "delete": lambda c: c.delete("pets", "id >= 0").state.name,
    "add_tag": lambda c: c.add_tag("pets", "probe"),
    "add_branch": lambda c: c.add_branch("pets", "probe_b"),
    "refresh": lambda c: c.refresh("pets_mv").state.name,
}}
with spacefs.connect(mnt) as c:
    for op in ops:
        run(op, lambda: calls[op](c))
print(json.dumps(out))
"""

ALL_OPS = ["datasets", "sql", "listdir", "append", "delete", "add_tag", "add_branch", "refresh"]


def as_user(user: pwd.struct_passwd, mnt: str, ops: list[str], extra_groups: tuple[int, ...] = ()) -> dict:
    res = run_as(user, CLIENT.format(tests=TESTS), mnt, ",".join(ops), extra_groups=extra_groups)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def catalog_with_view(root: str):
    c, ds = make_catalog(root)
    c.materialize("pets_mv", ds.map_batches(lambda b: b, ds.schema, output_record_fields=["image"]))
    return c, ds


def test_other_users_read_but_only_the_owner_writes(users, shared_root):
    c, ds = catalog_with_view(shared_root)
    mnt = os.path.join(shared_root, "mnt")
    with mounted(c.location, mnt, allow_other=True):
        seq, head = ds.storage.log.head_seq(), ds.storage.head()
        out = as_user(users[READER], mnt, ALL_OPS)
        assert out["datasets"] == ["ok", repr(["pets", "pets_mv"])]
        assert out["sql"] == ["ok", "30"]
        assert out["listdir"][0] == "ok" and "pets" in out["listdir"][1]
        for op in ("append", "delete", "add_tag", "add_branch", "refresh"):
            kind, msg = out[op]
            assert kind == "AccessDeniedError" and "may not" in msg and "--allow-writes-from" in msg, (op, out[op])
        assert ds.storage.log.head_seq() == seq and ds.storage.head().tags == head.tags
        # a group the reader is not in grants nothing; the owner still writes
        with spacefs.connect(mnt) as cl:
            assert cl.ping()["may_write"] is True
            cl.add_tag("pets", "owner")


FLOOD = """
import select, socket, time
#DROP
path = spacefs.mount.paths.socket_path(sys.argv[1], 0)
socks = []
for _ in range(80):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(b"SPFS")  # a frame started, never finished: not idle, cannot be evicted
    socks.append(s)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    refused = len(select.select(socks, [], [], 0.1)[0])
    if refused >= 80 - 56:
        break
print(refused, flush=True)
sys.stdin.read()
"""


def test_other_users_cannot_take_the_owners_slots(users, shared_root):
    c, ds = make_catalog(shared_root)
    mnt = os.path.join(shared_root, "mnt")
    with mounted(c.location, mnt, allow_other=True):
        imports = "import sys, json, os\nimport spacefs.mount.paths\n"
        flood = subprocess.Popen([PYTHON, "-c", imports + FLOOD.replace("#DROP\n", drop(users[READER])), mnt],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
        try:
            refused = int(flood.stdout.readline())
            assert refused == 80 - 56, "other users get 64 - 8 slots"
            with spacefs.connect(mnt, timeout=5) as cl:  # one of the 8 slots kept for the owner
                assert cl.datasets() == ["pets"]
        finally:
            flood.communicate("", timeout=30)


def test_writes_granted_to_a_user_or_a_group(users, shared_root):
    c, ds = catalog_with_view(shared_root)
    mnt = os.path.join(shared_root, "mnt")
    with mounted(c.location, mnt, allow_other=True, allow_writes_from=[WRITER, f"group:{GROUP}"]):
        out = as_user(users[WRITER], mnt, ["append", "add_tag", "refresh"])
        assert out["append"] == ["ok", "'SUCCEEDED'"] and out["add_tag"][0] == "ok", out
        assert out["refresh"][0] == "ok", out  # the view is root's: trusted
        assert "probe" in ds.storage.head().tags
        denied = as_user(users[READER], mnt, ["add_branch"])
        assert denied["add_branch"][0] == "AccessDeniedError"
        member = as_user(users[READER], mnt, ["add_branch"], extra_groups=(users[GROUP].gr_gid,))
        assert member["add_branch"][0] == "ok", member
        assert "probe_b" in ds.storage.head().branches


def test_refresh_never_runs_a_view_another_user_wrote(users, shared_root):
    c, ds = catalog_with_view(shared_root)
    mv = os.path.join(c.location, "pets_mv")
    pkl = os.path.join(mv, "metadata", "view.pkl")
    mnt = os.path.join(shared_root, "mnt")
    os.chown(pkl, users[READER].pw_uid, -1)  # as if the other user had written the view
    with mounted(c.location, mnt, allow_other=True):
        with spacefs.connect(mnt) as cl:
            with pytest.raises(proto.AccessDeniedError, match="refusing to refresh.*belongs to uid.*--trust-views"):
                cl.refresh("pets_mv")
            os.chown(pkl, 0, -1)
            os.chmod(pkl, 0o666)
            with pytest.raises(proto.AccessDeniedError, match="writable by group or others"):
                cl.refresh("pets_mv")
            os.chmod(pkl, 0o644)
            assert cl.refresh("pets_mv").state.name in ("SUCCEEDED", "SKIPPED")
    os.chown(pkl, users[READER].pw_uid, -1)
    with mounted(c.location, mnt, allow_other=True, trust_views=True):
        with spacefs.connect(mnt) as cl:
            assert cl.refresh("pets_mv").state.name in ("SUCCEEDED", "SKIPPED")


def test_without_allow_other_other_users_are_refused(users, shared_root):
    c, ds = make_catalog(shared_root)
    mnt = os.path.join(shared_root, "mnt")
    with mounted(c.location, mnt):
        sock = paths.socket_path(mnt)
        assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        res = run_as(users[READER], "#DROP\nspacefs.mount.client.connect(sys.argv[1])", mnt)
        assert res.returncode != 0 and "NotFoundError" in res.stderr and "Permission denied" in res.stderr


def test_mounts_never_change_each_others_permissions(users, shared_root):
    c, ds = make_catalog(shared_root)
    first, second = os.path.join(shared_root, "mnt1"), os.path.join(shared_root, "mnt2")
    with mounted(c.location, first, allow_other=True):
        sock = paths.socket_path(first)
        watched = [paths.run_dir(), os.path.dirname(sock), sock]
        modes = [stat.S_IMODE(os.stat(p).st_mode) for p in watched]
        assert modes[0] & 0o011 == 0o011 and modes[1] == 0o711 and modes[2] == 0o666
        with mounted(c.location, second):  # a default, private mount beside it
            assert [stat.S_IMODE(os.stat(p).st_mode) for p in watched] == modes
            assert stat.S_IMODE(os.stat(os.path.dirname(paths.socket_path(second))).st_mode) == 0o700
            assert as_user(users[READER], first, ["datasets"])["datasets"][0] == "ok"
        assert [stat.S_IMODE(os.stat(p).st_mode) for p in watched] == modes


def test_the_socket_is_found_from_the_mountpoint_alone(users, shared_root):
    # Every user derives the same socket path from the mountpoint and its owner's uid,
    # whatever their own uid and rights (root's mounts live under /run/spacefs, which a
    # non-root caller cannot write: it used to look in /tmp/spacefs-0 instead).
    mnt = os.path.join(shared_root, "mnt")
    env = {k: v for k, v in os.environ.items() if k != "SPACEFS_RUN_DIR"}
    code = "#DROP\nprint(spacefs.mount.paths.socket_path(sys.argv[1], 0))"
    seen = {run_as(u, code, mnt, env=env).stdout.strip() for u in (pwd.getpwuid(0), users[READER], users[WRITER])}
    assert len(seen) == 1 and seen.pop().startswith("/run/spacefs/")
    c, ds = make_catalog(shared_root)
    with mounted(c.location, mnt, allow_other=True):
        assert as_user(users[READER], mnt, ["datasets"])["datasets"][0] == "ok"


# -- the run directory ---------------------------------------------------------------
def test_a_run_dir_prepared_by_another_user_is_refused(users, shared_root):
    victim, attacker = users[WRITER], users[READER]
    c, ds = make_catalog(shared_root)
    mnt = os.path.join(shared_root, "mnt")
    os.makedirs(mnt)
    os.chmod(mnt, 0o777)
    target = os.path.join(shared_root, "victims-file")
    with open(target, "w") as f:
        f.write("precious\n")
    os.chown(target, victim.pw_uid, victim.pw_gid)
    run = f"/tmp/spacefs-{victim.pw_uid}"
    shutil.rmtree(run, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "SPACEFS_RUN_DIR"}  # the real fallback path
    key = os.path.basename(paths.mount_dir(mnt))
    plant = (f"import os; os.makedirs({run + '/' + key!r}); os.chmod({run!r}, 0o777); "
             f"os.chmod({run + '/' + key!r}, 0o777); os.symlink({target!r}, {run + '/' + key + '/daemon.log'!r})")
    assert run_as(attacker, "#DROP\n" + plant, env=env).returncode == 0
    try:
        res = run_as(victim, "#DROP\nspacefs.mount.launch.start(sys.argv[1], sys.argv[2])", c.location, mnt, env=env)
        assert res.returncode != 0
        assert "UnsafeRunDirError" in res.stderr and f"belongs to uid {attacker.pw_uid}" in res.stderr, res.stderr
        with open(target) as f:
            assert f.read() == "precious\n"
        assert paths.mount_type(mnt) is None
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_unsafe_run_dirs_and_logs_are_refused(shared_root, tmp_path):
    c, ds = make_catalog(str(tmp_path))
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    run = paths.run_dir()
    target = str(tmp_path / "target")
    with open(target, "w") as f:
        f.write("untouched\n")

    os.chmod(run, 0o777)  # the user's own run dir, but writable by anyone
    with pytest.raises(paths.UnsafeRunDirError, match="writable by group or others"):
        launch.start(c.location, mnt)
    os.chmod(run, 0o700)

    d = paths.mount_dir(mnt)  # a symbolic link where the log goes
    os.makedirs(d, mode=0o700)
    os.symlink(target, os.path.join(d, "daemon.log"))
    with pytest.raises(paths.UnsafeRunDirError, match="symbolic link"):
        launch.start(c.location, mnt)
    os.unlink(os.path.join(d, "daemon.log"))
    os.rmdir(d)

    os.symlink(str(tmp_path), d)  # the mount's directory itself a symbolic link
    with pytest.raises(paths.UnsafeRunDirError, match="symbolic link"):
        launch.start(c.location, mnt)
    os.unlink(d)

    with open(target) as f:
        assert f.read() == "untouched\n"
    assert paths.mount_type(mnt) is None
    with mounted(c.location, mnt) as info:  # and with the run dir sound, the mount works
        assert stat.S_IMODE(os.stat(os.path.dirname(info.log)).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(info.log).st_mode) == 0o600
        wait_for(lambda: "pets" in os.listdir(mnt), 5.0)


def test_bad_grant_names_fail_before_mounting(shared_root, tmp_path):
    c, ds = make_catalog(str(tmp_path))
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    with pytest.raises(errors.UserInputError, match="no user or group named"):
        launch.start(c.location, mnt, allow_writes_from=["no-such-user-or-group-xyz"])
    with contextlib.suppress(FileNotFoundError):
        assert paths.mount_type(mnt) is None
