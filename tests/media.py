"""Tiny but real media files, made in code: a PNG image and a WAV voice sample."""

from __future__ import annotations

import io
import struct
import wave
import zlib


def png_bytes(width: int = 2, height: int = 2) -> bytes:
    """An RGB PNG of `width` x `height` grey pixels, with valid chunk CRCs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    rows = b"".join(b"\x00" + b"\x80\x80\x80" * width for _ in range(height))  # filter byte + pixels
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def wav_bytes(seconds: float = 0.05, rate: int = 8000) -> bytes:
    """A mono 16-bit PCM WAV of silence."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * int(seconds * rate))
    return out.getvalue()
