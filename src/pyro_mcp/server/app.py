"""``pyro server serve``: the engine's SDK calls and the MCP tools over HTTP.

Routes (all behind ``Authorization: Bearer TOKEN``; anything else gets a bare
401, the same for a wrong token as for a revoked one):

    GET  /api/v1/hello              version and who the token is
    POST /api/v1/call/METHOD        one SDK call, answered as NDJSON (see wire)
    POST /api/v1/uploads            a seed or sync archive, streamed to disk
    GET  /api/v1/downloads/TICKET   an export the call kept, streamed and dropped
    /mcp                            the MCP tools over Streamable HTTP (the token's profile)
    /mcp/NAME                       the same with the profile or mode NAME

Each principal gets its own engine view (``PrincipalCalls``), its own warm
snapshots, and its own MCP session manager: a session id of one principal
means nothing to another's. Revoking a token ends its MCP sessions within
``WATCH_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from pyro_mcp import config
from pyro_mcp.errors import InvalidArgument, PyroError, RemoteError, StoreError
from pyro_mcp.mcp import profiles
from pyro_mcp.mcp.server import IdleSuspender, create_server
from pyro_mcp.mcp.warmup import BackgroundWarmUp
from pyro_mcp.sdk import Pyro
from pyro_mcp.server import audit
from pyro_mcp.server.audit import AuditLog
from pyro_mcp.server.calls import PrincipalCalls, report_progress
from pyro_mcp.server.registry import Principal, Registry
from pyro_mcp.transport import wire
from pyro_mcp.version import __version__

log = logging.getLogger("pyro.server")

MAX_CALL_BYTES = 64 * 1024 * 1024
# A client that sends nothing for this long mid-upload is dropped (slow loris);
# PYRO_SERVER_UPLOAD_IDLE_SECONDS changes it (a slow link may need more).
UPLOAD_IDLE_SECONDS = 30.0
# Uploads and downloads nobody collected are removed after this.
SPOOL_SECONDS = 3600.0
WATCH_SECONDS = 2.0
_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass
class _Sessions:
    manager: StreamableHTTPSessionManager
    stop: anyio.Event


class PyroServer:
    """The state of one running server: registry, per-principal engines, MCP sessions."""

    def __init__(
        self, paths: config.Paths, *, profile: str | None = None, environment: str | None = None
    ) -> None:
        self.paths = paths
        self.profile = profile
        self.environment = environment or config.DEFAULT_ENVIRONMENT
        self.registry = Registry(paths.state_dir / "server.db")
        self.spool = paths.state_dir / "server-spool"
        self.audit = AuditLog(paths.state_dir / audit.FILE_NAME, max_bytes=config.audit_max_bytes())
        self.pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="pyro-call")
        self._calls: dict[str, PrincipalCalls] = {}
        self._calls_lock = threading.Lock()
        self._sessions: dict[str, _Sessions] = {}
        self._sessions_lock = asyncio.Lock()
        self._tasks: anyio.abc.TaskGroup | None = None

    # ------------------------------------------------------------ principals

    def principal(self, scope: Scope) -> Principal | None:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.registry.principal_for(token.strip())

    def calls_for(self, principal: Principal) -> PrincipalCalls:
        """The principal's engine view (made on first use, with its own warm snapshots)."""
        with self._calls_lock:
            calls = self._calls.get(principal.name)
            if calls is None or calls.principal != principal:
                paths = replace(
                    self.paths, warm_dir=self.paths.cache_dir / "warm-principals" / principal.name
                )
                engine = Pyro._over(paths, report_progress)
                calls = PrincipalCalls(
                    engine, self.registry, principal, self.spool / "downloads", self.audit
                )
                self._calls[principal.name] = calls
                BackgroundWarmUp(engine, self.environment, network=False).start()
            return calls

    async def sessions_for(
        self, principal: Principal, selection: str | None = None
    ) -> StreamableHTTPSessionManager:
        """The principal's session manager for the tool set ``selection`` (a profile
        or mode named in the URL, ``/mcp/MODE``; default: the token's profile)."""
        key = f"{principal.name}/{selection or ''}"
        async with self._sessions_lock:
            found = self._sessions.get(key)
            if found is not None:
                return found.manager
            assert self._tasks is not None, "the server's lifespan has not started"
            calls = self.calls_for(principal)
            mode = selection if selection in profiles.MODES else None
            profile = None if mode else selection or principal.profile or self.profile
            mcp = create_server(
                profile,
                mode,
                pyro=Pyro(transport=calls, progress=_log_progress),
                environment=self.environment,
                idle_timer=False,
                host_path_refusal=(
                    "this pyro server's files are not yours to seed from or export to. To "
                    "seed from your checkout and export to your machine, connect through the "
                    "local bridge `pyro mcp serve --remote URL` instead of the URL itself"
                ),
            )
            manager = StreamableHTTPSessionManager(
                app=mcp._lowlevel_server,
                # Every request carries a bearer token a web page cannot have, so
                # the Host check against DNS rebinding adds nothing here.
                security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            )
            entry = _Sessions(manager, anyio.Event())
            ready = anyio.Event()

            async def run() -> None:
                async with manager.run():
                    ready.set()
                    await entry.stop.wait()

            self._tasks.start_soon(run)
            await ready.wait()
            self._sessions[key] = entry
            return manager

    async def watch(self) -> None:
        """End the MCP sessions of revoked tokens; drop spool nobody collected."""
        while True:
            await anyio.sleep(WATCH_SECONDS)
            for key in list(self._sessions):
                name = key.partition("/")[0]
                if self.registry.principal_named(name) is None:
                    log.info("token %s was revoked: ending its MCP sessions", name)
                    self._sessions.pop(key).stop.set()
                    with self._calls_lock:
                        self._calls.pop(name, None)
            for path in self.registry.stale(SPOOL_SECONDS):
                _remove_spooled(path)

    # ------------------------------------------------------------------ app

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            admin = Pyro._over(self.paths, report_progress)
            IdleSuspender(admin).start()
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                tasks.start_soon(self.watch)
                yield
                for entry in self._sessions.values():
                    entry.stop.set()
                tasks.cancel_scope.cancel()
            self.pool.shutdown(wait=False, cancel_futures=True)

        api = wire.API
        return Starlette(
            routes=[
                Route(f"{api}/hello", self._hello, methods=["GET"]),
                Route(f"{api}/call/{{method}}", self._call, methods=["POST"]),
                Route(f"{api}/uploads", self._upload, methods=["POST"]),
                Route(f"{api}/downloads/{{ticket}}", self._download, methods=["GET"]),
                WebSocketRoute(f"{api}/ports/{{workspace}}/{{port:int}}", self._port),
                Route("/mcp", _McpGate(self)),
                Route("/mcp/{selection}", _McpGate(self)),
            ],
            lifespan=lifespan,
        )

    def _admit(self, request: Request) -> Principal | Response:
        principal = self.principal(request.scope)
        if principal is None:
            return _unauthorized()
        client = request.headers.get(wire.VERSION_HEADER)
        if client is not None and client != __version__:
            return _error(
                409,
                RemoteError(
                    f"this pyro server runs pyro {__version__} and the client is pyro "
                    f"{client}: install the same version on both before any work"
                ),
            )
        return principal

    async def _hello(self, request: Request) -> Response:
        principal = self._admit(request)
        if isinstance(principal, Response):
            return principal
        self.calls_for(principal)
        return JSONResponse(
            {"version": __version__, "principal": principal.name, "admin": principal.admin}
        )

    async def _call(self, request: Request) -> Response:
        principal = self._admit(request)
        if isinstance(principal, Response):
            return principal
        method = request.path_params["method"]
        try:
            body = await _read_bounded(request, MAX_CALL_BYTES)
            payload = json.loads(body)
            arguments = wire.decode(payload.get("arguments", {}))
            if not isinstance(arguments, dict):
                raise InvalidArgument("arguments", "must be an object of argument names")
        except (ValueError, AttributeError) as exc:
            return _error(400, InvalidArgument("body", f"not a JSON call: {exc}"))
        except _TooLarge as exc:
            return _error(413, exc)
        except PyroError as exc:
            return _error(400, exc)
        except ClientDisconnect:
            return Response(status_code=400)
        calls = self.calls_for(principal)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def progress(line: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, {"progress": line})

        def work() -> None:
            try:
                message: dict[str, Any] = {"result": calls.call(method, arguments, progress)}
            except PyroError as exc:
                message = {"error": wire.error_payload(exc)}
            except TypeError as exc:  # arguments the method does not have
                message = {"error": wire.error_payload(InvalidArgument(method, str(exc)))}
            except Exception:
                log.exception("%s failed", method)
                message = {
                    "error": {
                        "type": "PyroError",
                        "message": f"{method} failed inside the "
                        "pyro server; its log has the details",
                    }
                }
            loop.call_soon_threadsafe(queue.put_nowait, message)

        loop.run_in_executor(self.pool, work)

        async def lines() -> AsyncIterator[bytes]:
            while True:
                message = await queue.get()
                yield json.dumps(message, default=str).encode() + b"\n"
                if "progress" not in message:
                    return

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def _upload(self, request: Request) -> Response:
        principal = self._admit(request)
        if isinstance(principal, Response):
            return principal
        started = time.monotonic()
        try:
            self.audit.check()
        except StoreError as exc:
            return _error(503, exc)
        status, outcome, size = await self._receive_upload(request, principal)
        error = outcome if isinstance(outcome, PyroError) else None
        refused = self._transfer_audited(principal, "upload", error, started, size)
        if refused is not None:
            return refused
        if error is not None:
            return Response(status_code=400) if status == 0 else _error(status, error)
        return JSONResponse({"upload": outcome})

    async def _receive_upload(
        self, request: Request, principal: Principal
    ) -> tuple[int, PyroError | str, int]:
        """(status, the error or the ticket, bytes received) of one upload; status 0:
        the client went away (nobody is left to answer)."""
        try:
            length = int(request.headers.get("content-length", ""))
        except ValueError:
            return 411, InvalidArgument("Content-Length", "an upload must give its size"), 0
        if length > wire.MAX_UPLOAD_BYTES:
            return 413, _too_large(length), 0
        suffix = request.headers.get("pyro-archive-suffix", ".tar.gz")
        if suffix not in _SUFFIXES:
            return 400, InvalidArgument("Pyro-Archive-Suffix", f"one of {_SUFFIXES}"), 0
        folder = self.spool / "uploads"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / f"{secrets.token_hex(16)}{suffix}"
        try:
            received = await _receive_to(request, path, length)
        except ClientDisconnect:
            path.unlink(missing_ok=True)
            return 0, InvalidArgument("upload", "the client went away midway"), 0
        except TimeoutError:
            path.unlink(missing_ok=True)
            return 408, InvalidArgument("upload", "the client stopped sending"), 0
        except OSError as exc:
            path.unlink(missing_ok=True)
            return 507, RemoteError(f"the server could not store the upload: {exc}"), 0
        if received != length:
            path.unlink(missing_ok=True)
            return (
                413 if received > length else 400,
                InvalidArgument("upload", f"{received} bytes sent where {length} were announced"),
                received,
            )
        return 200, self.registry.spool("upload", principal.name, path), received

    def _transfer_audited(
        self,
        principal: Principal,
        method: str,
        error: PyroError | None,
        started: float,
        size: int,
    ) -> Response | None:
        """Record an upload or download; the answer to give when that cannot be done."""
        try:
            self.audit.record(
                principal=principal.name,
                method=method,
                arguments={},
                error=error,
                seconds=time.monotonic() - started,
                size_bytes=size,
            )
        except StoreError as exc:
            return _error(503, exc)
        return None

    async def _port(self, websocket: WebSocket) -> None:
        """``pyro workspace port-forward``: one TCP connection to a published port."""
        principal = self.principal(websocket.scope)
        if principal is None:
            await websocket.close(code=1008)  # before accept: the client sees HTTP 403
            return
        await websocket.accept()
        calls = self.calls_for(principal)
        workspace, port = websocket.path_params["workspace"], websocket.path_params["port"]
        try:
            host_port = await anyio.to_thread.run_sync(calls.published_host_port, workspace, port)
        except PyroError as exc:
            await websocket.send_json({"error": wire.error_payload(exc)})
            await websocket.close()
            return
        await _tunnel(websocket, host_port)

    async def _download(self, request: Request) -> Response:
        principal = self._admit(request)
        if isinstance(principal, Response):
            return principal
        started = time.monotonic()
        try:
            self.audit.check()
        except StoreError as exc:
            return _error(503, exc)
        path = self.registry.take("download", request.path_params["ticket"], principal.name)
        if path is None or not path.is_file():
            missing = InvalidArgument("ticket", "no such download (each is taken once)")
            refused = self._transfer_audited(principal, "download", missing, started, 0)
            return refused or _error(404, missing)

        stream = path.open("rb")
        size = os.fstat(stream.fileno()).st_size
        refused = self._transfer_audited(principal, "download", None, started, size)
        if refused is not None:
            stream.close()
            _remove_spooled(path)
            return refused
        # Gone from the disk's names at once: the open file is read to the end,
        # and its space is freed when the response ends, however it ends (a
        # client that goes away midway included).
        _remove_spooled(path)

        headers = {"Content-Length": str(size)}
        if request.query_params.get("layout") == "extents":
            # A disk image: its holes stay behind (an 8 GiB disk may hold 300 MB).
            headers = {
                "Content-Length": str(wire.framed_length(stream.fileno())),
                wire.DISK_SIZE_HEADER: str(size),
            }

            def chunks() -> Iterator[bytes]:
                with stream:
                    yield from wire.extent_frames(stream.fileno())

        else:

            def chunks() -> Iterator[bytes]:
                with stream:
                    while chunk := stream.read(wire.CHUNK_BYTES):
                        yield chunk

        return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)


