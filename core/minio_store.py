"""The MinIO / S3 backend of core.storage, in a module of its own: only a process configured for MinIO loads the
client (with urllib3, pycryptodome and argon2-cffi, ~6 MB of every role's memory)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import BinaryIO
from urllib.parse import urlsplit

import urllib3.exceptions
from minio import Minio
from minio.error import MinioException, S3Error

from core.storage import (
    NOT_FOUND_CODES,
    REFUSED_CODES,
    ObjectNotFound,
    StorageError,
    as_stream,
    check_bucket,
    check_key,
    put_result,
)


def split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """`host:port` and whether to use TLS, from `host:port` (TLS per `secure`) or an `http(s)://host:port` URL."""
    if "://" not in endpoint:
        return endpoint, secure
    url = urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.netloc or url.path not in ("", "/") or url.query:
        raise StorageError(f"MinIO endpoint {endpoint!r}: must be host:port or http(s)://host:port", retryable=False)
    return url.netloc, url.scheme == "https"


class MinioStore:
    """MinIO or any S3-compatible service; the blocking client runs in worker threads."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, secure: bool = False):
        host, secure = split_endpoint(endpoint, secure)
        try:
            self.client = Minio(host, access_key=access_key, secret_key=secret_key, secure=secure)
        except ValueError as exc:
            raise StorageError(f"MinIO endpoint {endpoint!r}: {exc}", retryable=False) from exc
        self._known_buckets: set[str] = set()

    async def _call(self, what: str, fn, *args):
        """Run a blocking client call in a thread; library errors become StorageError naming `what`."""
        try:
            return await asyncio.to_thread(fn, *args)
        except S3Error as exc:
            if exc.code in NOT_FOUND_CODES:
                raise ObjectNotFound(f"{what}: {exc.code}: {exc.message}") from exc
            raise StorageError(f"{what}: {exc.code}: {exc.message}", retryable=exc.code not in REFUSED_CODES) from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"{what}: {exc}") from exc

    async def ensure_bucket(self, bucket: str) -> None:
        check_bucket(bucket)
        if bucket not in self._known_buckets:
            await self._call(f"create bucket {bucket}", self._create_bucket, bucket)
            self._known_buckets.add(bucket)

    def _create_bucket(self, bucket: str) -> None:
        if self.client.bucket_exists(bucket):
            return
        try:
            self.client.make_bucket(bucket)
        except S3Error as exc:
            if exc.code != "BucketAlreadyOwnedByYou":  # another writer created it between the two calls
                raise

    async def put(self, bucket: str, key: str, data: bytes | BinaryIO, length: int, content_type: str) -> dict:
        check_key(key)
        stream = as_stream(data, length)
        await self.ensure_bucket(bucket)
        await self._call(
            f"put {bucket}/{key}",
            lambda: self.client.put_object(bucket, key, stream, length, content_type=content_type),
        )
        return put_result(bucket, key, length, content_type)

    async def remove(self, bucket: str, key: str) -> None:
        check_bucket(bucket)
        check_key(key)
        try:
            await self._call(f"remove {bucket}/{key}", self.client.remove_object, bucket, key)
        except ObjectNotFound:
            pass  # no bucket, so nothing to remove

    async def exists(self, bucket: str, key: str) -> bool:
        check_bucket(bucket)
        check_key(key)
        try:
            await self._call(f"stat {bucket}/{key}", self.client.stat_object, bucket, key)
        except ObjectNotFound:
            return False
        return True

    async def get(self, bucket: str, key: str) -> bytes:
        check_bucket(bucket)
        check_key(key)
        return await self._call(f"get {bucket}/{key}", self._read, bucket, key)

    async def download_url(self, bucket: str, key: str, expires: int) -> str:
        check_bucket(bucket)
        check_key(key)
        lifetime = timedelta(seconds=max(1, expires - int(time.time())))
        return await self._call(f"presign {bucket}/{key}", self.client.presigned_get_object, bucket, key, lifetime)

    def _read(self, bucket: str, key: str) -> bytes:
        response = self.client.get_object(bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()
