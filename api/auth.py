"""Optional API keys, off when none are set: REST takes a Bearer token, WebSocket a query key or first message."""

from __future__ import annotations

import hmac

from fastapi import Request

from api.deps import SettingsDep
from api.errors import ApiError


def key_is_valid(candidate: str | None, keys: list[str]) -> bool:
    """Constant-time comparison against every configured key."""
    if not candidate:
        return False
    return any(hmac.compare_digest(candidate.encode(), key.encode()) for key in keys)


async def require_key(request: Request, settings: SettingsDep) -> str | None:
    keys = settings.api_keys
    if not keys:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key_is_valid(token.strip(), keys):
        raise ApiError(401, "missing or invalid API key (Authorization: Bearer <key>)")
    return token
