"""A repository in an S3 bucket (AWS, MinIO, Ceph RGW, moto...): the only module that imports boto3.

Every object body's BLAKE3 goes into the object's user metadata and is checked on every full read,
so a store that returns damaged bytes is caught even outside the packs' own chunk hashes.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable
from typing import TypeVar

import blake3
import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from pipeline.errors import ConfigError
from pipeline.store.backend import Body, body_bytes, check_key
from pipeline.store.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    EndpointUnreachableError,
    ObjectCorruptError,
    ObjectMissingError,
    StoreError,
)

T = TypeVar("T")
CHECKSUM_META = "vmpump-blake3"
ADDRESSING_STYLES = ("auto", "path", "virtual")
_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "403",
}
# botocore retries whole requests, but not a body stream that breaks half-way, nor a multipart
# upload that s3transfer gave up on; these are retried here, around the whole operation.
_TRANSIENT = (ReadTimeoutError, ConnectionClosedError, ResponseStreamingError, IncompleteReadError)


class _ChecksumMismatch(Exception):
    pass


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
        max_attempts: int = 8,
        retry_mode: str = "adaptive",
        # A default 32 MiB pack goes up in one PUT (measured faster than 8 MiB parts); larger
        # objects go in parts, so a failed part is re-sent alone.
        multipart_threshold: int = 64 << 20,
        multipart_chunksize: int = 16 << 20,
    ) -> None:
        if addressing_style not in ADDRESSING_STYLES:
            raise ConfigError(
                f"unknown S3 addressing style {addressing_style!r}",
                f"use one of {', '.join(ADDRESSING_STYLES)}",
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        config = Config(
            region_name=region,
            s3={"addressing_style": addressing_style},
            retries={"max_attempts": max_attempts, "mode": retry_mode},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=32,
            # Only checksums the server must understand: keeps older MinIO/Ceph releases working.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
        self._endpoint = self._client.meta.endpoint_url
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=4,
        )
        self._attempts = 4
        self._call("check bucket", "", lambda: self._client.head_bucket(Bucket=bucket))

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: Body, *, self_checking: bool = False) -> None:
        joined = body_bytes(data)
        body = bytes(joined) if isinstance(joined, memoryview) else joined
        # a self-checking object (a pack) is never read whole and verified by its own content
        meta = {} if self_checking else {CHECKSUM_META: blake3.blake3(body).hexdigest()}
        full = self._key(key)
        if len(body) >= self._transfer.multipart_threshold:
            upload = lambda: self._client.upload_fileobj(  # noqa: E731
                io.BytesIO(body), self.bucket, full, ExtraArgs={"Metadata": meta}, Config=self._transfer
            )
        else:
            upload = lambda: self._client.put_object(Bucket=self.bucket, Key=full, Body=body, Metadata=meta)  # noqa: E731
        self._call("put", key, upload)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if length == 0:
            return b""
        full = self._key(key)
        whole = offset == 0 and length is None

        def fetch() -> bytes:
            args = {"Bucket": self.bucket, "Key": full}
            if not whole:
                end = "" if length is None else str(offset + length - 1)
                args["Range"] = f"bytes={offset}-{end}"
            resp = self._client.get_object(**args)
            body = resp["Body"].read()
            expected = resp.get("Metadata", {}).get(CHECKSUM_META)
            if whole and expected and blake3.blake3(body).hexdigest() != expected:
                raise _ChecksumMismatch()
            return body

        try:
            return self._call("get", key, fetch)
        except _ChecksumMismatch:
            raise ObjectCorruptError(
                f"object {key} in {self.url} does not match its recorded BLAKE3",
                "the stored object is damaged; run verify and repair from another copy",
            ) from None

    def size(self, key: str) -> int | None:
        try:
            resp = self._call(
                "head", key, lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            )
        except ObjectMissingError:
            return None
        return int(resp["ContentLength"])

    def list_keys(self, prefix: str = "") -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""

        def listing() -> list[str]:
            keys = []
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix
            )
            for page in pages:
                keys.extend(obj["Key"][len(base) :] for obj in page.get("Contents", []))
            return keys

        return sorted(self._call("list", prefix, listing))

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        for attempt in range(self._attempts):
            try:
                return fn()
            except (*_TRANSIENT, _ChecksumMismatch) as e:
                if attempt == self._attempts - 1:
                    if isinstance(e, _ChecksumMismatch):
                        raise
                    raise StoreError(
                        f"S3 {op} of {key} kept failing: {e}", "check the network and the server"
                    ) from e
                time.sleep(min(0.2 * 2**attempt, 5.0) * random.uniform(0.5, 1.0))
            except S3UploadFailedError as e:
                cause = e.__context__
                raise self._translate(op, key, cause if isinstance(cause, ClientError) else e) from e
            except (ClientError, BotoCoreError) as e:
                raise self._translate(op, key, e) from e
        raise AssertionError("unreachable")

    def _translate(self, op: str, key: str, e: Exception) -> StoreError:
        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            return AccessDeniedError(
                "no S3 credentials found",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use an instance role",
            )
        if isinstance(e, (EndpointConnectionError, ConnectTimeoutError)):
            return EndpointUnreachableError(
                f"cannot reach the S3 endpoint {self._endpoint}",
                "check endpoint_url, DNS, firewall and proxy",
            )
        if not isinstance(e, ClientError):
            return StoreError(f"S3 {op} of {key or self.url} failed: {e}", "check the S3 server and its logs")
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket" or (op == "check bucket" and (code == "404" or status == 404)):
            return BucketNotFoundError(
                f"bucket {self.bucket} does not exist at {self._endpoint}",
                "create the bucket or fix the repository URL",
            )
        if code in _DENIED or status == 403:
            return AccessDeniedError(
                f"access denied to {self.url} ({code})",
                "check the access key, secret and the bucket policy",
            )
        if code in ("NoSuchKey", "404") or status == 404:
            return ObjectMissingError(
                f"object {key} is missing in {self.url}", "the repository is incomplete; run verify"
            )
        return StoreError(
            f"S3 {op} of {key or self.url} failed: {code} {e}", "check the S3 server and its logs"
        )
