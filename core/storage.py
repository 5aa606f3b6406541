"""Object storage behind one small interface: MinIO / S3 when configured, a local folder in the dev stack."""

from __future__ import annotations

import asyncio
import io
import os
import re
import uuid
from pathlib import Path
from typing import BinaryIO, Protocol

from core.settings import Settings
from core.signed_urls import DownloadSigner
from core.timestamps import iso_now

BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MAX_KEY_BYTES = 1024
COPY_CHUNK = 1 << 20
NOT_FOUND_CODES = {"NoSuchBucket", "NoSuchKey", "NoSuchObject", "ResourceNotFound"}
# Retrying cannot fix bad credentials or a policy that forbids the request.
REFUSED_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "InvalidBucketName",
}


class StorageError(Exception):
    """The store failed or refused a request; `retryable` says whether trying again can help."""

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class InvalidObjectName(StorageError):
    """A bucket or key the store must not hold: a bad bucket name, an absolute key, a '..' segment."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


class ObjectNotFound(StorageError):
    """The object, or its bucket, does not exist."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


class ObjectStore(Protocol):
    async def ensure_bucket(self, bucket: str) -> None: ...

    async def put(self, bucket: str, key: str, data: bytes | BinaryIO, length: int, content_type: str) -> dict:
        """Store `length` bytes of `data`; returns {bucket, key, size_bytes, content_type, created_at}."""

    async def remove(self, bucket: str, key: str) -> None:
        """Delete the object; removing one that does not exist is not an error."""

    async def exists(self, bucket: str, key: str) -> bool: ...

    async def get(self, bucket: str, key: str) -> bytes:
        """The object's bytes; raises ObjectNotFound when it (or its bucket) does not exist."""

    async def download_url(self, bucket: str, key: str, expires: int) -> str:
        """A link that fetches the object until `expires` (Unix seconds): absolute (presigned S3), or a path
        on this API (the folder store)."""


def check_bucket(bucket: str) -> None:
    if not isinstance(bucket, str) or not BUCKET_NAME.match(bucket) or ".." in bucket:
        raise InvalidObjectName(f"bucket {bucket!r}: must be 3-63 lower-case letters, digits, '.' or '-'")


def check_key(key: str) -> None:
    """Keys are relative '/'-separated paths, so a folder-backed store can never be led outside its root."""
    if not isinstance(key, str) or not key or len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidObjectName(f"key {key!r}: must be a non-empty string of at most {MAX_KEY_BYTES} bytes")
    if key.startswith("/") or "\\" in key or "\0" in key:
        raise InvalidObjectName(f"key {key!r}: must be a relative path with '/' separators")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidObjectName(f"key {key!r}: must not have empty, '.' or '..' segments")


def as_stream(data: bytes | BinaryIO, length: int) -> BinaryIO:
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) != length:
            raise StorageError(f"length is {length} but the data has {len(data)} bytes", retryable=False)
        return io.BytesIO(data)
    return data


def put_result(bucket: str, key: str, length: int, content_type: str) -> dict:
    created_at = iso_now()
    return {"bucket": bucket, "key": key, "size_bytes": length, "content_type": content_type, "created_at": created_at}


class LocalStore:
    """A folder laid out as <root>/<bucket>/<key>, behind the same interface, for the dev stack."""

    def __init__(self, root: Path, signer: DownloadSigner | None = None):
        self.root = Path(root)
        self.signer = signer or DownloadSigner(None)

    def _path(self, bucket: str, key: str | None = None) -> Path:
        check_bucket(bucket)
        if key is None:
            return self.root / bucket
        check_key(key)
        path = self.root / bucket / key
        # The checks above keep keys lexically inside; this also catches a symlink pointing out.
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise InvalidObjectName(f"key {key!r}: resolves outside the store")
        return path

    async def _call(self, what: str, fn, *args):
        try:
            return await asyncio.to_thread(fn, *args)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{what}: no such object") from exc
        except OSError as exc:
            raise StorageError(f"{what}: {exc}") from exc

    async def ensure_bucket(self, bucket: str) -> None:
        path = self._path(bucket)
        await self._call(f"create bucket {bucket}", lambda: path.mkdir(parents=True, exist_ok=True))

    async def put(self, bucket: str, key: str, data: bytes | BinaryIO, length: int, content_type: str) -> dict:
        path = self._path(bucket, key)
        stream = as_stream(data, length)
        await self._call(f"put {bucket}/{key}", _write_exactly, path, stream, length)
        return put_result(bucket, key, length, content_type)

    async def remove(self, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        await self._call(f"remove {bucket}/{key}", lambda: path.unlink(missing_ok=True))

    async def exists(self, bucket: str, key: str) -> bool:
        path = self._path(bucket, key)
        return await self._call(f"stat {bucket}/{key}", path.is_file)

    async def get(self, bucket: str, key: str) -> bytes:
        path = self._path(bucket, key)
        return await self._call(f"get {bucket}/{key}", path.read_bytes)

    async def download_url(self, bucket: str, key: str, expires: int) -> str:
        self._path(bucket, key)
        return self.signer.link(bucket, key, expires)

    def file_path(self, bucket: str, key: str) -> Path:
        """Where an object lives on disk (checked to stay inside the store)."""
        return self._path(bucket, key)


def _write_exactly(path: Path, stream: BinaryIO, length: int) -> None:
    """Copy `length` bytes into `path` through a temporary file, so readers never see half an object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        with partial.open("wb") as out:
            remaining = length
            while remaining > 0:
                chunk = stream.read(min(COPY_CHUNK, remaining))
                if not chunk:
                    raise StorageError(
                        f"stream ended {remaining} bytes short of the {length} promised", retryable=False
                    )
                out.write(chunk)
                remaining -= len(chunk)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def object_store(settings: Settings) -> ObjectStore:
    """MinIO when MINIO_ENDPOINT is set, else a folder under settings.artifacts_dir."""
    if settings.minio_endpoint:
        from core.minio_store import MinioStore  # the S3 client and its dependencies: ~6 MB a process that uses none

        return MinioStore(
            settings.minio_endpoint, settings.minio_access_key, settings.minio_secret_key, settings.minio_secure
        )
    return LocalStore(settings.artifacts_dir, DownloadSigner(settings.artifact_url_secret))
