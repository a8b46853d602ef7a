"""Host side of the agent protocol: requests through a VM's supervisor.

Everything that comes back from the guest is untrusted. Replies are checked
for shape and bounded in size here, before any other host code sees them.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_mcp.agent.protocol import FrameDecoder, encode_frame
from pyro_mcp.errors import (
    AgentError,
    AgentProtocolError,
    AgentTimeout,
    InvalidArgument,
    NotFound,
    VMError,
)

# Time the guest may take beyond an operation's own timeout (killing the
# command, sending its output) before the supervisor gives up on it; the
# client waits a little longer than the supervisor so its answer arrives.
AGENT_MARGIN_SECONDS = 15.0
REPLY_MARGIN_SECONDS = 30.0


class SupervisorClient:
    """One connection to a running VM's supervisor (``ctl.sock``).

    Safe to share between threads: requests are serialised on the connection.
    """

    def __init__(self, control_socket: Path, connect_timeout: float = 5.0) -> None:
        self._path = control_socket
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(connect_timeout)
        try:
            _connect_unix(self._sock, control_socket)
        except OSError as exc:
            self._sock.close()
            raise VMError(f"the VM is not running (cannot reach {control_socket}: {exc})") from exc
        self._decoder = FrameDecoder()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SupervisorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(
        self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """A supervisor operation (``status``, ``shutdown``, ``own``)."""
        return self._request(op, args or {}, timeout)

    def agent(
        self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """A guest agent operation, waiting at most ``timeout`` plus a margin."""
        return self._request(
            "agent",
            {"op": op, "args": args or {}, "timeout": timeout + AGENT_MARGIN_SECONDS},
            timeout + REPLY_MARGIN_SECONDS,
        )

    def _request(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        with self._lock:
            request_id = next(self._ids)
            try:
                self._sock.settimeout(timeout)
                self._sock.sendall(encode_frame({"id": request_id, "op": op, "args": args}))
                while True:
                    data = self._sock.recv(65536)
                    if not data:
                        raise VMError("the VM's supervisor closed the connection (the VM stopped)")
                    for message in self._decoder.feed(data):
                        if message.get("id") == request_id:
                            return _unwrap(message)
            except TimeoutError as exc:
                raise AgentTimeout(f"no answer to {op} within {timeout:.0f} s") from exc
            except OSError as exc:
                raise VMError(f"lost the connection to the VM: {exc}") from exc


# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


def _connect_unix(sock: socket.socket, path: Path) -> None:
    """Connect to ``path`` even when it is longer than a unix socket path may be."""
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        sock.connect(str(path))
        return
    directory = os.open(path.parent, os.O_PATH)
    try:
        sock.connect(f"/proc/self/fd/{directory}/{path.name}")
    finally:
        os.close(directory)


def _unwrap(message: dict[str, Any]) -> dict[str, Any]:
    if message.get("ok") is True:
        result = message.get("result")
        if not isinstance(result, dict):
            raise AgentProtocolError("the guest answered without a result object")
        return result
    error = message.get("error")
    if not isinstance(error, dict):
        raise AgentProtocolError("the guest answered with neither a result nor an error")
    kind = str(error.get("kind", "unknown"))
    text = str(error.get("message", "unknown error"))[:2000]
    if kind == "vm_died":
        raise VMError(text)
    if kind == "timeout":
        raise AgentTimeout(text)
    if kind in _PATH_ERRORS:
        raise InvalidArgument("path", text)
    if kind == "no_such":
        raise NotFound(text)
    if kind in ("service_exists", "shell_closed", "too_many"):
        raise InvalidArgument(kind, text)
    if kind in ("bad_cwd", "bad_args", "spawn_failed"):
        raise InvalidArgument("command" if kind == "spawn_failed" else "args", text)
    raise AgentError(f"guest agent: {text}")


# Guest error kinds that mean the caller named a bad path, not that the guest failed.
_PATH_ERRORS = frozenset(
    {
        "bad_path",
        "outside_workspace",
        "not_found",
        "is_a_directory",
        "not_a_directory",
        "not_a_file",
    }
)


@dataclass(frozen=True)
class ExecOutput:
    """A checked exec reply: output bounded to the host's own limit."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    duration_ms: int


def parse_exec_result(result: dict[str, Any], max_output_bytes: int) -> ExecOutput:
    """Validate an exec reply from the guest.

    Raises:
        AgentProtocolError: a field is missing or of the wrong type or range.
    """
    exit_code = _field(result, "exit_code", int)
    if not 0 <= exit_code <= 255:
        raise AgentProtocolError(f"exit_code {exit_code} is out of range")
    streams: list[tuple[bytes, bool]] = []
    for name in ("stdout", "stderr"):
        encoded = _field(result, name, str)
        if len(encoded) > (max_output_bytes * 4) // 3 + 8:
            raise AgentProtocolError(f"{name} exceeds the output bound")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AgentProtocolError(f"{name} is not valid base64") from exc
        total = _field(result, f"{name}_bytes", int)
        truncated = total > len(data) or len(data) > max_output_bytes
        streams.append((data[:max_output_bytes], truncated))
    duration_ms = max(0, _field(result, "duration_ms", int))
    timed_out = _field(result, "timed_out", bool)
    return ExecOutput(
        exit_code=exit_code,
        stdout=streams[0][0],
        stderr=streams[1][0],
        stdout_truncated=streams[0][1],
        stderr_truncated=streams[1][1],
        timed_out=timed_out,
        duration_ms=duration_ms,
    )


def _field(result: dict[str, Any], name: str, kind: type[Any]) -> Any:
    value = result.get(name)
    if kind is int and isinstance(value, bool):
        raise AgentProtocolError(f"exec reply field {name} must be an integer")
    if not isinstance(value, kind):
        raise AgentProtocolError(f"exec reply field {name} must be {kind.__name__}")
    return value
