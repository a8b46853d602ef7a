"""The egress proxy: every connection a guest makes to the outside passes here.

The guest's network is QEMU user-mode networking with ``restrict=on``: it can
reach nothing but one forwarded address, 10.0.2.100:3128, whose connections
``relay.py`` hands to this proxy. The guest's HTTP(S) clients use it as their
proxy. For each connection the proxy:

- reads one HTTP request head (``h11`` parses it: a maintained, sans-I/O
  HTTP/1.1 library, so no hand-written HTTP parser sees guest bytes);
- ``CONNECT host:port``: checks the name against the policy, resolves it on the
  host, checks the addresses (no loopback, link-local or private ranges unless
  the operator allowed them), connects, then either tunnels the bytes, refusing
  a TLS ClientHello whose SNI names another host, or, for a host with secrets
  bound to it, terminates TLS with the workspace's CA, re-encrypts to the real
  host (verified against the host's trust store) and swaps each placeholder
  for its secret in the request head;
- ``GET http://host/...`` (absolute form): the same checks, then forwards
  plain HTTP, request by request;
- anything refused gets HTTP 403 with a body that names the policy and the
  flag that would allow it.

Each upstream connection becomes one journal entry (host, port, allowed or
why not, bytes each way, secrets injected). Library choice: mitmproxy and
proxy.py are whole applications (their own process model, event loop,
configuration and, for mitmproxy, dozens of pinned dependencies); this needs a
small per-VM piece inside the supervisor's event loop, so it is asyncio plus
``h11`` plus ``cryptography``.

Stays one module on purpose (~700 lines): it is one connection's path (accept,
read the head, decide, connect, tunnel or terminate, journal), each step
handing its state to the next; what stands alone is beside it (``policy``,
``rewrite``, ``tls``, ``relay``, ``config``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11

from pyro_mcp.egress.policy import Decision, EgressPolicy, SecretBinding, normalise_host
from pyro_mcp.egress.rewrite import StreamRewriter
from pyro_mcp.egress.tls import (
    MAX_CLIENT_HELLO,
    CaFiles,
    LeafIssuer,
    NotTLS,
    client_hello_sni,
    record_length,
)

READ_BYTES = 65536
HEAD_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 15.0
HANDOFF_TIMEOUT_SECONDS = 5.0
MAX_CONNECTIONS = 256
# Hop-by-hop and proxy-only request headers that are not passed on.
_DROPPED_REQUEST_HEADERS = {b"proxy-connection", b"proxy-authorization", b"expect", b"keep-alive"}
_NO_BODY_STATUSES = {204, 304}

Journal = Callable[[dict[str, Any]], None]


class Refused(Exception):
    """A connection the proxy will not make; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Crossing:
    """One connection to the outside, as the journal records it."""

    host: str
    port: int
    method: str
    allowed: bool = False
    reason: str = ""
    tls: str | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    secrets: set[str] = field(default_factory=set)
    requests: int = 0
    started: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "method": self.method,
            "allowed": self.allowed,
            "reason": self.reason,
            "tls": self.tls,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "secrets": sorted(self.secrets),
            "requests": self.requests,
            "started_at": self.started,
            "duration_ms": int((time.time() - self.started) * 1000),
        }


