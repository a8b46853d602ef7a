"""Starting ``pyro server``: the listening socket, TLS, and the refusals that
keep tokens off the network in clear."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from pyro_mcp import config
from pyro_mcp.errors import InvalidArgument
from pyro_mcp.server.app import PyroServer, seconds_from_env, sweep_spool

DEFAULT_LISTEN = "127.0.0.1:8787"
# A client has this long from the first byte of a request's head to its blank
# line; one that trickles its headers (slow loris) is cut off.
# PYRO_SERVER_HEADER_SECONDS changes it.
HEADER_SECONDS = 15.0


class _HeadDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on each request's head.

    uvicorn bounds the idle time between requests (keep-alive) and the head's
    size, not how long the head may take to arrive.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_cycle: object = None
        self._head_seconds = seconds_from_env("PYRO_SERVER_HEADER_SECONDS", HEADER_SECONDS)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first bytes of the next request's head
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._waiting_cycle:
            self._disarm()  # the head arrived whole

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._disarm()  # the transport goes to the WebSocket protocol
        super().handle_websocket_upgrade(event)

    def _arm(self) -> None:
        self._waiting_cycle = self.cycle
        self._deadline = self.loop.call_later(self._head_seconds, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.cycle is self._waiting_cycle and not self.transport.is_closing():
            self.transport.close()


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a host and a port.

    Raises:
        InvalidArgument: not of that form.
    """
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument("listen", f"{listen!r} is not HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(
    paths: config.Paths,
    *,
    listen: str = DEFAULT_LISTEN,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    insecure: bool = False,
    memory_merge: bool = False,
    profile: str | None = None,
    environment: str | None = None,
    announce: Callable[[str, str], None],
) -> None:
    """Serve until interrupted. ``announce(url, warning)`` is called once listening.

    Raises:
        InvalidArgument: a bad listen address, half a TLS pair, unreadable TLS
            files, or a non-loopback address without TLS or ``insecure``.
    """
    host, port = parse_listen(listen)
    if bool(tls_cert) != bool(tls_key):
        raise InvalidArgument("tls_cert", "give --tls-cert and --tls-key together")
    tls = bool(tls_cert)
    if tls:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                str(tls_cert), str(tls_key)
            )
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument("tls_cert", f"cannot use {tls_cert} / {tls_key}: {exc}") from exc
    warning = ""
    if not is_loopback(host) and not tls:
        if not insecure:
            raise InvalidArgument(
                "listen",
                f"{listen} is reachable from other machines and there is no TLS: every "
                "token would cross the network in clear. Give --tls-cert and --tls-key, or "
                "--insecure when something else encrypts the traffic (a VPN, a TLS proxy)",
            )
        warning = (
            f"WARNING: serving on {listen} without TLS (--insecure): tokens and workspace "
            "contents cross the network in clear"
        )
    if not memory_merge:
        # Several principals share this machine: merged pages would let one
        # guest learn what another's memory holds by timing writes.
        os.environ["PYRO_MEMORY_MERGE"] = "off"
    server = PyroServer(paths, profile=profile, environment=environment)
    sweep_spool(server)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    # Accepted connections inherit it: a response's head and body go out at
    # once instead of the body waiting for the client's delayed ACK (40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"{'https' if tls else 'http'}://{shown}:{bound}"
    settings = uvicorn.Config(
        server.app(),
        ssl_certfile=str(tls_cert) if tls else None,
        ssl_keyfile=str(tls_key) if tls else None,
        log_level="warning",
        lifespan="on",
        access_log=False,
        server_header=False,
        timeout_keep_alive=5,
        http=_HeadDeadline,
        # Header bytes a client may send before it must finish its request line
        # and headers: bounded, so a trickling client cannot grow memory.
        h11_max_incomplete_event_size=64 * 1024,
    )
    announce(url, warning)
    uvicorn.Server(settings).run(sockets=[sock])
