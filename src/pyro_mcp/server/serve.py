"""Starting ``pyro server``: the listening socket, TLS, and the refusals that
keep tokens off the network in clear."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import uvicorn

from pyro_mcp import config
from pyro_mcp.errors import InvalidArgument
from pyro_mcp.server.app import PyroServer, sweep_spool

DEFAULT_LISTEN = "127.0.0.1:8787"


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
        # Header bytes a client may send before it must finish its request line
        # and headers: bounded, so a trickling client cannot grow memory.
        h11_max_incomplete_event_size=64 * 1024,
    )
    announce(url, warning)
    uvicorn.Server(settings).run(sockets=[sock])
