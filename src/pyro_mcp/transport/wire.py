"""What crosses between a remote ``Pyro`` and ``pyro server``: paths, headers,
argument and error encoding. Shared by both ends; standard library only.

A call is ``POST /api/v1/call/METHOD`` with ``{"arguments": {...}}``; the
answer is newline-delimited JSON: ``{"progress": line}`` as the work goes,
then one ``{"result": ...}`` or ``{"error": {"type", "message"}}``.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import PurePath
from typing import Any

from pyro_mcp import errors

API = "/api/v1"
VERSION_HEADER = "Pyro-Version"
# Uploads (seeds, sync sources) and downloads (exports) are archives on the
# server's disk, never held in memory; this bounds one upload.
MAX_UPLOAD_BYTES = 2 * 1024 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
# A stopped workspace's disk image (export_workspace_disk) is mostly holes: it
# travels as its data extents (``?layout=extents``), each an EXTENT header
# (offset, length; big-endian) and the bytes; the header DISK_SIZE_HEADER says
# how long the file is.
MAX_DISK_IMAGE_BYTES = 64 * 1024 * 1024 * 1024
EXTENT = struct.Struct(">QQ")
DISK_SIZE_HEADER = "Pyro-Disk-Size"

# A host-path argument that crossed the network: the archive uploaded first
# (``{"upload": ID}``), or a request that the server keep the result for the
# caller to download (``{"download": true}``).
UPLOAD = "upload"
DOWNLOAD = "download"

_BYTES = "$bytes"


def encode(value: Any) -> Any:
    """``value`` as JSON: paths as strings, bytes as ``{"$bytes": base64}``."""
    if isinstance(value, bytes):
        return {_BYTES: base64.b64encode(value).decode("ascii")}
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [encode(item) for item in value]
    return value


def decode(value: Any) -> Any:
    """The inverse of ``encode`` (bytes come back as bytes).

    Raises:
        InvalidArgument: a ``$bytes`` value that is not base64.
    """
    if isinstance(value, dict):
        if set(value) == {_BYTES} and isinstance(value[_BYTES], str):
            try:
                return base64.b64decode(value[_BYTES], validate=True)
            except binascii.Error as exc:
                raise errors.InvalidArgument("arguments", "a $bytes value is not base64") from exc
        return {key: decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode(item) for item in value]
    return value


def error_payload(exc: errors.PyroError) -> dict[str, Any]:
    """A ``PyroError`` as the server sends it."""
    return {"type": type(exc).__name__, "message": str(exc)}


def raise_error(payload: Any) -> None:
    """Raise the ``PyroError`` a server sent, as the same class with the same message.

    Raises:
        PyroError: always; a subclass when the server named one pyro has.
    """
    kind = payload.get("type") if isinstance(payload, dict) else None
    message = payload.get("message") if isinstance(payload, dict) else None
    if not isinstance(message, str):
        raise errors.RemoteError(f"the server sent an unreadable error: {payload!r:.200}")
    cls = getattr(errors, kind, None) if isinstance(kind, str) else None
    if not (isinstance(cls, type) and issubclass(cls, errors.PyroError)):
        cls = errors.PyroError
    # Built without the subclasses' own constructors (InvalidArgument takes a
    # field): the message is already whole.
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    if cls is errors.InvalidArgument:
        exc.field = message.partition(":")[0]  # type: ignore[attr-defined]
    raise exc


def data_extents(fd: int) -> Iterator[tuple[int, int]]:
    """The (offset, length) of each stretch of ``fd`` that holds data, holes skipped."""
    size = os.fstat(fd).st_size
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end - start
        offset = end


def extent_frames(fd: int) -> Iterator[bytes]:
    """``fd``'s data extents as they travel: each header, then its bytes in chunks."""
    for start, length in data_extents(fd):
        yield EXTENT.pack(start, length)
        done = 0
        while done < length:
            chunk = os.pread(fd, min(CHUNK_BYTES, length - done), start + done)
            if not chunk:
                raise OSError(f"the file shrank while it was read (at {start + done})")
            yield chunk
            done += len(chunk)


def framed_length(fd: int) -> int:
    """How many bytes ``extent_frames(fd)`` sends."""
    return sum(EXTENT.size + length for _, length in data_extents(fd))
