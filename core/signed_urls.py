"""Short-lived download links for the folder store, served by the API itself: HMAC over bucket, key and expiry."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlencode

DOWNLOAD_PATH = "/api/artifacts/download"


class LinkRefused(Exception):
    """A download link that was forged, altered or has expired."""


class DownloadSigner:
    """Signs and checks `DOWNLOAD_PATH?bucket=&key=&expires=&sig=` links; expires is Unix seconds."""

    def __init__(self, secret: str | None):
        # Without a configured secret each process makes its own: links then work only on the replica
        # that made them, which is fine for the one-process dev stack the folder store is meant for.
        self.secret = (secret or secrets.token_hex(32)).encode()

    def signature(self, bucket: str, key: str, expires: int) -> str:
        message = f"{bucket}\n{key}\n{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def link(self, bucket: str, key: str, expires: int) -> str:
        query = {"bucket": bucket, "key": key, "expires": expires, "sig": self.signature(bucket, key, expires)}
        return f"{DOWNLOAD_PATH}?{urlencode(query)}"

    def check(self, bucket: str, key: str, expires: int, sig: str, now: float | None = None) -> None:
        """Raise LinkRefused unless `sig` is ours for exactly these values and the link has not expired."""
        if not hmac.compare_digest(self.signature(bucket, key, expires).encode(), sig.encode()):
            raise LinkRefused("invalid download signature")
        if expires < (time.time() if now is None else now):
            raise LinkRefused("download link expired")
