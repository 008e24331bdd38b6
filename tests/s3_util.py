"""A local S3-compatible server for the object-storage tests: moto's standalone server.

The suite starts it itself (CI needs nothing installed or running beforehand), on
127.0.0.1 only, and checks once that it honours conditional writes: the whole commit
protocol on object storage rests on ``If-None-Match: *`` failing for an existing key, so a
server without it must fail the run loudly rather than let the concurrency tests pass by luck.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """One ``python -m moto.server`` subprocess and the AWS settings that point at it."""

    def __init__(self, server_env: dict[str, str] | None = None) -> None:
        self.server_env = server_env or {}
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables a client (or a child process) needs to reach the server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
        }

    def storage_options(self, monkeypatch) -> dict[str, str]:
        """The same settings as a ``storage_options`` dict, with the AWS variables removed
        from the environment (``monkeypatch``): what the options reach, they reach alone."""
        for key in self.env:
            monkeypatch.delenv(key, raising=False)
        return {"endpoint": self.endpoint, "aws_access_key_id": ACCESS_KEY,
                "aws_secret_access_key": SECRET_KEY, "region": REGION}

    def start(self, timeout: float = 60.0) -> None:
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        env = {**os.environ, **self.server_env}
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not answer on {self.endpoint} within {timeout}s") from None
                time.sleep(0.1)  # bounded poll for the server to listen

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        os.unlink(self._log.name)

    def log(self) -> str:
        with open(self._log.name, errors="replace") as f:
            return f.read()[-4000:]

    def mark(self) -> int:
        """A position in the request log; ``requests(mark)`` counts what came after it."""
        self._log.flush()
        return os.path.getsize(self._log.name)

    def requests(self, since: int = 0) -> dict[str, int]:
        """HTTP requests the server answered since ``since``, by kind: GET, LIST, HEAD, PUT, ..."""
        with open(self._log.name, "rb") as f:
            f.seek(since)
            lines = f.read().decode(errors="replace").splitlines()
        counts: dict[str, int] = {}
        for line in lines:
            m = re.search(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP', line)
            if not m or m.group(2).startswith("/moto-api"):
                continue
            kind = "LIST" if m.group(1) == "GET" and "list-type=" in m.group(2) else m.group(1)
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def client(self):
        """A boto3 client for set-up only (bucket creation): spacefs itself never uses boto3."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def create_bucket(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def check_conditional_writes(self) -> None:
        """Fail loudly unless a second ``If-None-Match: *`` put of one key is refused (412)."""
        import botocore.exceptions

        c = self.client()
        bucket = self.create_bucket("precheck")
        c.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")
        try:
            c.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
        except botocore.exceptions.ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status != 412:
                raise RuntimeError(f"conditional put refused with HTTP {status}, expected 412: {e}") from None
        else:
            raise RuntimeError(
                f"the S3 server at {self.endpoint} ignores If-None-Match: * (a second create of one key "
                "succeeded): the object-storage commit protocol cannot be tested against it"
            )
        body = c.get_object(Bucket=bucket, Key="k")["Body"].read()
        if body != b"first":
            raise RuntimeError(f"a refused conditional put still replaced the object (now {body!r})")
