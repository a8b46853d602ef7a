"""A fast start for ``pyro mcp serve``: answer the handshake before the MCP SDK has loaded.

Chat hosts spawn the server on every chat start and every health check, and
wait for ``initialize`` and ``tools/list``. Importing the MCP SDK alone takes
~0.6 s here. So the server starts in two halves:

- In a background thread, the real server is built (SDK import, ``Pyro()``,
  tools).
- Meanwhile the front reads stdin itself. If a handshake cache recorded from
  an earlier real server of the same configuration exists, it answers
  ``initialize`` (for a protocol version it has seen) and ``tools/list`` from
  it at once. Anything else waits for the real server.

When the real server is ready, every line read so far is replayed to it in
order, then stdin continues to it. Its answers to requests the front already
answered are dropped, but first compared with the cache: the cache is
rewritten from what the real server said, and if the tool list differed the
client is told (``notifications/tools/list_changed``). The cache's key covers
pyro's version, the SDK's version, the source of the MCP layer, and the
server's flags, so it is only ever a replay of this very server.

Without a cache the front answers nothing itself; that run records one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

CACHE_FORMAT = 1
POLL_SECONDS = 0.02


def cache_key(flags: list[Any]) -> str:
    """A key for everything the handshake's answers depend on.

    ``flags`` are the server flags that shape the tools (profile, mode, default
    environment); the project source does not, so one record serves every
    project a host starts the server in.
    """
    from importlib import metadata

    from pyro_mcp.version import __version__

    digest = hashlib.sha256()
    digest.update(f"{CACHE_FORMAT}|{__version__}|{metadata.version('mcp')}".encode())
    # The tool definitions live in the MCP layer; a change there (even without a
    # version bump, as in development) must not replay an old list.
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(json.dumps(flags).encode())
    return digest.hexdigest()[:32]


class HandshakeCache:
    """The recorded ``initialize`` results (per requested version) and ``tools/list``."""

    def __init__(self, directory: Path, key: str) -> None:
        self.path = directory / "mcp-handshake" / f"{key}.json"
        self.initialize: dict[str, Any] = {}
        self.tools: Any = None
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.path.read_text())
            if isinstance(data, dict):
                self.initialize = dict(data.get("initialize") or {})
                self.tools = data.get("tools")

    def save(self) -> None:
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"initialize": self.initialize, "tools": self.tools}))
            tmp.replace(self.path)


class FastFront:
    """Reads the client's first messages and answers what the cache allows."""

    def __init__(self, cache: HandshakeCache, stdin_fd: int, stdout_fd: int) -> None:
        self.cache = cache
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.lines: list[bytes] = []  # everything read, replayed to the real server
        self.partial = b""
        self.eof = False
        self.answered: dict[str, str] = {}  # request id -> what the front answered
        # request id -> (method, requested protocol version): every request the
        # client sent, so the real server's answers can be recorded.
        self.requests: dict[str, tuple[str, str | None]] = {}
        self.blocked = False  # a message only the real server can answer arrived

    def run_until(self, ready: threading.Event) -> None:
        """Read and answer until the real server is ready (or stdin ends)."""
        while not ready.is_set() and not self.eof:
            readable, _, _ = select.select([self.stdin_fd], [], [], POLL_SECONDS)
            if not readable:
                continue
            data = os.read(self.stdin_fd, 65536)
            if not data:
                self.eof = True
                break
            self.partial += data
            while b"\n" in self.partial:
                line, self.partial = self.partial.split(b"\n", 1)
                self.lines.append(line + b"\n")
                self._consider(line)

    def note(self, line: bytes) -> dict[str, Any] | None:
        """Remember the request on ``line`` (for recording its answer); the message."""
        try:
            message = json.loads(line)
        except ValueError:
            return None
        if not isinstance(message, dict):
            return None
        method, request_id = message.get("method"), message.get("id")
        if isinstance(method, str) and request_id is not None:
            params: dict[str, Any] = (
                message["params"] if isinstance(message.get("params"), dict) else {}
            )
            version = params.get("protocolVersion") if method == "initialize" else None
            cursor = params.get("cursor")
            self.requests[json.dumps(request_id)] = (
                method if not cursor else f"{method} (page)",
                str(version) if version is not None else None,
            )
        return message

    def _consider(self, line: bytes) -> None:
        message = self.note(line)
        if self.blocked:
            return  # keep order: nothing is answered past a message we cannot answer
        if message is None:
            self.blocked = True
            return
        method, request_id = message.get("method"), message.get("id")
        params: dict[str, Any] = (
            message["params"] if isinstance(message.get("params"), dict) else {}
        )
        if request_id is None:
            return  # a notification: the real server sees it on replay
        if method == "initialize":
            version = str(params.get("protocolVersion"))
            result = self.cache.initialize.get(version)
            if result is not None and not self.answered:
                self._answer(request_id, result, "initialize")
                return
        elif (
            method == "tools/list"
            and not params.get("cursor")
            and self.cache.tools is not None
            and "initialize" in self.answered.values()
        ):
            self._answer(request_id, self.cache.tools, "tools/list")
            return
        self.blocked = True

    def _answer(self, request_id: Any, result: Any, what: str) -> None:
        self.answered[json.dumps(request_id)] = what
        reply = {"jsonrpc": "2.0", "id": request_id, "result": result}
        _write_all(self.stdout_fd, (json.dumps(reply) + "\n").encode())


