"""Storage backends: one contract for a directory and an S3 bucket (moto's server)."""

from __future__ import annotations

import os
import pickle

import pytest

from spacefs.engine.backend import Backend, LocalBackend, backend_for
from spacefs.engine.errors import SpaceError, StorageError, UserInputError
from spacefs.engine.objstore import S3Backend


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path):
    if request.param == "local":
        return backend_for(str(tmp_path / "ds"))
    return backend_for(request.getfixturevalue("s3_bucket") + "/some/prefix")


def test_backend_for_kinds(tmp_path, s3_bucket):
    assert isinstance(backend_for(str(tmp_path)), LocalBackend)
    assert isinstance(backend_for(f"file://{tmp_path}"), LocalBackend)
    b = backend_for(s3_bucket + "/a/b/")
    assert isinstance(b, S3Backend) and b.prefix == "a/b" and b.uri == s3_bucket + "/a/b"
    with pytest.raises(UserInputError, match="gs://x"):
        backend_for("gs://x/y")
    with pytest.raises(UserInputError, match="names no bucket"):
        backend_for("s3:///just/a/path")


def test_both_backends_implement_the_one_protocol(backend, tmp_path, s3_bucket):
    """One ``Backend`` protocol: the contract suite below runs on both of its backends."""
    assert isinstance(S3Backend(s3_bucket + "/p"), Backend)
    assert isinstance(LocalBackend(str(tmp_path)), Backend)
    assert isinstance(backend, Backend)


def test_put_read_ranges_list_delete(backend):
    data = bytes(range(256)) * 64
    backend.put("data/records/f/a.bin", data)
    backend.put("metadata/log/000000000000.json", b"{}")
    assert backend.read("data/records/f/a.bin") == data
    assert backend.size("data/records/f/a.bin") == len(data)
    assert backend.read_range("data/records/f/a.bin", 100, 50) == data[100:150]
    ranges = [(0, 10), (5000, 7), (10, 0), (16000, 384), (3, 4)]
    assert backend.read_ranges("data/records/f/a.bin", ranges) == [data[s:s + n] for s, n in ranges]
    assert backend.exists("metadata/log/000000000000.json")
    assert not backend.exists("metadata/log/000000000001.json")
    assert backend.list_paths("data/") == ["data/records/f/a.bin"]
    assert backend.list_paths("") == ["data/records/f/a.bin", "metadata/log/000000000000.json"]
    backend.put("metadata/log/000000000001.json", b"{}")
    assert backend.list_paths("metadata/log/", start_after="metadata/log/000000000000.json") == [
        "metadata/log/000000000001.json"]
    # list: the names directly under a directory, as engine/backend.py's seam has it
    assert backend.list("") == ["data", "metadata"]
    assert backend.list("metadata/log") == ["000000000000.json", "000000000001.json"]
    assert backend.list("data/records/") == ["f"]
    assert backend.list("nothing/here") == []
    assert backend.read_bytes("metadata/log/000000000000.json") == b"{}"
    backend.put("data/records/f/b.bin", data)
    with backend.open_record("data/records/f/b.bin") as rec:
        assert rec.read_range(7, 9) == data[7:16] and rec.read_ranges([(1, 2)]) == [data[1:3]]
    assert backend.stat("data/records/f/a.bin").size == len(data)
    backend.delete(["data/records/f/a.bin", "data/records/f/never-existed.bin"])
    assert not backend.exists("data/records/f/a.bin")
    with pytest.raises(FileNotFoundError, match="a.bin"):
        backend.read("data/records/f/a.bin")


def test_put_if_absent_has_one_winner(backend):
    calls = []
    assert backend.put_if_absent("metadata/log/000000000007.json", b"first", before_publish=lambda: calls.append(1))
    assert not backend.put_if_absent("metadata/log/000000000007.json", b"second", sync=True)
    assert backend.read("metadata/log/000000000007.json") == b"first" and calls == [1]
    assert backend.copy_if_absent("metadata/log/000000000007.json", "metadata/snapshots/000000000003.json")
    backend.put("metadata/log/000000000008.json", b"other")
    assert not backend.copy_if_absent("metadata/log/000000000008.json", "metadata/snapshots/000000000003.json")
    assert backend.read("metadata/snapshots/000000000003.json") == b"first"


def test_a_refused_create_holding_our_bytes_was_ours(s3_bucket):
    """obstore retries a PUT whose answer was lost; the retry's 412 must not read as a loss."""
    b = backend_for(s3_bucket)
    assert b.put_if_absent("metadata/log/000000000001.json", b"entry one")
    assert b.put_if_absent("metadata/log/000000000001.json", b"entry one")  # as a retry sees it
    assert not b.put_if_absent("metadata/log/000000000001.json", b"another entry")
    assert b.local_path("x") is None and b.root == s3_bucket


