"""Host programs that fetch for a principal (``skopeo``) reach only what the
egress proxy allows: public addresses, checked when each connection is made.

pyro server checks a registry's name before a pull (``server/calls.py``), but
a name can resolve elsewhere a moment later (DNS rebinding) and a registry can
redirect its blob downloads anywhere, the server's loopback and the cloud
metadata service included; skopeo connects on its own. So for a principal
without the ``private-registry`` capability each skopeo run is confined
(``confined.py``): a network namespace of its own whose only way out is this
proxy, run in a thread of the calling process for the length of the pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pyro_mcp.egress import confined
from pyro_mcp.egress.policy import EgressPolicy
from pyro_mcp.egress.proxy import EgressProxy, receive_fd

START_TIMEOUT_SECONDS = 10.0


class FetchProxy:
    """A running proxy that confined programs hand their listening socket to.

    ``command(argv)`` is ``argv`` run confined; ``refusals`` are the connections
    the proxy refused (host, port and why), to explain a failed fetch.
    """

    def __init__(self, folder: Path, policy: EgressPolicy) -> None:
        self.handoff = folder / "handoff.sock"
        self.refusals: list[dict[str, Any]] = []
        self._policy = policy
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pyro-fetch-proxy", daemon=True)
        self._stopped: asyncio.Event | None = None
        self._failure: BaseException | None = None

    def command(self, argv: Sequence[str]) -> list[str]:
        return [sys.executable, "-S", "-I", confined.__file__, str(self.handoff), *argv]

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_SECONDS) or self._failure is not None:
            self.stop()
            raise OSError(f"the fetch proxy did not start: {self._failure}")

    def stop(self) -> None:
        if self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(START_TIMEOUT_SECONDS)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        proxy = EgressProxy(self._policy, {}, None, journal=self._journal)
        listeners: list[socket.socket] = []
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(str(self.handoff))
            os.chmod(self.handoff, 0o600)
            server.listen(16)
            server.setblocking(False)
        except OSError as exc:
            server.close()
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        accepting = asyncio.ensure_future(self._accept(server, proxy, listeners))
        try:
            await self._stopped.wait()
        finally:
            accepting.cancel()
            server.close()
            await proxy.close()
            for listener in listeners:
                listener.close()

    async def _accept(
        self, server: socket.socket, proxy: EgressProxy, listeners: list[socket.socket]
    ) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        while True:
            connection, _ = await loop.sock_accept(server)
            task = asyncio.ensure_future(self._take(connection, proxy, listeners))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _take(
        self, connection: socket.socket, proxy: EgressProxy, listeners: list[socket.socket]
    ) -> None:
        """One confined program's listening socket: served until the proxy stops."""
        try:
            fd = await receive_fd(connection, START_TIMEOUT_SECONDS)
            if fd is not None:
                listener = socket.socket(fileno=fd)
                listener.setblocking(False)
                listeners.append(listener)
                proxy.serve_direct(listener)
                await asyncio.get_running_loop().sock_sendall(connection, b"k")
        except (OSError, TimeoutError):
            pass
        finally:
            connection.close()

    def _journal(self, entry: dict[str, Any]) -> None:
        if not entry.get("allowed"):
            self.refusals.append(entry)


@contextlib.contextmanager
def fetch_proxy(policy: EgressPolicy | None = None) -> Iterator[FetchProxy]:
    """A ``FetchProxy`` for the length of the block (default policy: any public
    address, nothing private, local or of this host)."""
    folder = Path(tempfile.mkdtemp(prefix="pyro-fetch-"))
    proxy = FetchProxy(folder, policy or EgressPolicy())
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()
        shutil.rmtree(folder, ignore_errors=True)