async def _tunnel(websocket: WebSocket, host_port: int) -> None:
    """Carry bytes between ``websocket`` and 127.0.0.1:``host_port`` until either ends."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", host_port)
    except OSError as exc:
        message = f"the service's port {host_port} does not answer on the server: {exc}"
        await websocket.send_json({"error": wire.error_payload(RemoteError(message))})
        await websocket.close()
        return
    await websocket.send_json({"ok": True})

    async def upstream() -> None:
        try:
            while True:
                data = await websocket.receive_bytes()
                writer.write(data)
                await writer.drain()
        except (WebSocketDisconnect, KeyError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.write_eof()

    async def downstream() -> None:
        with contextlib.suppress(OSError, WebSocketDisconnect, RuntimeError):
            while data := await reader.read(wire.CHUNK_BYTES):
                await websocket.send_bytes(data)

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(upstream)
            await downstream()
            tasks.cancel_scope.cancel()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await websocket.close()


class _McpGate:
    """``/mcp``: the bearer token picks the principal's own MCP session manager."""

    def __init__(self, server: PyroServer) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = self.server.principal(scope)
        if principal is None:
            await _unauthorized()(scope, receive, send)
            return
        selection = (scope.get("path_params") or {}).get("selection")
        if selection is not None and selection not in (*profiles.PROFILES, *profiles.MODES):
            known = ", ".join((*profiles.PROFILES, *profiles.MODES))
            message = InvalidArgument("/mcp/NAME", f"{selection!r} is not one of {known}")
            await _error(404, message)(scope, receive, send)
            return
        manager = await self.server.sessions_for(principal, selection)
        await manager.handle_request(scope, receive, send)


