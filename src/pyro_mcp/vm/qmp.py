"""QEMU's QMP monitor, as the supervisor holds it: QEMU connects to the
supervisor's ``qmp.sock``; commands go one at a time and events are skipped."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pyro_mcp.errors import VMError

READY_TIMEOUT_SECONDS = 10.0
COMMAND_TIMEOUT_SECONDS = 30.0


class Monitor:
    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ready: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        """Called on the supervisor's event loop before QEMU starts."""
        self._ready = asyncio.get_running_loop().create_future()

    @property
    def ready(self) -> asyncio.Future[None]:
        """Done once QEMU connected and the QMP handshake is over."""
        assert self._ready is not None, "start() first"
        return self._ready

    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        await reader.readline()  # the greeting
        writer.write(b'{"execute": "qmp_capabilities"}\n')
        await self._response()
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    async def _response(self) -> dict[str, Any]:
        assert self._reader is not None
        while True:
            line = await self._reader.readline()
            if not line:
                raise VMError("QEMU closed its monitor")
            message = json.loads(line)
            if "event" not in message:  # events are not answers
                return dict(message)

    async def call(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """One QMP command; its ``return`` value, or VMError with QEMU's description."""
        if self._ready is None:
            raise VMError("QMP is not available")
        await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT_SECONDS)
        assert self._writer is not None
        async with self._lock:
            request: dict[str, Any] = {"execute": command}
            if arguments:
                request["arguments"] = arguments
            self._writer.write(json.dumps(request).encode() + b"\n")
            response = await asyncio.wait_for(self._response(), COMMAND_TIMEOUT_SECONDS)
        if "error" in response:
            raise VMError(f"QEMU refused {command}: {response['error'].get('desc')}")
        return response.get("return")

    async def hostfwd(self, action: str, host_port: int, guest_port: int) -> dict[str, Any]:
        """Publish (or withdraw) a guest TCP port on 127.0.0.1 of the host."""
        if action == "add":
            line = f"hostfwd_add n0 tcp:127.0.0.1:{host_port}-:{guest_port}"
        else:
            line = f"hostfwd_remove n0 tcp:127.0.0.1:{host_port}"
        said = await self.call("human-monitor-command", {"command-line": line})
        if said:  # HMP prints nothing on success
            raise ValueError(str(said).strip())
        return {"host": "127.0.0.1", "host_port": host_port, "guest_port": guest_port}
