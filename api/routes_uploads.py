"""POST /api/infinitetalk: a face image and a voice sample to object storage, then an f5tts_infinitetalk job."""

from __future__ import annotations

import contextlib
import json
import uuid
from functools import partial
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, UploadFile
from redis.exceptions import LockError

from api.deps import Backend, BackendDep
from api.errors import ApiError
from api.jobs import job_for_key, submit_job
from api.models import AcceptedJob, ErrorBody
from core.planner import INPUT_BUCKET, infinitetalk_request
from core.storage import StorageError

router = APIRouter(prefix="/api", tags=["jobs"])

MAX_NAME = 255
SNIFF_BYTES = 16

# Magic numbers: a declared content type alone is the client's word, not the file's.
IMAGE_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": ".png",
    b"\xff\xd8\xff": ".jpg",
    b"GIF87a": ".gif",
    b"GIF89a": ".gif",
    b"BM": ".bmp",
}
AUDIO_SIGNATURES = {
    b"ID3": ".mp3",
    b"\xff\xfb": ".mp3",
    b"\xff\xf3": ".mp3",
    b"\xff\xf2": ".mp3",
    b"OggS": ".ogg",
    b"fLaC": ".flac",
    b"\x1aE\xdf\xa3": ".webm",
}


def _sniff(head: bytes, kind: str) -> str | None:
    """The file's real extension from its first bytes, or None when it is not that kind of file."""
    if kind == "image" and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    if kind == "audio" and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return ".wav"
    if kind == "audio" and head[4:8] == b"ftyp":
        return ".m4a"
    signatures = IMAGE_SIGNATURES if kind == "image" else AUDIO_SIGNATURES
    return next((ext for magic, ext in signatures.items() if head.startswith(magic)), None)


async def _checked(upload: UploadFile, part: str, kind: str, limit: int) -> str:
    """Validate one uploaded file; returns the extension to store it under."""
    name = upload.filename or ""
    # The name is never used for storage (keys are uuids), so only names that try to be paths are refused.
    unsafe = "/" in name or "\\" in name or ".." in name or name.startswith(".") or not name.isprintable()
    if not name or len(name) > MAX_NAME or unsafe:
        raise ApiError(400, f"{part}: unsafe or missing file name {name[:80]!r}")
    if upload.size is None:  # Starlette measures every multipart file; a part without a size is malformed
        raise ApiError(400, f"{part}: not a file upload")
    if upload.size > limit:
        raise ApiError(413, f"{part}: file is over the {limit} byte limit")
    if upload.size == 0:
        raise ApiError(400, f"{part}: file is empty")
    declared = (upload.content_type or "").split(";")[0].strip().lower()
    if declared and not declared.startswith(f"{kind}/") and declared != "application/octet-stream":
        raise ApiError(415, f"{part}: content type {declared!r} is not {kind}/*")
    head = await upload.read(SNIFF_BYTES)
    await upload.seek(0)
    ext = _sniff(head, kind)
    if not ext:
        raise ApiError(415, f"{part}: not a recognised {kind} file")
    return ext


def _parse_data(data: str) -> tuple[str, str]:
    try:
        fields = json.loads(data)  # its text is checked as it is planned, where each field is named
    except RecursionError:
        raise ApiError(400, "data: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # not JSON; or an integer of more digits than Python converts
        raise ApiError(400, f"data: not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(fields, dict):
        raise ApiError(400, "data: must be a JSON object {prompt, refText}")
    prompt, ref_text = fields.get("prompt"), fields.get("refText", "")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "data.prompt: a non-empty string is required")
    if not isinstance(ref_text, str):
        raise ApiError(400, "data.refText: must be a string")
    return prompt, ref_text


@router.post(
    "/infinitetalk",
    response_model=AcceptedJob,
    responses={
        400: {"model": ErrorBody},
        413: {"model": ErrorBody},
        415: {"model": ErrorBody},
        503: {"model": ErrorBody},
    },
)
async def infinitetalk(
    backend: BackendDep,
    image_file: Annotated[UploadFile, File(description="The face image (PNG, JPEG, GIF, WebP, BMP)")],
    audio_file: Annotated[UploadFile, File(description="The voice sample (WAV, MP3, OGG, FLAC, M4A, WebM)")],
    data: Annotated[str, Form(description='JSON string {"prompt", "refText"}')],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
):
    """Upload both files to bucket `input`, then plan and start an f5tts_infinitetalk job."""
    prompt, ref_text = _parse_data(data)
    limit = backend.settings.upload_max_bytes
    image_ext = await _checked(image_file, "image_file", "image", limit)
    audio_ext = await _checked(audio_file, "audio_file", "audio", limit)
    upload = partial(_upload_and_submit, backend, (image_file, image_ext), (audio_file, audio_ext), prompt, ref_text)
    if not idempotency_key:  # absent or empty: no idempotency
        return await upload(None)
    # Retries of one submission may race (and land on different replicas): one uploads, the others wait for its job.
    try:
        async with backend.redis.lock(
            f"idempotency:{idempotency_key}", timeout=120, blocking_timeout=60, raise_on_release_error=False
        ):
            return await job_for_key(backend, idempotency_key) or await upload(idempotency_key)
    except LockError:
        raise ApiError(409, "a request with this Idempotency-Key is still being processed; retry later") from None


async def _upload_and_submit(
    backend: Backend,
    image: tuple[UploadFile, str],
    audio: tuple[UploadFile, str],
    prompt: str,
    ref_text: str,
    idempotency_key: str | None,
) -> dict:
    """Store both files under fresh keys and start the job; on any failure remove what was stored."""
    storage = backend.storage
    (image_file, image_ext), (audio_file, audio_ext) = image, audio
    image_key, audio_key = f"images/{uuid.uuid4()}{image_ext}", f"audio/{uuid.uuid4()}{audio_ext}"
    stored: list[str] = []
    try:
        for upload, key in ((image_file, image_key), (audio_file, audio_key)):
            size = upload.size or 0  # checked non-empty in _checked
            await storage.put(INPUT_BUCKET, key, upload.file, size, upload.content_type or "application/octet-stream")
            stored.append(key)
        request = infinitetalk_request(prompt, ref_text, image_key, audio_key, backend.settings.llm_defaults)
        return await submit_job(backend, request, idempotency_key)
    except BaseException as exc:
        for key in stored:  # a rejected request leaves nothing behind
            with contextlib.suppress(StorageError):  # storage down: report the original failure
                await storage.remove(INPUT_BUCKET, key)
        if isinstance(exc, StorageError):
            raise ApiError(503, f"object storage unavailable: {exc}") from None
        raise
