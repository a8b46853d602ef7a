"""Tokens, the wire encoding and listen addresses: no guests needed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pyro_mcp import InvalidArgument, NotFound, PatchConflict, PyroError, RemoteError
from pyro_mcp.server.registry import Registry
from pyro_mcp.server.serve import is_loopback, parse_listen
from pyro_mcp.transport import wire
from pyro_mcp.transport.remote import _write_extents


def test_a_token_is_shown_once_and_found_by_its_hash_until_revoked(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "server.db")
    token = registry.create_token("alice", max_running=2, profile="workspace-full")
    principal = registry.principal_for(token)
    assert principal is not None and principal.name == "alice" and principal.max_running == 2
    assert registry.principal_for(token + "x") is None
    assert token.encode() not in (tmp_path / "server.db").read_bytes()
    assert (tmp_path / "server.db").stat().st_mode & 0o777 == 0o600
    with pytest.raises(InvalidArgument, match="exists"):
        registry.create_token("alice")
    with pytest.raises(InvalidArgument, match="not a valid name"):
        registry.create_token("../x")
    with pytest.raises(InvalidArgument, match=r"no '\.'"):
        registry.create_token("a.b")  # workspaces are stored as "PRINCIPAL.NAME"
    registry.revoke("alice")
    assert registry.principal_for(token) is None
    with pytest.raises(NotFound, match="no token called 'alice'"):
        registry.revoke("alice")


def test_a_spooled_archive_is_taken_once_and_only_by_its_principal(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "server.db")
    ticket = registry.spool("upload", "alice", tmp_path / "a.tar")
    assert registry.take("upload", ticket, "bob") is None
    assert registry.take("download", ticket, "alice") is None
    assert registry.take("upload", ticket, "alice") == tmp_path / "a.tar"
    assert registry.take("upload", ticket, "alice") is None


def test_arguments_and_errors_cross_the_wire_unchanged() -> None:
    value = {"text": "é", "data": b"\x00\xff", "path": Path("/x"), "list": ("a", 1)}
    assert wire.decode(wire.encode(value)) == {**value, "path": "/x", "list": ["a", 1]}
    with pytest.raises(InvalidArgument, match="seed_path: nope") as raised:
        wire.raise_error(wire.error_payload(InvalidArgument("seed_path", "nope")))
    assert raised.value.field == "seed_path"
    with pytest.raises(PatchConflict, match="hunk 1"):
        wire.raise_error({"type": "PatchConflict", "message": "hunk 1"})
    with pytest.raises(PyroError, match="odd") as other:
        wire.raise_error({"type": "SystemExit", "message": "odd"})
    assert type(other.value) is PyroError  # only pyro's own classes are raised by name
    with pytest.raises(RemoteError, match="unreadable"):
        wire.raise_error("garbage")


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8787") == ("127.0.0.1", 8787)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8787", "host:", ":80", "h:99999"):
        with pytest.raises(InvalidArgument, match="HOST:PORT"):
            parse_listen(bad)
    assert is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")


class _Sent:
    """What an httpx2 response gives ``_write_extents``: headers and the body in pieces."""

    def __init__(self, body: bytes, size: int, piece: int = 7) -> None:
        self.headers = {wire.DISK_SIZE_HEADER: str(size)}
        self._pieces = [body[i : i + piece] for i in range(0, len(body), piece)]

    def iter_bytes(self, _chunk: int) -> Iterator[bytes]:
        yield from self._pieces


def test_a_sparse_disk_image_crosses_as_its_data_extents(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    size = 64 * 1024 * 1024
    with image.open("wb") as out:
        out.truncate(size)
        out.seek(4096)
        out.write(b"head")
        out.seek(40 * 1024 * 1024)
        out.write(b"tail" * 1000)
    with image.open("rb") as source:
        body = b"".join(wire.extent_frames(source.fileno()))
        assert len(body) == wire.framed_length(source.fileno()) < 1024 * 1024
    copy = tmp_path / "copy.raw"
    with copy.open("wb") as out:
        _write_extents(_Sent(body, size), out)  # type: ignore[arg-type]
    assert copy.read_bytes() == image.read_bytes()
    assert copy.stat().st_blocks * 512 < 1024 * 1024

    # A server that lies is stopped before it writes outside the image.
    outside = wire.EXTENT.pack(size - 2, 4) + b"abcd"
    backwards = wire.EXTENT.pack(100, 4) + b"abcd" + wire.EXTENT.pack(0, 4) + b"abcd"
    for lie, said in ((outside, "outside"), (backwards, "outside"), (body[:-3], "midway")):
        with copy.open("wb") as out, pytest.raises(RemoteError, match=said):
            _write_extents(_Sent(lie, size), out)  # type: ignore[arg-type]
    with copy.open("wb") as out, pytest.raises(RemoteError, match="announced"):
        _write_extents(_Sent(b"", wire.MAX_DISK_IMAGE_BYTES + 1), out)  # type: ignore[arg-type]
