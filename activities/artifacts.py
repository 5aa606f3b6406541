"""artifacts.upload_artifact: stores the files a node was given under jobs/<jobId>/<artifactId>/ in object storage."""

from __future__ import annotations

import base64
import binascii
import mimetypes
import uuid
from dataclasses import dataclass

from temporalio.exceptions import ApplicationError

from activities.resources import Resources
from core.storage import InvalidObjectName, StorageError, object_store
from workflows.inputs import NodeTask

DEFAULT_BUCKET = "artifacts"
MAX_NAME_LENGTH = 255


@dataclass(frozen=True)
class ArtifactFile:
    name: str
    content_type: str
    data: bytes


def invalid_params(problem: str) -> ApplicationError:
    return ApplicationError(f"artifacts.upload_artifact params: {problem}", type="InvalidParams", non_retryable=True)


def _file(i: int, spec) -> ArtifactFile:
    """One entry of params.files, decoded; exactly one of `text` and `base64` carries its content."""
    where = f"files/{i}"
    if not isinstance(spec, dict):
        raise invalid_params(f"{where}: must be an object")
    name = spec.get("name")
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise invalid_params(f"{where}/name: must be a plain file name without path separators, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise invalid_params(f"{where}/name: longer than {MAX_NAME_LENGTH} characters")
    has_text, has_base64 = spec.get("text") is not None, spec.get("base64") is not None
    if has_text == has_base64:
        raise invalid_params(f"{where}: give exactly one of `text` and `base64`")
    if has_text:
        if not isinstance(spec["text"], str):
            raise invalid_params(f"{where}/text: must be a string")
        data, fallback_type = spec["text"].encode(), "text/plain; charset=utf-8"
    else:
        try:
            data = base64.b64decode(spec["base64"], validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise invalid_params(f"{where}/base64: not valid base64 ({exc})") from exc
        fallback_type = "application/octet-stream"
    content_type = spec.get("contentType")
    if content_type is not None and (not isinstance(content_type, str) or not content_type):
        raise invalid_params(f"{where}/contentType: must be a non-empty string")
    return ArtifactFile(name, content_type or mimetypes.guess_type(name)[0] or fallback_type, data)


def _files(params: dict) -> list[ArtifactFile]:
    specs = params.get("files")
    if not isinstance(specs, list) or not specs:
        raise invalid_params("files: must be a non-empty list of {name, contentType?, text | base64}")
    files = [_file(i, spec) for i, spec in enumerate(specs)]
    names = [f.name for f in files]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise invalid_params(f"files: names must be unique, repeated: {', '.join(duplicates)}")
    return files


async def upload_artifact(task: NodeTask, res: Resources) -> dict:
    """Store every file of params.files as one artifact and describe where each landed."""
    params = task.params or {}
    bucket = params.get("bucket")
    bucket = DEFAULT_BUCKET if bucket is None else bucket
    files = _files(params)
    # Derived from the job and node, so a retried attempt overwrites its own objects instead of orphaning them.
    artifact_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"spinbot:{task.job_id}/{task.node_id}"))
    objects = {}
    try:
        if res.storage is None:
            res.storage = object_store(res.settings)
        for f in files:
            key = f"jobs/{task.job_id}/{artifact_id}/{f.name}"
            objects[f.name] = await res.storage.put(bucket, key, f.data, len(f.data), f.content_type)
    except InvalidObjectName as exc:
        raise invalid_params(str(exc)) from exc
    except StorageError as exc:
        raise ApplicationError(
            f"artifacts.upload_artifact: {exc}", type="StorageFailed", non_retryable=not exc.retryable
        ) from exc
    return {"artifactId": artifact_id, "bucket": bucket, "objects": objects, "currentProgress": task.progress_end}
