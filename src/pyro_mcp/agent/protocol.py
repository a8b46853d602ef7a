"""Framing shared by the guest agent and the host (standard library only).

A frame is ``MAGIC`` (4 bytes), the payload length (4 bytes, big endian), a
CRC-32 of that length (4 bytes) and a UTF-8 JSON object. The CRC lets the
decoder reject a header cut short by a reconnect at once, instead of waiting
for a bogus length's worth of bytes. Binary data travels base64-encoded inside the JSON.

The framing knows nothing about workspaces or operations. It does know that a
serial port keeps stale bytes across reconnects, so the decoder resynchronises
on the magic: bytes that do not start a well-formed frame are skipped and
counted, never fatal. Above this layer, the client confirms it is in step with
a random nonce (see ``pyro_mcp.agent.client``).

This file is copied into the guest image; it must import only the standard
library.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

MAGIC = b"PYR1"
HEADER = struct.Struct(">4sII")

# Large enough for two full output streams (base64) plus envelope; small enough
# that a hostile peer cannot make the other side buffer without bound.
MAX_FRAME_BYTES = 8 * 1024 * 1024

AGENT_PORT_NAME = "org.pyro.agent"
PROTOCOL_VERSION = 1


def encode_frame(message: dict[str, Any]) -> bytes:
    """Serialise one message into a frame."""
    payload = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(payload) > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    return _header(len(payload)) + payload


def _header(length: int) -> bytes:
    return HEADER.pack(MAGIC, length, zlib.crc32(length.to_bytes(4, "big")))


class FrameDecoder:
    """Turns a byte stream into messages, skipping garbage between frames."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes
        self.skipped_bytes = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add bytes; return every complete message they finish."""
        self._buffer += data
        messages: list[dict[str, Any]] = []
        while True:
            start = self._buffer.find(MAGIC)
            if start < 0:
                # Keep a possible partial magic at the end, drop the rest.
                keep = len(MAGIC) - 1
                drop = max(0, len(self._buffer) - keep)
                self._skip(drop)
                return messages
            self._skip(start)
            if len(self._buffer) < HEADER.size:
                return messages
            _, length, check = HEADER.unpack_from(self._buffer)
            if check != zlib.crc32(length.to_bytes(4, "big")) or length > self._max:
                self._skip(len(MAGIC))
                continue
            end = HEADER.size + length
            if len(self._buffer) < end:
                return messages
            payload = bytes(self._buffer[HEADER.size : end])
            try:
                message = json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                self._skip(len(MAGIC))
                continue
            if not isinstance(message, dict):
                self._skip(len(MAGIC))
                continue
            del self._buffer[:end]
            messages.append(message)

    def _skip(self, count: int) -> None:
        if count:
            del self._buffer[:count]
            self.skipped_bytes += count


# The package index variables the host hands a guest with egress (its pip, uv
# and npm settings); the guest writes nothing else it is sent.
PACKAGE_VARIABLES = (
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_INDEX",
    "NPM_CONFIG_REGISTRY",
)
