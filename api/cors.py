"""CORS from the settings' allowlist, with refused preflights answered as {"error"} like every other error."""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response


class JsonErrorCORSMiddleware(CORSMiddleware):
    def preflight_response(self, request_headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        return JSONResponse(
            {"error": bytes(response.body).decode() or "CORS preflight refused"}, status_code=response.status_code
        )
