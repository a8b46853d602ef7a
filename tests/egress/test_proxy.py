"""The egress proxy on the host, driven the way QEMU drives it: through the relay.

Each "guest connection" is one end of a socketpair handed to the real relay
script (as QEMU's guestfwd does), so the proxy sees exactly what it sees in a
VM. Servers listen on 127.0.0.1 (so tests allow private egress or use names
that resolve there).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp.egress import relay
from pyro_mcp.egress.policy import EgressPolicy, SecretBinding, parse_patterns
from pyro_mcp.egress.proxy import EgressProxy
from pyro_mcp.egress.tls import CaFiles, create_ca
from tests.egress.servers import LocalCA, serve

SECRET = "s3cret-value-for-tests"
PLACEHOLDER = "pyro_placeholder_TOKEN_0123456789abcdef"


class Harness:
    """A proxy on its own event loop thread, and a way to open guest connections."""

    def __init__(self, folder: Path, ca: CaFiles | None) -> None:
        self.socket = folder / "egress.sock"
        self.journal: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.proxy = EgressProxy(EgressPolicy(), {}, ca, self.journal.append, scratch=folder)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket))
        listener.listen(16)
        listener.setblocking(False)
        self.loop.call_soon_threadsafe(self.proxy.serve, listener)

    def use(self, policy: EgressPolicy, values: dict[str, bytes] | None = None) -> None:
        self.loop.call_soon_threadsafe(self.proxy.update, policy, values or {})
        time.sleep(0.05)

    def guest(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        subprocess.run(
            [sys.executable, "-S", "-I", relay.__file__, str(self.socket)],
            stdin=theirs,
            check=True,
            timeout=10,
        )
        theirs.close()
        ours.settimeout(10)
        return ours

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def entries(self, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 5
        while len(self.journal) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.journal


@pytest.fixture
def harness(tmp_path: Path, test_ca: LocalCA) -> Iterator[Harness]:
    ca = create_ca(tmp_path / "workspace-ca", "test")
    proxy = Harness(tmp_path, ca)
    proxy.proxy._upstream_tls = ssl.create_default_context(cafile=str(test_ca.bundle))
    yield proxy
    proxy.close()


def rules(allow: list[str] | None, **kwargs: Any) -> EgressPolicy:
    return EgressPolicy(
        allow_hosts=tuple(parse_patterns(allow)) if allow is not None else None, **kwargs
    )


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def connect(sock: socket.socket, target: str) -> bytes:
    """The proxy's answer to CONNECT: head, and any body that came with it."""
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head, rest = read_head(sock)
    if not head.startswith(b"HTTP/1.1 200"):
        rest = read_body(sock, rest, head)
    return head + b"\r\n\r\n" + rest