async def _read_bounded(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge("body", f"a call is larger than {limit} bytes")
    return bytes(body)


async def _receive_to(request: Request, path: Path, length: int) -> int:
    """Stream the body to ``path``, at most ``length`` + 1 bytes; the count received."""
    received = 0
    stream = request.stream().__aiter__()
    idle = seconds_from_env("PYRO_SERVER_UPLOAD_IDLE_SECONDS", UPLOAD_IDLE_SECONDS)
    with path.open("wb") as out:
        while True:
            try:
                chunk = await asyncio.wait_for(anext(stream), idle)
            except StopAsyncIteration:
                return received
            received += len(chunk)
            if received > length:
                return received
            out.write(chunk)


def seconds_from_env(variable: str, default: float) -> float:
    """A duration an operator may set in ``variable`` (at least 0.1 s), else ``default``."""
    try:
        return max(0.1, float(os.environ.get(variable, "")))
    except ValueError:
        return default


class _TooLarge(InvalidArgument):
    pass


def _unauthorized() -> Response:
    return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})


def _error(status: int, exc: PyroError) -> Response:
    return JSONResponse({"error": wire.error_payload(exc)}, status_code=status)


def _too_large(length: int) -> InvalidArgument:
    return InvalidArgument(
        "upload", f"{length} bytes is more than a server takes ({wire.MAX_UPLOAD_BYTES})"
    )


def _remove_spooled(path: Path) -> None:
    """A spooled archive and the folder an export made for it."""
    if path.parent.name.startswith("export-"):
        shutil.rmtree(path.parent, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _log_progress(line: str) -> None:
    log.info(line)


def sweep_spool(server: PyroServer) -> None:
    """At start: nothing spooled survives a restart (its callers are gone)."""
    for path in server.registry.stale(0):
        _remove_spooled(path)
    for folder in (server.spool / "uploads", server.spool / "downloads"):
        shutil.rmtree(folder, ignore_errors=True)
