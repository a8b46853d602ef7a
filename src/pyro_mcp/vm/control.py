"""The supervisor's control socket (``ctl.sock``): any number of local clients
(CLI calls, SDK objects, MCP servers) send framed requests, each answered on
its own task, so a long request never holds up a short one.

An ``agent`` request is relayed to the guest; every other operation is looked
up in the table the supervisor hands over. The connection that sends ``own``
owns the VM: when it closes, an owner-bound VM stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pyro_mcp.agent.protocol import FrameDecoder, encode_frame
from pyro_mcp.errors import VMError

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlServer:
    def __init__(
        self,
        handlers: Mapping[str, Handler],
        relay: Handler,
        *,
        on_owner: Callable[[], None],
        on_owner_gone: Callable[[], None],
    ) -> None:
        self.handlers = handlers
        self.relay = relay
        self.on_owner = on_owner
        self.on_owner_gone = on_owner_gone

    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        lock = asyncio.Lock()
        is_owner = False
        tasks: set[asyncio.Task[None]] = set()
        try:
            while data := await reader.read(65536):
                for message in decoder.feed(data):
                    if message.get("op") == "own":
                        is_owner = True
                        self.on_owner()
                    task = asyncio.ensure_future(self._answer(message, writer, lock))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except ConnectionError:
            pass
        finally:
            if is_owner:
                self.on_owner_gone()
            writer.close()

    async def _answer(
        self, message: dict[str, Any], writer: asyncio.StreamWriter, lock: asyncio.Lock
    ) -> None:
        request_id = message.get("id")
        op = message.get("op")
        args = message.get("args") if isinstance(message.get("args"), dict) else {}
        assert isinstance(args, dict)
        try:
            if op == "agent":
                reply = await self.relay(args)
            else:
                handler = self.handlers.get(op) if isinstance(op, str) else None
                if handler is None:
                    raise ValueError(f"unknown supervisor operation {op!r}")
                reply = {"ok": True, "result": await handler(args)}
            reply["id"] = request_id
        except VMError as exc:
            reply = {
                "id": request_id,
                "ok": False,
                "error": {"kind": "vm_died", "message": str(exc)},
            }
        except (ValueError, TypeError, KeyError) as exc:
            reply = {
                "id": request_id,
                "ok": False,
                "error": {"kind": "bad_request", "message": str(exc)},
            }
        async with lock:
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.write(encode_frame(reply))
                await writer.drain()
