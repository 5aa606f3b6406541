"""A job's output artifacts with short-lived download links, and the folder store's signed downloads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from api.deps import BackendDep, StorageDep
from api.errors import ApiError
from api.models import ArtifactList, ErrorBody
from core.signed_urls import DOWNLOAD_PATH, LinkRefused
from core.storage import InvalidObjectName, LocalStore, ObjectStore, StorageError
from core.store import is_job_id

router = APIRouter(prefix="/api", tags=["artifacts"], responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}})
# No API key here: the signature is the credential, so a browser can follow the link as it is.
download_router = APIRouter(tags=["artifacts"])


def _is_object_ref(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("bucket"), str) and isinstance(value.get("key"), str)


def output_artifacts(graph: Any) -> list[tuple[str, str, dict]]:
    """(nodeId, name, {bucket, key, ...}) of every object a node's output names, one level deep
    (`videoArtifact`, `audioArtifact`, `objects.<file>` of artifacts.upload_artifact)."""
    found = []
    for node in (graph or {}).get("nodes") or []:
        output = node.get("output") if isinstance(node, dict) else None
        if not isinstance(output, dict):
            continue
        for name, value in output.items():
            if _is_object_ref(value):
                found.append((node["id"], name, value))
            elif isinstance(value, dict):
                found += [(node["id"], f"{name}.{inner}", ref) for inner, ref in value.items() if _is_object_ref(ref)]
    return found


async def _link(storage: ObjectStore, bucket: str, key: str, expires: int) -> str | None:
    """A download link when the object is in storage, else None."""
    try:
        if not await storage.exists(bucket, key):
            return None
        return await storage.download_url(bucket, key, expires)
    except InvalidObjectName:
        return None  # a name no store may hold: nothing to download


@router.get("/jobs/{job_id}/artifacts", response_model=ArtifactList)
async def job_artifacts(backend: BackendDep, job_id: str, request: Request):
    """Objects the job's nodes produced, each with a link valid for SPINBOT_ARTIFACT_URL_SECONDS."""
    row = await backend.store.job(job_id) if is_job_id(job_id) else None
    if not row:
        raise ApiError(404, f"job {job_id} not found")
    found = output_artifacts(row["last_graph"])
    expires = int(time.time()) + backend.settings.artifact_url_seconds
    try:
        links = await asyncio.gather(*(_link(backend.storage, ref["bucket"], ref["key"], expires) for *_, ref in found))
    except StorageError as exc:
        raise ApiError(503, f"object storage unavailable: {exc}") from None
    base = str(request.base_url).rstrip("/")
    artifacts = [
        {
            "nodeId": node_id,
            "name": name,
            "bucket": ref["bucket"],
            "key": ref["key"],
            "contentType": ref.get("content_type") if isinstance(ref.get("content_type"), str) else None,
            "sizeBytes": ref.get("size_bytes") if isinstance(ref.get("size_bytes"), int) else None,
            "url": base + link if link and link.startswith("/") else link,
            "expiresAt": expires * 1000 if link else None,
        }
        for (node_id, name, ref), link in zip(found, links, strict=True)
    ]
    return {"jobId": job_id, "artifacts": artifacts}


@download_router.get(
    DOWNLOAD_PATH,
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The object's bytes"},
        400: {"model": ErrorBody},
        403: {"model": ErrorBody, "description": "Forged, altered or expired link"},
        404: {"model": ErrorBody},
    },
)
async def download(
    storage: StorageDep,
    bucket: Annotated[str, Query(max_length=63)],
    key: Annotated[str, Query(max_length=1024)],
    expires: Annotated[int, Query(description="Unix seconds")],
    sig: Annotated[str, Query(max_length=128)],
):
    """An object of the folder store, for a link made by GET /api/jobs/{id}/artifacts."""
    if not isinstance(storage, LocalStore):
        raise ApiError(404, "downloads are served by the object store itself (presigned links)")
    try:
        storage.signer.check(bucket, key, expires, sig)
        path = storage.file_path(bucket, key)
    except LinkRefused as exc:
        raise ApiError(403, str(exc)) from None
    except InvalidObjectName as exc:
        raise ApiError(400, str(exc)) from None
    if not await asyncio.to_thread(path.is_file):
        raise ApiError(404, f"artifact {bucket}/{key} not found")
    return FileResponse(path, filename=Path(key).name)
