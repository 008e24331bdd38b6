"""``S3Backend``: a dataset at ``s3://bucket/prefix`` on any S3-compatible store.

It implements the one storage protocol, ``backend.Backend`` (``backend.LocalBackend`` is
the directory's side; ``backend.backend_for`` picks between them). Paths are relative to
the dataset root and ``/``-separated, exactly the relative paths stored in the metadata,
so the same layout works object for object on either side.

The commit primitive is ``put_if_absent``: ``link(2)`` on a directory, a conditional PUT
(``If-None-Match: *``) on a bucket. Either way exactly one writer creates a name.

Why obstore (the Python binding of the Rust ``object_store`` crate used by DataFusion,
Lance's lineage and delta-rs) rather than boto3, s3fs or fsspec:
- conditional puts (``mode="create"`` sends ``If-None-Match: *`` and maps 412 to
  ``AlreadyExistsError``), which is the whole commit protocol; boto3 has them too but
  s3fs/fsspec do not expose them;
- ``get_ranges`` coalesces nearby ranges and issues the requests in parallel, in Rust,
  without the GIL: the shape of a batch of record reads;
- retries with exponential backoff and jitter, bounded by count and time, configured per
  store; typed exceptions (NotFound, AlreadyExists, PermissionDenied, Unauthenticated);
- the standard ``AWS_*`` variables (``AWS_ENDPOINT_URL`` included) are honoured, so MinIO,
  R2, Ceph or moto work unchanged; one self-contained wheel, no botocore.
Verified against moto's server in tests/test_objstore.py (conditional create refused with
412, multi-range reads, listing after a key, bulk delete, missing bucket, dead endpoint).
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import obstore
import obstore.exceptions as ox
from obstore.store import S3Store

from .backend import Backend, ObjectInfo, RangeReader
from .errors import StorageError, UserInputError

# Ranges closer than this are fetched by one request: a GET costs ~a round trip, and on a
# LAN or in-region a round trip moves several hundred KiB.
COALESCE_BYTES = 256 * 1024
# ...but one GET moves at most this much, so a long read is several requests in parallel.
MAX_SPAN = 8 << 20

# Keys of ``storage_options`` that configure the HTTP client rather than S3 itself.
_CLIENT_KEYS = {
    "allow_http", "allow_invalid_certificates", "connect_timeout", "timeout", "read_timeout",
    "pool_idle_timeout", "pool_max_idle_per_host", "proxy_url", "user_agent", "default_headers",
}
_RETRY_KEYS = {"max_retries", "retry_timeout"}
# Spellings of the same setting: the AWS variable names, and the names other tools use.
_ALIASES = {"endpoint_url": "endpoint", "token": "session_token", "default_region": "region"}


def check_conditional_writes(backend: Backend) -> None:
    """Refuse a store that ignores ``If-None-Match: *``: commits there could be lost silently.

    Run once when a dataset is created on a bucket (2 PUTs and a DELETE). AWS S3 (since
    2024), MinIO, Cloudflare R2 and moto honour it; a store that does not fails here, not
    at the first lost commit.
    """
    probe = f"metadata/.conditional-put-probe-{uuid.uuid4().hex}"
    try:
        first = backend.put_if_absent(probe, b"1")
        second = backend.put_if_absent(probe, b"2")
        stored = backend.read(probe)
    finally:
        backend.delete([probe])
    if not first or second or stored != b"1":
        raise StorageError(
            f"{backend.uri} does not honour conditional writes (If-None-Match: *): concurrent "
            "commits could overwrite each other, so spacefs will not store datasets there")


_HONOURED: set[tuple[str, str]] = set()  # (endpoint, bucket) found to honour them, this process
_HONOURED_LOCK = threading.Lock()


def ensure_conditional_writes(backend: Backend) -> None:
    """``check_conditional_writes`` once per endpoint and bucket per process: a catalog
    creating many datasets probes its store once. Only a success is remembered."""
    key = (getattr(backend, "endpoint", ""), getattr(backend, "bucket", backend.uri))
    with _HONOURED_LOCK:
        if key in _HONOURED:
            return
    check_conditional_writes(backend)
    with _HONOURED_LOCK:
        _HONOURED.add(key)


# -- S3-compatible object storage ----------------------------------------------------
def _store_config(storage_options: dict[str, Any] | None) -> tuple[dict, dict, dict]:
    """Split ``storage_options`` into S3, HTTP-client and retry settings.

    Keys may be written as obstore names (``endpoint``), AWS variable names
    (``AWS_ENDPOINT_URL``) or lower-case variants; they override the environment.
    """
    s3: dict[str, Any] = {}
    client: dict[str, Any] = {}
    retry: dict[str, Any] = {}
    for key, value in (storage_options or {}).items():
        k = key.lower()
        k = k[4:] if k.startswith("aws_") else k
        k = _ALIASES.get(k, k)
        if k in _CLIENT_KEYS:
            client[k] = value
        elif k in _RETRY_KEYS:
            retry[k] = value
        else:
            s3[k] = value
    endpoint = s3.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and endpoint.startswith("http://"):
        # A plain-HTTP endpoint is a local server (MinIO, moto) the user named on purpose.
        client.setdefault("allow_http", True)
    if isinstance(client.get("allow_http"), str):
        client["allow_http"] = client["allow_http"].lower() in ("1", "true", "yes")
    client.setdefault("connect_timeout", "5s")
    client.setdefault("timeout", "120s")
    return s3, client, retry


_PORTABLE_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                       "AWS_REGION")


class S3Backend:
    """``s3://bucket/prefix`` on AWS S3 or any S3-compatible store, through obstore."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise UserInputError(f"{uri!r} names no bucket: use s3://bucket/prefix")
        self.uri = self.root = uri.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.storage_options = dict(storage_options or {})
        s3, client, retry = _store_config(storage_options)
        self.endpoint = s3.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        try:
            self.max_retries = int(retry.get("max_retries", 5))
            retry_timeout = float(retry.get("retry_timeout", 60))
        except (TypeError, ValueError):
            raise UserInputError(f"storage_options for {self.uri}: max_retries and retry_timeout must be numbers, "
                                 f"got {retry}") from None
        retry_config = {
            "max_retries": self.max_retries,
            "retry_timeout": timedelta(seconds=retry_timeout),
            "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=5), "base": 2},
        }
        try:
            self.store = S3Store(self.bucket, prefix=self.prefix or None, config=s3,
                                 client_options=client, retry_config=retry_config)
        except ox.UnknownConfigurationKeyError as e:
            raise UserInputError(f"storage_options for {self.uri}: {_first_line(e)}") from None
        except Exception as e:
            raise StorageError(f"cannot configure {self.uri}: {_first_line(e)}") from None

    def __reduce__(self):
        # Stores hold a Rust client; a worker process (Ray, multiprocessing) builds its own.
        return (S3Backend, (self.uri, self.storage_options))

    def portable(self) -> S3Backend:
        """This backend with the AWS variables of this process folded into its options:
        for worker processes (Ray) that may not have the variables in their environment.
        Options given explicitly still win."""
        env = {k: os.environ[k] for k in _PORTABLE_VARIABLES if os.environ.get(k)}
        if "AWS_ENDPOINT_URL" not in env and os.environ.get("AWS_ENDPOINT_URL_S3"):
            env["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL_S3"]
        return S3Backend(self.uri, {**env, **self.storage_options})

    @contextmanager
    def _errors(self, op: str, path: str):
        """Turn obstore's exceptions into FileNotFoundError (missing object) or StorageError."""

        _check_not_forked(self.uri)
        try:
            yield
        except (ox.AlreadyExistsError, ox.PreconditionError):
            raise  # answers of a conditional put, not failures
        except FileNotFoundError as e:
            if "NoSuchBucket" in str(e):
                raise StorageError(f"bucket {self.bucket!r} of {self.uri} does not exist (at {self.endpoint})") from None
            raise FileNotFoundError(f"{self.uri}/{path} does not exist") from None
        except (ox.PermissionDeniedError, ox.UnauthenticatedError) as e:
            raise StorageError(
                f"{op} {self.uri}/{path}: access denied by {self.endpoint}; check AWS_ACCESS_KEY_ID / "
                f"AWS_SECRET_ACCESS_KEY or storage_options ({_first_line(e)})") from None
        except ox.BaseError as e:
            text = str(e)
            if "error sending request" in text or "Connect" in text or "timed out" in text:
                raise StorageError(
                    f"{op} {self.uri}/{path}: cannot reach {self.endpoint} (gave up after "
                    f"{self.max_retries} retries): {_first_line(e)}") from None
            if "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text or "AccessDenied" in text:
                raise StorageError(f"{op} {self.uri}/{path}: credentials refused by {self.endpoint}: {_first_line(e)}") from None
            raise StorageError(f"{op} {self.uri}/{path} failed: {_first_line(e)}") from None

    def read(self, path: str) -> bytes:

        with self._errors("read", path):
            return bytes(obstore.get(self.store, path).bytes())

    read_bytes = read

    def local_path(self, path: str) -> str | None:
        return None  # not in a local file system: read by range

    @contextmanager
    def open_record(self, path: str) -> Iterator[RangeReader]:
        """A ranged-GET reader: an object store has nothing to hold open."""
        yield RangeReader(self, path)

    def read_range(self, path: str, start: int, length: int) -> bytes:

        if length == 0:
            return b""
        with self._errors("read", path):
            return bytes(obstore.get_range(self.store, path, start=start, length=length))

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Many ranges of one object: nearby ranges share a GET, the GETs run in parallel.

        obstore merges ranges closer than ``COALESCE_BYTES`` however long the result; we
        first cut the sorted ranges into spans of at most ``MAX_SPAN`` bytes and fetch the
        spans in parallel, since one S3 connection streams far slower than several.
        """
        want = sorted((s, n, i) for i, (s, n) in enumerate(ranges) if n > 0)
        out = [b""] * len(ranges)
        batches: list[list[tuple[int, int, int]]] = []
        for r in want:
            if batches and r[0] + r[1] - batches[-1][0][0] <= MAX_SPAN:
                batches[-1].append(r)
            else:
                batches.append([r])

        def fetch(batch: list[tuple[int, int, int]]) -> None:
            with self._errors("read", path):
                got = obstore.get_ranges(self.store, path, starts=[s for s, _, _ in batch],
                                         lengths=[n for _, n, _ in batch], coalesce=COALESCE_BYTES)
            for (_, _, i), b in zip(batch, got, strict=True):
                out[i] = bytes(b)

        if len(batches) == 1:
            fetch(batches[0])
        elif batches:
            for f in [pool().submit(fetch, b) for b in batches]:
                f.result()
        return out

    def put(self, path: str, data: bytes) -> None:

        with self._errors("write", path):
            obstore.put(self.store, path, data)

    def put_file(self, path: str, local_path: str) -> None:
        """Upload a local file (multipart when large): how record files reach the bucket."""

        with self._errors("write", path):
            obstore.put(self.store, path, Path(local_path))

    def put_if_absent(self, path: str, data: bytes, *, sync: bool = False,
                      before_publish: Callable[[], None] | None = None) -> bool:
        """Create ``path`` unless it exists (``If-None-Match: *``); False if it existed.

        One case a directory never has: obstore retries a PUT whose answer was lost, and
        that retry is refused (412) by the object our first attempt created. So a refusal
        is checked by reading the object back: if it holds our bytes, the create was ours.
        (Callers publish unique bytes: a log entry holds its time and fresh file names.)
        ``sync`` is meaningless here: a PUT is durable when it is answered.
        """
        if before_publish is not None:
            before_publish()
        try:
            with self._errors("write", path):
                obstore.put(self.store, path, data, mode="create")
            return True
        except (ox.AlreadyExistsError, ox.PreconditionError):
            # PreconditionError: 409 ConditionalRequestConflict, another create in flight.
            pass
        try:
            return self.read(path) == data
        except FileNotFoundError:
            return False  # the conflicting create failed too: the caller retries

    def copy_if_absent(self, src: str, dst: str) -> bool:
        """``dst`` gets the bytes of ``src`` unless it exists (a snapshot's entry: small)."""
        return self.put_if_absent(dst, self.read(src))

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except FileNotFoundError:
            return False

    def stat(self, path: str) -> ObjectInfo:

        with self._errors("stat", path):
            meta = obstore.head(self.store, path)
        return ObjectInfo(meta["size"], meta.get("e_tag") or f"{meta['last_modified'].timestamp()}-{meta['size']}")

    def size(self, path: str) -> int:
        return self.stat(path).size

    def list(self, prefix: str) -> list[str]:
        """Names directly under the "directory" ``prefix`` (objects and common prefixes)."""
        base = prefix.strip("/")
        with self._errors("list", prefix):
            res = obstore.list_with_delimiter(self.store, base or None)
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in res["common_prefixes"]]
        names += [m["path"].rsplit("/", 1)[-1] for m in res["objects"]]
        return sorted(names)

    def list_paths(self, prefix: str, start_after: str | None = None) -> list[str]:
        """Relative paths under ``prefix``, sorted; only those after ``start_after`` if given."""

        out: list[str] = []
        with self._errors("list", prefix):
            for batch in obstore.list(self.store, prefix or None, offset=start_after):
                out.extend(m["path"] for m in batch)
        return sorted(p for p in out if p.startswith(prefix))

    def list_stats(self, prefix: str) -> list[tuple[str, int, float]]:
        """``(path, size, last-modified time)`` of the objects under ``prefix``, sorted."""
        out: list[tuple[str, int, float]] = []
        with self._errors("list", prefix):
            for batch in obstore.list(self.store, prefix or None):
                out.extend((m["path"], m["size"], m["last_modified"].timestamp()) for m in batch)
        return sorted(o for o in out if o[0].startswith(prefix))

    def delete(self, paths: Iterable[str]) -> None:

        paths = list(paths)
        for i in range(0, len(paths), 1000):  # the S3 bulk-delete limit
            with self._errors("delete", paths[i]):
                obstore.delete(self.store, paths[i:i + 1000])