def read_body(sock: socket.socket, rest: bytes, head: bytes) -> bytes:
    lines = head.decode().lower().split("\r\n")
    length = next((int(x.split(":")[1]) for x in lines if x.startswith("content-length")), None)
    data = rest
    while True:
        if length is not None and len(data) >= length:
            return data[:length]
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_connect_tunnels_an_allowed_host_and_refuses_others(
    harness: Harness, test_ca: LocalCA
) -> None:
    with serve(test_ca) as (port, seen):
        harness.use(rules([f"localhost:{port}"], allow_private_egress=True))
        guest = harness.guest()
        assert connect(guest, f"localhost:{port}").startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=str(test_ca.bundle))
        tls = context.wrap_socket(guest, server_hostname="localhost")
        tls.sendall(b"GET /t HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        head, _ = read_head(tls)
        assert head.startswith(b"HTTP/1.1 200") and seen.requests[-1]["path"] == "/t"
        tls.close()

        refused = harness.guest()
        answer = connect(refused, "other.example:443").decode()
        assert answer.startswith("HTTP/1.1 403")
        assert "allow list" in answer and "--allow-host other.example" in answer
        refused.close()
        entries = harness.entries(2)
        assert entries[0]["allowed"] and entries[0]["tls"] == "tunnel"
        assert entries[0]["bytes_sent"] > 0 and entries[0]["bytes_received"] > 0
        assert not entries[1]["allowed"] and entries[1]["host"] == "other.example"


def test_private_addresses_need_the_operator(harness: Harness, test_ca: LocalCA) -> None:
    with serve(test_ca) as (port, _):
        harness.use(rules(None))
        guest = harness.guest()
        answer = connect(guest, f"localhost:{port}")
        assert answer.startswith(b"HTTP/1.1 403") and b"--allow-private-egress" in answer
        guest.close()


def test_sni_must_name_the_connect_host(harness: Harness, test_ca: LocalCA) -> None:
    with serve(test_ca) as (port, seen):
        harness.use(rules([f"localhost:{port}"], allow_private_egress=True))
        guest = harness.guest()
        assert connect(guest, f"localhost:{port}").startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with pytest.raises((ssl.SSLError, OSError)):
            context.wrap_socket(guest, server_hostname="evil.example").sendall(b"x")
        guest.close()
        assert seen.requests == []
        entry = harness.entries(1)[0]
        assert not entry["allowed"] and "evil.example" in entry["reason"]


def terminated(harness: Harness, port: int, workspace_ca: Path) -> ssl.SSLSocket:
    """A guest connection to localhost:PORT, where TOKEN is bound, TLS terminated by the proxy."""
    binding = SecretBinding(PLACEHOLDER, tuple(parse_patterns([f"localhost:{port}"])))
    harness.use(
        rules([f"localhost:{port}"], allow_private_egress=True, secrets={"TOKEN": binding}),
        {"TOKEN": SECRET.encode()},
    )
    guest = harness.guest()
    assert connect(guest, f"localhost:{port}").startswith(b"HTTP/1.1 200")
    context = ssl.create_default_context(cafile=str(workspace_ca))
    return context.wrap_socket(guest, server_hostname="localhost")


def test_terminated_tls_injects_secrets_and_hides_echoes(
    harness: Harness, test_ca: LocalCA, tmp_path: Path
) -> None:
    with serve(test_ca) as (port, seen):
        tls = terminated(harness, port, tmp_path / "workspace-ca" / "ca.pem")
        basic = base64.b64encode(f"user:{PLACEHOLDER}".encode()).decode()
        for path, header in (
            (f"/a?k={PLACEHOLDER}", f"Bearer {PLACEHOLDER}"),
            ("/b", f"Basic {basic}"),
        ):
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\n"
                f"Authorization: {header}\r\nAccept-Encoding: gzip\r\n\r\n".encode()
            )
            head, rest = read_head(tls)
            assert head.startswith(b"HTTP/1.1 200"), head
            body = read_body(tls, rest, head) if b"content-length" in head.lower() else b""
            if not body:  # chunked: read to the terminating chunk
                data = rest
                while not data.endswith(b"0\r\n\r\n"):
                    data += tls.recv(65536)
                body = data
            assert SECRET.encode() not in body
            real_basic = base64.b64encode(f"user:{SECRET}".encode())
            assert real_basic not in body
            assert PLACEHOLDER.encode() in body or basic.encode() in body
        first, second = seen.requests[-2:]
        assert first["path"] == f"/a?k={SECRET}"
        assert first["headers"]["authorization"] == f"Bearer {SECRET}"
        assert "accept-encoding" not in first["headers"]
        decoded = base64.b64decode(second["headers"]["authorization"].split()[1]).decode()
        assert decoded == f"user:{SECRET}"
        tls.close()
        entry = harness.entries(1)[0]
        assert entry["secrets"] == ["TOKEN"] and entry["requests"] == 2


def test_terminated_tls_refuses_another_host_inside(
    harness: Harness, test_ca: LocalCA, tmp_path: Path
) -> None:
    with serve(test_ca) as (port, seen):
        tls = terminated(harness, port, tmp_path / "workspace-ca" / "ca.pem")
        tls.sendall(b"GET / HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n")
        head, rest = read_head(tls)
        assert head.startswith(b"HTTP/1.1 403 Forbidden")
        assert b"elsewhere.example" in read_body(tls, rest, head)
        tls.close()
        assert seen.requests == []


def test_plain_http_is_checked_per_request(harness: Harness) -> None:
    with serve(None) as (port, seen):
        harness.use(rules([f"localhost:{port}"], allow_private_egress=True))
        guest = harness.guest()
        guest.sendall(
            f"GET http://localhost:{port}/one HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode()
        )
        head, rest = read_head(guest)
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(read_body(guest, rest, head))["path"] == "/one"
        guest.sendall(b"GET http://denied.example/ HTTP/1.1\r\nHost: denied.example\r\n\r\n")
        head, rest = read_head(guest)
        assert head.startswith(b"HTTP/1.1 403") and b"allow list" in rest + guest.recv(4096)
        assert [r["path"] for r in seen.requests] == ["/one"]
        guest.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /not-absolute HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT nonsense HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01garbage\r\n\r\n",
    ],
)
def test_malformed_requests_get_an_answer_not_a_hang(
    harness: Harness, request_bytes: bytes
) -> None:
    harness.use(rules(None))
    guest = harness.guest()
    guest.sendall(request_bytes)
    head, _ = read_head(guest)
    assert head == b"" or head.startswith((b"HTTP/1.1 400", b"HTTP/1.1 403"))
    guest.close()