class EgressProxy:
    """The proxy of one VM: policy, real secret values, the CA, the journal."""

    def __init__(
        self,
        policy: EgressPolicy,
        values: Mapping[str, bytes],
        ca: CaFiles | None,
        journal: Journal | None = None,
        scratch: Path | None = None,
    ) -> None:
        """``scratch``: a private folder for the leaf certificates' key files."""
        self.policy = policy
        self._scratch = scratch or Path(tempfile.gettempdir())
        self.values = dict(values)
        self._ca = ca
        self._issuer: LeafIssuer | None = None
        self._journal = journal
        # Made at the first terminated connection: loading the host's CA store takes time.
        self._upstream_tls: ssl.SSLContext | None = None
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = 0

    def update(self, policy: EgressPolicy, values: Mapping[str, bytes]) -> None:
        """New rules for new connections (open tunnels keep going)."""
        self.policy = policy
        self.values = dict(values)

    # ------------------------------------------------------------ listening

    def serve(self, listener: socket.socket) -> None:
        """Take guest connections from relays on ``listener`` (a bound, non-blocking socket)."""
        self._listener = listener
        self._spawn(self._accept(listener))

    async def close(self) -> None:
        """Stop listening, end every connection, remove the leaf keys."""
        if self._listener is not None:
            self._listener.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._issuer is not None:
            self._issuer.close()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def serve_direct(self, listener: socket.socket) -> None:
        """Serve connections accepted on ``listener`` itself (a listening TCP socket,
        non-blocking): a confined host program's (``egress/confined.py``)."""
        self._spawn(self._accept(listener, direct=True))

    async def _accept(self, listener: socket.socket, *, direct: bool = False) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                accepted, _ = await loop.sock_accept(listener)
            except OSError:
                return
            self._spawn(self._serve_socket(accepted) if direct else self._take(accepted))

    async def _take(self, handoff: socket.socket) -> None:
        """Receive the guest connection's descriptor from a relay, then serve it."""
        try:
            fd = await receive_fd(handoff, HANDOFF_TIMEOUT_SECONDS)
        except TimeoutError:
            return
        finally:
            handoff.close()
        if fd is not None:
            await self._serve_socket(socket.socket(fileno=fd))

    async def _serve_socket(self, guest: socket.socket) -> None:
        if self._open >= MAX_CONNECTIONS:
            guest.close()
            self._record(Crossing("?", 0, "?", reason="too many open connections"))
            return
        self._open += 1
        try:
            guest.setblocking(False)
            reader, writer = await _guest_streams(guest)
            try:
                await self._serve_guest(reader, writer)
            finally:
                writer.close()
        except (
            OSError,
            ssl.SSLError,
            h11.ProtocolError,
            TimeoutError,
            asyncio.IncompleteReadError,
        ):
            pass
        finally:
            self._open -= 1

    # ------------------------------------------------------------ requests

    async def _serve_guest(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = h11.Connection(h11.SERVER)
        event = await asyncio.wait_for(_next_event(conn, reader), HEAD_TIMEOUT_SECONDS)
        if not isinstance(event, h11.Request):
            return
        if event.method == b"CONNECT":
            await self._connect(conn, event, reader, writer)
        else:
            await self._http(conn, event, reader, writer)

    async def _connect(
        self,
        conn: h11.Connection,
        request: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        target = request.target.decode("ascii", "replace")
        host, port = _host_port(target)
        crossing = Crossing(host or target[:255], port, "CONNECT")
        try:
            if not host:
                raise Refused(400, f"CONNECT needs host:port, not {target[:100]!r}")
            decision = self._decide(host, port)
            bindings = self.policy.secrets_for(host, port)
            terminate = bool(bindings) and self._ca is not None
            up_reader, up_writer = await self._open_upstream(host, port, decision, tls=terminate)
        except Refused as refusal:
            crossing.reason = refusal.reason
            await _refuse(conn, writer, refusal)
            self._record(crossing)
            return
        crossing.allowed = True
        crossing.reason = decision.reason
        try:
            await _send(conn, writer, h11.Response(status_code=200, headers=[], reason=b"OK"))
            early = conn.trailing_data[0]
            if terminate:
                crossing.tls = "terminated"
                await self._terminated(crossing, bindings, reader, writer, up_reader, up_writer)
            else:
                await self._tunnel(crossing, early, reader, writer, up_reader, up_writer)
        except Refused as refusal:
            crossing.allowed = False
            crossing.reason = refusal.reason
        finally:
            up_writer.close()
            self._record(crossing)

    def _decide(self, host: str, port: int) -> Decision:
        decision = self.policy.decide(host, port)
        if not decision.allowed:
            raise Refused(403, decision.reason)
        return decision

    async def _open_upstream(
        self, host: str, port: int, decision: Decision, *, tls: bool
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        if decision.connect_to is not None:
            address: str | None = decision.connect_to
        else:
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), CONNECT_TIMEOUT_SECONDS
                )
            except (OSError, TimeoutError) as exc:
                raise Refused(502, f"cannot resolve {host} from the host: {exc}") from exc
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            address, why = self.policy.check_addresses(host, addresses)
            if address is None:
                raise Refused(403, why)
        if tls and self._upstream_tls is None:
            self._upstream_tls = ssl.create_default_context()
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    address,
                    port,
                    ssl=self._upstream_tls if tls else None,
                    server_hostname=host if tls else None,
                ),
                CONNECT_TIMEOUT_SECONDS,
            )
        except ssl.SSLError as exc:
            raise Refused(502, f"TLS to {host}:{port} failed on the host: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            raise Refused(502, f"cannot connect to {host}:{port} from the host: {exc}") from exc

    # -------------------------------------------------------------- tunnels

    async def _tunnel(
        self,
        crossing: Crossing,
        early: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Copy bytes both ways; a TLS ClientHello must name the CONNECT host."""

        def sent(size: int) -> None:
            crossing.bytes_sent += size

        def received(size: int) -> None:
            crossing.bytes_received += size

        downstream = asyncio.ensure_future(_pump(up_reader, writer, received))
        try:
            first = await self._check_first_bytes(crossing, early, reader)
            if first:
                up_writer.write(first)
                sent(len(first))
            await _pump(reader, up_writer, sent)
            await downstream
        finally:
            downstream.cancel()

    async def _check_first_bytes(
        self, crossing: Crossing, early: bytes, reader: asyncio.StreamReader
    ) -> bytes:
        head = early
        if not head:
            head = await reader.read(READ_BYTES)
        try:
            while (length := record_length(head)) is None or len(head) < length:
                if len(head) > MAX_CLIENT_HELLO:
                    raise Refused(403, "the TLS ClientHello is too large")
                more = await reader.read(READ_BYTES)
                if not more:
                    return head
                head += more
            sni = client_hello_sni(head[:length])
        except NotTLS:
            if head[:1] == b"\x16":
                raise Refused(403, "the TLS handshake could not be read") from None
            return head  # not TLS (SSH, a database protocol): nothing to compare
        if sni is not None and sni != crossing.host:
            raise Refused(
                403,
                f"the tunnel to {crossing.host} carried TLS for {sni}: a permitted name "
                "cannot front for another",
            )
        crossing.tls = "tunnel"
        return head

    # --------------------------------------------------- terminated TLS

    async def _terminated(
        self,
        crossing: Crossing,
        bindings: dict[str, SecretBinding],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Serve HTTP/1.1 over TLS signed by the workspace CA; inject secrets upstream."""
        if self._issuer is None:
            assert self._ca is not None
            self._issuer = LeafIssuer(self._ca, self._scratch)
        asked: list[str] = []
        context = self._issuer.context_for(crossing.host, asked)
        try:
            await asyncio.wait_for(writer.start_tls(context), HEAD_TIMEOUT_SECONDS)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            if asked and asked[-1].lower().rstrip(".") != crossing.host:
                raise Refused(
                    403,
                    f"the tunnel to {crossing.host} carried TLS for {asked[-1][:100]}: a "
                    "permitted name cannot front for another",
                ) from exc
            raise Refused(
                403,
                f"the guest's TLS handshake with the proxy for {crossing.host} failed ({exc}); "
                "the guest must trust the workspace's egress CA",
            ) from exc
        swaps = [
            (b.placeholder.encode(), self.values[name], name)
            for name, b in bindings.items()
            if name in self.values
        ]

        async def route(request: h11.Request) -> tuple[Crossing, Any]:
            # Inside the TLS the request must still be for the CONNECT host.
            named = dict(request.headers).get(b"host", b"").decode("ascii", "replace")
            if _host_port(named if ":" in named else f"{named}:{crossing.port}")[0] != (
                crossing.host
            ):
                raise Refused(
                    403, f"a request for {named[:100]!r} inside the tunnel to {crossing.host}"
                )
            return crossing, (up_reader, up_writer)

        await self._serve_http(h11.Connection(h11.SERVER), None, reader, writer, route, swaps)

    # ----------------------------------------------------------- plain HTTP

    async def _http(
        self,
        conn: h11.Connection,
        first: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Absolute-form requests (``GET http://host/path``), one upstream per host."""
        current: dict[str, Any] = {}

        async def route(request: h11.Request) -> tuple[Crossing, Any]:
            url = urlsplit(request.target.decode("ascii", "replace"))
            if url.scheme != "http" or not url.hostname:
                raise Refused(
                    400,
                    "this is pyro's egress proxy: send absolute http:// URLs, "
                    "or CONNECT host:port for anything else",
                )
            host, port = normalise_host(url.hostname), url.port or 80
            if current.get("key") == (host, port):
                return current["crossing"], current["upstream"]
            self._finish_plain(current)
            crossing = Crossing(host, port, request.method.decode("ascii", "replace"))
            current.update(key=(host, port), crossing=crossing, upstream=None)
            try:
                decision = self._decide(host, port)
                upstream = await self._open_upstream(host, port, decision, tls=False)
            except Refused as refusal:
                crossing.reason = refusal.reason
                raise
            crossing.allowed, crossing.reason = True, decision.reason
            current["upstream"] = upstream
            return crossing, upstream

        try:
            await self._serve_http(conn, first, reader, writer, route, [])
        finally:
            self._finish_plain(current)

    def _finish_plain(self, current: dict[str, Any]) -> None:
        if current.get("upstream") is not None:
            current["upstream"][1].close()
        if current.get("crossing") is not None:
            self._record(current["crossing"])
        current.clear()

    async def _serve_http(
        self,
        conn: h11.Connection,
        first: h11.Request | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        route: Callable[[h11.Request], Awaitable[tuple[Crossing, Any]]],
        swaps: list[tuple[bytes, bytes, str]],
    ) -> None:
        """Request by request: route, rewrite, forward, answer; until either side closes."""
        upstreams: dict[int, h11.Connection] = {}
        request: h11.Request | None = first
        while True:
            if request is None:
                event = await _next_event(conn, reader)
                if not isinstance(event, h11.Request):
                    return
                request = event
            try:
                crossing, upstream = await route(request)
            except Refused as refusal:
                await _refuse(conn, writer, refusal)
                return
            if upstream is None:
                return
            up_reader, up_writer = upstream
            client = upstreams.setdefault(id(up_writer), h11.Connection(h11.CLIENT))
            crossing.requests += 1
            target, headers, injected, echoes = _rewrite_request(request, swaps)
            crossing.secrets |= injected
            if conn.client_is_waiting_for_100_continue:
                await _send(conn, writer, h11.InformationalResponse(status_code=100, headers=[]))
            await _send(
                client,
                up_writer,
                h11.Request(method=request.method, target=target, headers=headers),
            )
            while True:
                event = await _next_event(conn, reader)
                if isinstance(event, h11.Data):
                    crossing.bytes_sent += len(event.data)
                    await _send(client, up_writer, h11.Data(data=event.data))
                elif isinstance(event, h11.EndOfMessage):
                    await _send(client, up_writer, h11.EndOfMessage())
                    break
                else:
                    return
            response = await _next_event(client, up_reader)
            while isinstance(response, h11.InformationalResponse):
                response = await _next_event(client, up_reader)
            if not isinstance(response, h11.Response):
                raise Refused(502, "the server closed the connection without an answer")
            # A server that echoes what it was sent must not hand the guest the
            # secret: neither the value nor a header value made from it.
            rewriter = StreamRewriter([(real, fake) for fake, real, _ in swaps] + echoes)
            await _send(
                conn,
                writer,
                h11.Response(
                    status_code=response.status_code,
                    headers=_response_headers(response, rewriter, request.method),
                    reason=response.reason,
                ),
            )
            while True:
                event = await _next_event(client, up_reader)
                if isinstance(event, h11.Data):
                    crossing.bytes_received += len(event.data)
                    chunk = rewriter.feed(event.data)
                    if chunk:
                        await _send(conn, writer, h11.Data(data=chunk))
                elif isinstance(event, h11.EndOfMessage):
                    tail = rewriter.flush()
                    if tail:
                        await _send(conn, writer, h11.Data(data=tail))
                    await _send(conn, writer, h11.EndOfMessage())
                    break
                else:
                    return
            if (client.our_state, client.their_state) != (h11.DONE, h11.DONE):
                return
            client.start_next_cycle()
            if (conn.our_state, conn.their_state) != (h11.DONE, h11.DONE):
                return
            conn.start_next_cycle()
            request = None

    def _record(self, crossing: Crossing) -> None:
        if self._journal is None:
            return
        entry = crossing.to_dict()
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().run_in_executor(None, self._journal, entry)


# ------------------------------------------------------------------ helpers


async def receive_fd(connection: socket.socket, timeout: float) -> int | None:
    """The one descriptor sent over ``connection`` (SCM_RIGHTS); any more are closed.

    Raises:
        TimeoutError: none came within ``timeout``.
    """
    loop = asyncio.get_running_loop()
    received: asyncio.Future[list[int]] = loop.create_future()

    def readable() -> None:
        try:
            _, fds, _, _ = socket.recv_fds(connection, 1, 4)
        except BlockingIOError:
            return
        except OSError:
            fds = []
        if not received.done():
            received.set_result(fds)

    loop.add_reader(connection.fileno(), readable)
    try:
        fds = await asyncio.wait_for(received, timeout)
    finally:
        loop.remove_reader(connection.fileno())
    for extra in fds[1:]:
        os.close(extra)
    return fds[0] if fds else None


def _host_port(target: str) -> tuple[str, int]:
    host, colon, port = target.rpartition(":")
    if not colon or not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
        return "", 0
    host = normalise_host(host)
    if len(host) > 253 or any(c.isspace() or c in "/@?#" for c in host):
        return "", 0
    return host, int(port)


async def _guest_streams(
    guest: socket.socket,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams for the guest's side, as a server's (so TLS can be started server-side)."""
    loop = asyncio.get_running_loop()
    connected: asyncio.Future[asyncio.StreamWriter] = loop.create_future()
    reader = asyncio.StreamReader()

    def on_connected(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set_result(writer)

    protocol = asyncio.StreamReaderProtocol(reader, on_connected)
    await loop.connect_accepted_socket(lambda: protocol, guest)
    return reader, await connected


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await reader.read(READ_BYTES)
        conn.receive_data(data)


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, event: Any) -> None:
    data = conn.send(event)
    if data:
        writer.write(data)
        await writer.drain()


async def _refuse(conn: h11.Connection, writer: asyncio.StreamWriter, refusal: Refused) -> None:
    body = f"pyro egress policy: {refusal.reason}\n".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"x-pyro-egress", b"refused"),
    ]
    with contextlib.suppress(h11.LocalProtocolError, ConnectionError, OSError):
        reason = http.HTTPStatus(refusal.status).phrase.encode()
        await _send(
            conn, writer, h11.Response(status_code=refusal.status, headers=headers, reason=reason)
        )
        await _send(conn, writer, h11.Data(data=body))
        await _send(conn, writer, h11.EndOfMessage())


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: Callable[[int], None]
) -> None:
    while data := await reader.read(READ_BYTES):
        writer.write(data)
        count(len(data))
        await writer.drain()
    if writer.can_write_eof():
        with contextlib.suppress(OSError):
            writer.write_eof()


def _rewrite_request(
    request: h11.Request, swaps: list[tuple[bytes, bytes, str]]
) -> tuple[bytes, list[tuple[bytes, bytes]], set[str], list[tuple[bytes, bytes]]]:
    """Origin-form target, headers minus proxy ones, placeholders swapped for secrets.

    Also returns which secrets went in, and (sent, original) for every header
    value that changed, so an echo of it can be undone in the answer.
    """
    injected: set[str] = set()

    def swap(value: bytes) -> bytes:
        for fake, real, name in swaps:
            if fake in value:
                value = value.replace(fake, real)
                injected.add(name)
        return value

    target = request.target
    if not target.startswith(b"/"):
        url = urlsplit(target.decode("ascii", "replace"))
        target = (url.path or "/").encode() + (b"?" + url.query.encode() if url.query else b"")
    target = swap(target)
    headers: list[tuple[bytes, bytes]] = []
    echoes: list[tuple[bytes, bytes]] = []
    for name, value in request.headers:
        if name in _DROPPED_REQUEST_HEADERS:
            continue
        if swaps and name == b"accept-encoding":
            # Uncompressed answers, so a secret echoed back can be found and hidden.
            continue
        sent = swap(value)
        if swaps and name == b"authorization" and value[:6].lower() == b"basic ":
            encoded = value[6:].strip()
            swapped = _swap_basic(encoded, swap)
            if swapped != encoded:
                sent = b"Basic " + swapped
                echoes.append((swapped, encoded))
        if sent != value:
            echoes.append((sent, value))
        headers.append((name, sent))
    return target, headers, injected, echoes


def _swap_basic(encoded: bytes, swap: Callable[[bytes], bytes]) -> bytes:
    try:
        decoded = base64.b64decode(encoded, validate=True)
    except ValueError:
        return encoded
    swapped = swap(decoded)
    return base64.b64encode(swapped) if swapped != decoded else encoded


def _response_headers(
    response: h11.Response, rewriter: StreamRewriter, method: bytes
) -> list[tuple[bytes, bytes]]:
    """The upstream's headers with secrets hidden; re-framed when the body may change."""
    keep_length = (
        not rewriter.active() or method == b"HEAD" or response.status_code in _NO_BODY_STATUSES
    )
    headers = []
    for name, value in response.headers:
        if name in (b"content-length", b"transfer-encoding") and not keep_length:
            continue  # h11 frames the rewritten body itself (chunked)
        if name in (b"connection", b"keep-alive"):
            continue
        headers.append((name, rewriter.replace(value)))
    return headers