def test_put_file_uploads_a_local_file(backend, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(7 * 1024 * 1024))  # above obstore's multipart threshold
    backend.put_file("data/records/f/big.bin", str(src))
    assert backend.read("data/records/f/big.bin") == src.read_bytes()


def test_etag_changes_with_content(backend):
    backend.put("x", b"one")
    a = backend.stat("x")
    backend.put("x", b"two!")
    b = backend.stat("x")
    assert a.etag != b.etag and b.size == 4


def test_missing_bucket_is_a_clear_error(moto_server, monkeypatch):
    for k, v in moto_server.env.items():
        monkeypatch.setenv(k, v)
    b = backend_for("s3://no-such-bucket-here/ds")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' of s3://no-such-bucket-here/ds does not exist"):
        b.read("metadata/dataset.json")
    with pytest.raises(StorageError, match="does not exist"):
        b.put("x", b"y")


def test_unreachable_endpoint_gives_up_after_bounded_retries(s3_bucket):
    b = backend_for(s3_bucket, {"endpoint": "http://127.0.0.1:9", "max_retries": 2, "retry_timeout": 5})
    with pytest.raises(StorageError, match=r"cannot reach http://127.0.0.1:9 \(gave up after 2 retries\)") as e:
        b.read("metadata/dataset.json")
    assert s3_bucket in str(e.value) and isinstance(e.value, SpaceError)


def test_storage_options_override_environment(moto_server, monkeypatch, tmp_path):
    # The environment points nowhere; the options (AWS variable spellings) name the server.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    bucket = moto_server.create_bucket()
    opts = {"AWS_ENDPOINT_URL": moto_server.endpoint, "aws_access_key_id": "testing",
            "secret_access_key": "testing", "region": "us-east-1"}
    b = backend_for(f"s3://{bucket}/p", opts)
    b.put("k", b"v")
    assert b.read("k") == b"v"
    # A backend travels to worker processes by its location and options, not its client.
    assert pickle.loads(pickle.dumps(b)).read("k") == b"v"


def test_refused_credentials_are_a_clear_error(monkeypatch):
    from s3_util import MotoServer

    strict = MotoServer({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # moto checks credentials from the start
    strict.start()
    try:
        for k, v in strict.env.items():
            monkeypatch.setenv(k, v)
        b = backend_for("s3://some-bucket/ds")
        for call in (lambda: b.read("metadata/dataset.json"), lambda: b.put("x", b"y"),
                     lambda: b.put_if_absent("metadata/log/000000000000.json", b"{}")):
            with pytest.raises(StorageError, match=r"s3://some-bucket/ds/.*access denied by http://127.0.0.1:\d+; "
                               r"check AWS_ACCESS_KEY_ID .*InvalidAccessKeyId"):
                call()
    finally:
        strict.stop()


def test_long_reads_are_cut_into_parallel_spans(s3_bucket, monkeypatch):
    from spacefs.engine import objstore

    monkeypatch.setattr(objstore, "MAX_SPAN", 4096)
    b = backend_for(s3_bucket)
    data = os.urandom(100_000)
    b.put("obj", data)
    ranges = [(s, 700) for s in range(99_000, 0, -1_300)] + [(0, 100_000), (5, 0)]
    assert b.read_ranges("obj", ranges) == [data[s:s + n] for s, n in ranges]


def test_conditional_write_check(backend):
    from spacefs.engine.objstore import check_conditional_writes

    check_conditional_writes(backend)
    assert backend.list_paths("metadata/") == []  # the probe is gone


def test_conditional_write_check_refuses_a_store_that_overwrites(tmp_path):
    from spacefs.engine.objstore import check_conditional_writes

    class Overwriting(LocalBackend):
        def put_if_absent(self, path, data):
            self.put(path, data)
            return True

    with pytest.raises(StorageError, match="does not honour conditional writes"):
        check_conditional_writes(Overwriting(str(tmp_path)))


def test_bad_storage_options_name_the_key():
    with pytest.raises(UserInputError, match="storage_options for s3://b/p: .*'bogus_key' is not valid"):
        backend_for("s3://b/p", {"bogus_key": 1})
    with pytest.raises(UserInputError, match="max_retries and retry_timeout must be numbers"):
        backend_for("s3://b/p", {"max_retries": "many"})


def test_a_forked_child_fails_fast_instead_of_hanging(s3_bucket):
    """obstore's runtime threads do not survive fork: a forked child must get a clear error
    (its first request would otherwise wait forever); spawned workers are fine."""
    b = backend_for(s3_bucket)
    b.put("obj", b"x" * 1000)
    assert b.read("obj") == b"x" * 1000  # this process has used obstore now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 2
        try:
            backend_for(s3_bucket).read("obj")
        except StorageError as e:
            os.write(w, str(e).encode())
            code = 0
        except BaseException as e:
            os.write(w, repr(e).encode())
        finally:
            os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        message = f.read()
    assert os.waitstatus_to_exitcode(status) == 0, message
    assert "forked from one that had already used object storage" in message and "'spawn'" in message