_USED_IN: int | None = None  # the pid that started obstore's runtime (its first request)


def _check_not_forked(uri: str) -> None:
    """Fail fast, not hang, in a child forked after obstore ran in its parent.

    obstore drives its requests on a process-wide tokio runtime whose threads do not
    survive ``fork``: a forked child's first request would wait forever. Workers must be
    started with "spawn" or "forkserver" (or fork before the parent touches a bucket).
    """
    global _USED_IN
    pid = os.getpid()
    if _USED_IN is None:
        _USED_IN = pid
    elif _USED_IN != pid:
        raise StorageError(
            f"{uri}: this process was forked from one that had already used object storage, and "
            "obstore's I/O threads do not survive fork; start workers with the 'spawn' or "
            "'forkserver' method (multiprocessing.get_context('spawn'), "
            "DataLoader(multiprocessing_context='spawn'))")


def _first_line(e: BaseException) -> str:
    """obstore's message without its debug dump; the S3 error code and message if any."""
    text = str(e).split("\n\nDebug source:")[0]
    head = text.split("\n")[0].split(": <?xml")[0][:300]
    code = re.search(r"<Code>([^<]*)</Code>", text)
    msg = re.search(r"<Message>([^<]*)</Message>", text)
    if code:
        head += f" [{code.group(1)}{': ' + msg.group(1) if msg else ''}]"
    return head


_POOLS: dict[str, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _after_fork() -> None:
    # A forked child inherits the executors but not their threads (nor a held lock).
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


def pool(kind: str = "requests") -> ThreadPoolExecutor:
    """Threads for many requests at once (obstore releases the GIL while it waits).

    ``"requests"`` runs single requests and must never wait on its own tasks; work that
    fans out again (a file whose ranges are split into spans) runs in ``"files"``, so no
    task ever waits for a slot its own pool cannot free.
    """
    with _POOLS_LOCK:
        if kind not in _POOLS:
            _POOLS[kind] = ThreadPoolExecutor(max_workers=16, thread_name_prefix=f"spacefs-{kind}")
        return _POOLS[kind]
