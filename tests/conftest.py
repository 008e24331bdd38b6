"""Shared fixtures: small datasets in temporary directories."""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import pytest

from spacefs import ChangeType, Dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable

SCHEMA = pa.schema([("id", pa.int64()), ("image_name", pa.string()), ("feature", pa.binary())])


def rows(ids, tag: str = "") -> dict:
    ids = list(ids)
    return {
        "id": ids,
        "image_name": [f"{i}{tag}.jpg" for i in ids],
        "feature": [f"data{i}{tag}".encode() for i in ids],
    }



def content(ds: Dataset, version=None) -> dict:
    """The rows of ``version`` (SCHEMA datasets) as {id: (image_name, feature)}."""
    return {r["id"]: (r["image_name"], r["feature"]) for r in ds.local().read_all(version=version).to_pylist()}


def apply_changes(start: dict, changes) -> dict:
    """``start`` (as ``content`` gives it) with a diff's changes applied: diffs are
    checked against plain recomputation by applying them to one version's rows."""
    out = dict(start)
    for c in changes:
        if c.change_type == ChangeType.DELETE:
            for k in c.data.column("id").to_pylist():
                out.pop(k, None)
        else:
            for r in c.data.to_pylist():
                out[r["id"]] = (r["image_name"], r["feature"])
    return out

@pytest.fixture
def ds(tmp_path) -> Dataset:
    return Dataset.create(str(tmp_path / "ds"), SCHEMA, primary_keys=["id"], record_fields=["feature"])


def run_in_pty(argv: list[str], timeout: float = 60, size: tuple[int, int] = (24, 100)) -> tuple[int, str]:
    """Run ``argv`` on a real terminal (to see progress bars); (exit code, all output)."""
    import fcntl
    import pty
    import struct
    import subprocess
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    try:
        p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        out = bytearray()
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out.extend(chunk)
        return p.wait(timeout=timeout), out.decode(errors="replace")
    finally:
        os.close(master)


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 server on 127.0.0.1, started once per run; checked to refuse a second create."""
    from s3_util import MotoServer

    server = MotoServer()
    server.start()
    try:
        server.check_conditional_writes()
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_server, monkeypatch) -> str:
    """A fresh bucket per test, with the standard AWS variables pointing at the server."""
    for key, value in moto_server.env.items():
        monkeypatch.setenv(key, value)
    return f"s3://{moto_server.create_bucket()}"