class ReplayStdin:
    """What the real server reads: the front's lines, then the rest of stdin."""

    def __init__(self, front: FastFront) -> None:
        self.front = front

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        import anyio

        for line in self.front.lines:
            yield line.decode("utf-8", errors="replace")
        if self.front.eof:
            if self.front.partial:
                yield self.front.partial.decode("utf-8", errors="replace")
            return
        reader = os.fdopen(self.front.stdin_fd, "rb", closefd=False)
        pending = self.front.partial
        while True:
            line = await anyio.to_thread.run_sync(reader.readline, abandon_on_cancel=True)
            if not line:
                if pending:
                    yield pending.decode("utf-8", errors="replace")
                return
            line, pending = pending + line, b""
            self.front.note(line)
            yield line.decode("utf-8", errors="replace")


class FilteredStdout:
    """What the real server writes: answers the front already gave are checked, not sent."""

    def __init__(self, front: FastFront) -> None:
        self.front = front

    async def write(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if isinstance(message, dict) and "id" in message and "method" not in message:
            key = json.dumps(message["id"])
            self._record(key, message.get("result"))
            if self.front.answered.pop(key, None) is not None:
                return  # the front gave this answer already
        _write_all(self.front.stdout_fd, text.encode())

    def _record(self, key: str, result: Any) -> None:
        """Keep the cache equal to what the real server answers."""
        method, version = self.front.requests.pop(key, ("", None))
        cache = self.front.cache
        if result is None:
            return
        if method == "initialize" and version is not None:
            if cache.initialize.get(version) != result:
                cache.initialize[version] = result
                cache.save()
        elif method == "tools/list" and cache.tools != result:
            if self.front.answered.get(key) == "tools/list":
                # The client was given an outdated list: tell it to fetch again.
                _write_all(
                    self.front.stdout_fd,
                    b'{"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}\n',
                )
            cache.tools = result
            cache.save()

    async def flush(self) -> None:
        return None


def serve(build: Callable[[], Any], cache: HandshakeCache) -> None:
    """Run the front until ``build()`` returns the real MCPServer, then hand over to it.

    stdin and stdout are taken for the protocol first, as the SDK's own stdio
    transport does: fd 0 then reads /dev/null and fd 1 goes to stderr, so
    nothing a child process prints can corrupt the wire.

    Raises:
        Whatever ``build`` raised (after the client has been answered what it could).
    """
    stdin_fd = os.dup(0)
    stdout_fd = os.dup(1)
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)

    import logging

    ready = threading.Event()
    built: dict[str, Any] = {}
    handlers = list(logging.getLogger().handlers)

    def make() -> None:
        try:
            built["server"] = build()
        except BaseException as exc:  # reported by the main thread
            built["error"] = exc
        finally:
            ready.set()

    threading.Thread(target=make, name="pyro-mcp-build", daemon=True).start()
    front = FastFront(cache, stdin_fd, stdout_fd)
    front.run_until(ready)
    ready.wait()
    # Loading the SDK gives the root logger a stderr handler of its own: keep
    # the one destination configure_logging chose (--log-file must move logs).
    logging.getLogger().handlers = handlers
    if "error" in built:
        raise built["error"]
    server = built["server"]

    import anyio
    from mcp.server.stdio import stdio_server

    async def run() -> None:
        async with stdio_server(
            stdin=ReplayStdin(front),  # type: ignore[arg-type]
            stdout=FilteredStdout(front),  # type: ignore[arg-type]
        ) as (read, write):
            lowlevel = server._lowlevel_server
            await lowlevel.run(read, write, lowlevel.create_initialization_options())

    anyio.run(run)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def configure_logging(log_file: Path | None, verbose: bool, serving: str) -> None:
    """Logs to stderr (or ``log_file``), never stdout: warnings, plus one start-up line.

    Chat hosts file every stderr line of a server as an error (Claude Code
    does), so by default only warnings and errors are logged, plus one line
    saying what is served; ``verbose`` logs every step.
    """
    import logging

    from pyro_mcp.version import __version__

    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    # One destination only, so --log-file really moves the logs (the SDK adds
    # a stderr handler of its own when it loads).
    root.handlers = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    start = logging.getLogger("pyro.mcp.start")
    start.setLevel(logging.INFO)
    start.info("pyro %s serving %s", __version__, serving or "(no details)")
