"""A command for the guest: its arguments checked on the way in, its reply on the way out."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from pyro_mcp import config
from pyro_mcp.agent.client import parse_exec_result
from pyro_mcp.errors import InvalidArgument
from pyro_mcp.models import ExecResult

MAX_TIMEOUT_SECONDS = 24 * 3600


def exec_result(reply: dict[str, Any]) -> ExecResult:
    """A guest's exec reply, checked and bounded (``AgentProtocolError`` otherwise)."""
    output = parse_exec_result(reply, config.MAX_OUTPUT_BYTES)
    return ExecResult(
        exit_code=output.exit_code,
        stdout=output.stdout.decode("utf-8", errors="replace"),
        stderr=output.stderr.decode("utf-8", errors="replace"),
        timed_out=output.timed_out,
        stdout_truncated=output.stdout_truncated,
        stderr_truncated=output.stderr_truncated,
        duration_ms=output.duration_ms,
    )


def exec_args(
    command: str | Sequence[str],
    timeout_seconds: float,
    env: dict[str, str] | None,
    cwd: str | None,
    secret_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The guest's exec arguments, checked (``InvalidArgument`` naming the field)."""
    args: dict[str, Any] = {
        "max_output_bytes": config.MAX_OUTPUT_BYTES,
    }
    if isinstance(command, str):
        if not command.strip():
            raise InvalidArgument("command", "must not be empty")
        args["shell"] = command
    else:
        argv = list(command)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise InvalidArgument(
                "command", "must be a shell string or a non-empty list of strings"
            )
        args["argv"] = argv
    if isinstance(timeout_seconds, bool) or not 0 < float(timeout_seconds) <= MAX_TIMEOUT_SECONDS:
        raise InvalidArgument(
            "timeout_seconds", f"must be more than 0 and at most {MAX_TIMEOUT_SECONDS}"
        )
    args["timeout_seconds"] = float(timeout_seconds)
    if env:
        for name, value in env.items():
            if not name or "=" in name or not isinstance(value, str):
                raise InvalidArgument("env", f"{name!r} is not a valid variable name/value")
        args["env"] = dict(env)
    if cwd is not None:
        args["cwd"] = cwd
    if secret_env:
        args["secret_env"] = dict(secret_env)
    return args


def describe_command(command: str | Sequence[str]) -> str:
    """A command as one readable line (for journals and messages)."""
    return command if isinstance(command, str) else shlex.join(command)
