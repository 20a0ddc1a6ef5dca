import os
import socket

import boto3
import pytest

from pipeline.errors import ConfigError
from pipeline.store.backend import ObjectStore, open_store
from pipeline.store.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    EndpointUnreachableError,
    ObjectCorruptError,
    ObjectMissingError,
)
from pipeline.store.s3 import S3Store

pytestmark = pytest.mark.integration


def test_put_then_get_returns_the_same_bytes(object_store: ObjectStore):
    object_store.put("packs/ab/abc", b"hello world")
    assert object_store.get("packs/ab/abc") == b"hello world"
    assert object_store.size("packs/ab/abc") == 11


def test_ranged_get_returns_just_that_range(object_store: ObjectStore):
    object_store.put("obj", bytes(range(256)))
    assert object_store.get("obj", 10, 5) == bytes(range(10, 15))
    assert object_store.get("obj", 250) == bytes(range(250, 256))
    assert object_store.get("obj", 3, 0) == b""


def test_put_replaces_an_object_whole(object_store: ObjectStore):
    object_store.put("config", b"a" * 1000)
    object_store.put("config", memoryview(b"b" * 10))
    assert object_store.get("config") == b"b" * 10


def test_missing_object_has_no_size_and_reading_it_is_a_clear_error(object_store: ObjectStore):
    assert object_store.size("points/nothing.json") is None
    with pytest.raises(ObjectMissingError, match="points/nothing.json is missing"):
        object_store.get("points/nothing.json")


def test_list_by_prefix_is_sorted_and_complete(object_store: ObjectStore):
    keys = [f"index/{i:04d}.parquet" for i in range(30)] + ["packs/00/x", "points/a.json", "indexes-not"]
    for key in keys:
        object_store.put(key, b"x")
    assert object_store.list_keys("index/") == sorted(k for k in keys if k.startswith("index/"))
    assert object_store.list_keys("index") == sorted(k for k in keys if k.startswith("index"))
    assert object_store.list_keys() == sorted(keys)


def test_delete_removes_and_tolerates_a_missing_object(object_store: ObjectStore):
    object_store.put("locks/shared-1.json", b"{}")
    object_store.delete("locks/shared-1.json")
    object_store.delete("locks/shared-1.json")
    assert object_store.list_keys("locks/") == []


def test_keys_that_could_escape_the_repository_are_refused(object_store: ObjectStore):
    for key in ("../x", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(ValueError):
            object_store.put(key, b"x")


def test_large_object_goes_up_in_parts_and_comes_back_whole(s3_endpoint, s3_bucket):
    store = S3Store(
        s3_bucket, "repo", endpoint_url=s3_endpoint, multipart_threshold=5 << 20, multipart_chunksize=5 << 20
    )
    body = os.urandom(11 << 20)
    store.put("packs/aa/big", body)
    assert store.get("packs/aa/big") == body
    assert store.get("packs/aa/big", (5 << 20) - 3, 6) == body[(5 << 20) - 3 : (5 << 20) + 3]


def test_an_s3_object_changed_behind_our_back_fails_its_checksum(s3_endpoint, s3_bucket, s3_client):
    store = open_store(f"s3://{s3_bucket}/repo", endpoint_url=s3_endpoint)
    store.put("manifests/m.parquet", b"original bytes")
    meta = s3_client.head_object(Bucket=s3_bucket, Key="repo/manifests/m.parquet")["Metadata"]
    s3_client.put_object(
        Bucket=s3_bucket, Key="repo/manifests/m.parquet", Body=b"tampered bytes", Metadata=meta
    )
    with pytest.raises(ObjectCorruptError, match="does not match its recorded BLAKE3"):
        store.get("manifests/m.parquet")


def test_a_missing_bucket_is_named_with_a_hint(s3_endpoint):
    with pytest.raises(BucketNotFoundError, match="bucket no-such-bucket does not exist") as e:
        open_store("s3://no-such-bucket/repo", endpoint_url=s3_endpoint)
    assert "create the bucket" in str(e.value)


def test_bad_credentials_are_reported_as_access_denied(s3_endpoint, s3_bucket, monkeypatch):
    # moto checks signatures only with its auth switch on; it answers the same codes as AWS.
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "")
    with pytest.raises(AccessDeniedError, match="no S3 credentials"):
        open_store(f"s3://{s3_bucket}/repo", endpoint_url=s3_endpoint)
    assert s3.head_bucket(Bucket=s3_bucket)  # the server is fine; only our credentials were gone


def test_an_unreachable_endpoint_is_reported_as_such():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(EndpointUnreachableError, match=f"127.0.0.1:{port}"):
        open_store("s3://bucket/repo", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1)


def test_unknown_urls_and_addressing_styles_are_config_errors():
    with pytest.raises(ConfigError, match="unsupported repository URL"):
        open_store("ftp://host/x")
    with pytest.raises(ConfigError, match="addressing style"):
        open_store("s3://b/p", addressing_style="sideways")
