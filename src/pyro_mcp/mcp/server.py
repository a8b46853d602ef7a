"""``pyro mcp serve``: the MCP server a chat host starts over stdio.

Tools are thin: they validate arguments (pydantic, from the signatures),
call the SDK, and return structured content plus a short text rendering.
Every ``PyroError`` becomes a tool error with its actionable message; the
server never dies on bad input and writes nothing but protocol to stdout.
"""

# No `from __future__ import annotations`: the MCP SDK reads these signatures
# at runtime to build each tool's input and output schema.

import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult
from pydantic import ValidationError

from pyro_mcp import config
from pyro_mcp.errors import InvalidArgument, PyroError
from pyro_mcp.mcp import errors as model_errors
from pyro_mcp.mcp import profiles, tools_files, tools_processes, tools_vms, tools_workspaces
from pyro_mcp.mcp.fast_start import configure_logging
from pyro_mcp.mcp.host_paths import HostPathPolicy
from pyro_mcp.mcp.tooling import CORE_VARIANT, ToolContext
from pyro_mcp.mcp.warmup import BackgroundWarmUp, WarmUpAfterHandshake
from pyro_mcp.sdk import Pyro
from pyro_mcp.version import __version__
from pyro_mcp.workspaces.project_source import ProjectSource

log = logging.getLogger("pyro.mcp")

_F = TypeVar("_F", bound=Callable[..., Any])

# How often a running server looks for idle workspaces to suspend.
IDLE_CHECK_SECONDS = 30.0


class ToolOutcome(tuple[Any, Any]):
    """A tool's result as a program calling ``server.call_tool`` gets it:
    ``(content, structured)``, as pyro-mcp 4.5's scripts unpack it, and the
    MCP ``CallToolResult``'s ``content``, ``structured_content``, ``is_error``."""

    result: CallToolResult

    def __new__(cls, result: CallToolResult) -> "ToolOutcome":
        outcome = super().__new__(cls, (result.content, result.structured_content))
        outcome.result = result
        return outcome

    @property
    def content(self) -> Any:
        return self.result.content

    @property
    def structured_content(self) -> Any:
        return self.result.structured_content

    @property
    def is_error(self) -> bool:
        return bool(self.result.is_error)


class PyroMCPServer(MCPServer):
    """MCPServer that refuses arguments a tool does not have, instead of ignoring
    them; called directly (no request context), a tool's result is a ``ToolOutcome``."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        tool = self._tool_manager.get_tool(name)
        if tool is not None:
            known = set(tool.parameters.get("properties", {}))
            unknown = sorted(set(arguments) - known)
            if unknown:
                raise ToolError(
                    f"{name} has no argument(s) {', '.join(unknown)}; "
                    f"its arguments are: {', '.join(sorted(known)) or 'none'}"
                )
            # Validated here first so a bad argument reads as one line naming it
            # and what is expected, not pydantic's report with a web link.
            try:
                tool.fn_metadata.validate_arguments(arguments)
            except ValidationError as exc:
                raise ToolError(model_errors.validation_message(name, exc.errors())) from exc
        result = await super().call_tool(name, arguments, context)
        if context is None and isinstance(result, CallToolResult):
            return ToolOutcome(result)  # a program's own call, not a client's request
        return result


def create_server(
    profile: str | None = None,
    mode: str | None = None,
    *,
    pyro: Pyro | None = None,
    project: ProjectSource | None = None,
    environment: str = config.DEFAULT_ENVIRONMENT,
    allow_host_paths: Sequence[Path] = (),
    default_ttl_seconds: int = config.MCP_DEFAULT_TTL_SECONDS,
    idle_suspend_seconds: int = config.DEFAULT_IDLE_SUSPEND_SECONDS,
    allow_private_egress: bool = False,
    allow_host_services: bool = False,
    idle_timer: bool = True,
    host_path_refusal: str | None = None,
) -> MCPServer:
    """The pyro MCP server with the tools of ``profile`` (or ``mode``).

    Args:
        profile: ``vm-run``, ``workspace-core`` (default) or ``workspace-full``.
        mode: ``repro-fix``, ``inspect``, ``cold-start`` or ``review-eval``; a
            narrower tool set with job-specific descriptions (give a mode or a
            profile, not both).
        pyro: the SDK object to use (default: ``Pyro()`` with progress on stderr).
        project: the default seed of ``workspace_create`` (default: none).
        environment: the default environment of ``workspace_create`` and ``vm_run``.
        allow_host_paths: directories, besides the project root, that host-path
            arguments (seed_path, sync sources, export outputs) may name.
        default_ttl_seconds: the idle TTL of workspaces created without one (a
            chat that forgets a workspace must not hold a guest forever); 0: never.
        idle_suspend_seconds: how long a workspace created without its own value
            may sit idle before it is suspended (memory saved, no host memory
            held; the next call resumes it); 0: never. The server checks on a timer.
        allow_private_egress, allow_host_services: the operator's egress switches
            for every workspace this server creates (never tool arguments): reach
            private addresses; reach this host's 127.0.0.1 as host.pyro.internal.
        idle_timer: suspend idle workspaces and reap expired ones on a timer;
            False where the engine's owner does that (``pyro server``).
        host_path_refusal: refuse every host-path argument with this reason
            (``pyro server``'s /mcp, whose machine is not the caller's).
    """
    names = profiles.tool_names(profile, mode)
    client = pyro or Pyro(progress=_log_progress)
    source = project or ProjectSource.none()
    roots = [source.root] if source.root is not None else []
    policy = HostPathPolicy([*roots, *allow_host_paths], refusal=host_path_refusal)
    if isinstance(default_ttl_seconds, bool) or not 0 <= default_ttl_seconds <= 365 * 86400:
        raise InvalidArgument("default_ttl_seconds", "must be 0 (never) up to a year in seconds")
    if (
        isinstance(idle_suspend_seconds, bool)
        or not 0 <= idle_suspend_seconds <= config.MAX_IDLE_SUSPEND_SECONDS
    ):
        raise InvalidArgument("idle_suspend_seconds", "must be 0 (never) up to a year in seconds")
    tools = _tools(
        ToolContext(
            pyro=client,
            source=source,
            default_environment=environment,
            policy=policy,
            default_ttl=default_ttl_seconds or None,
            default_idle_suspend=idle_suspend_seconds,
            operator_egress={
                "allow_private_egress": allow_private_egress,
                "allow_host_services": allow_host_services,
            },
        )
    )
    purpose = f" Mode {mode}: {profiles.MODE_PURPOSE[mode]}." if mode else ""
    full = profile == "workspace-full"
    served = {
        name: tools[name] if full else tools.get(CORE_VARIANT + name, tools[name]) for name in names
    }
    # Warm every guest shape the served tools can create: with a NIC too when a
    # tool takes a network argument.
    network = any(
        {"network", "network_policy"} & set(inspect.signature(tool).parameters)
        for tool in served.values()
    )
    warm_up = BackgroundWarmUp(client, environment, network=network)
    if idle_timer:
        IdleSuspender(client).start()
    server = PyroMCPServer(
        "pyro",
        version=__version__,
        middleware=[WarmUpAfterHandshake(warm_up)],
        instructions=(
            "pyro gives you a disposable Linux microVM sandbox. Create a workspace (its "
            "/workspace holds the project's files), work in it with the workspace tools, "
            "review with workspace_diff/workspace_summary, and delete it when done. Nothing "
            "you run touches the user's machine." + purpose
        ),
    )
    for name, tool in served.items():
        server.add_tool(tool, name=name, description=profiles.describe(name, mode))
    return server


class IdleSuspender(threading.Thread):
    """Every ``IDLE_CHECK_SECONDS``: suspend idle workspaces and reap expired ones.

    A chat that walks away leaves no guest holding memory: its workspaces are
    suspended after their ``idle_suspend_seconds``, and the next call resumes them.
    """

    def __init__(self, pyro: Pyro) -> None:
        super().__init__(name="pyro-idle-suspend", daemon=True)
        self.pyro = pyro

    def run(self) -> None:
        while True:
            time.sleep(IDLE_CHECK_SECONDS)
            try:
                suspended = self.pyro.suspend_idle_workspaces()["suspended"]
                self.pyro.list_workspaces()  # reaps expired workspaces
            except Exception as exc:  # never let the timer die
                log.warning("idle check failed: %s", exc)
                continue
            if suspended:
                log.info("suspended idle workspaces: %s", ", ".join(suspended))


def _tools(ctx: ToolContext) -> dict[str, Callable[..., Any]]:
    """Every tool function, by name; profiles and modes pick from these."""
    functions: dict[str, Callable[..., Any]] = {}
    for group in (tools_vms, tools_workspaces, tools_files, tools_processes):
        functions.update(group.tools(ctx))
    return {name: _as_tool_errors(fn) for name, fn in functions.items()}


def _as_tool_errors(fn: _F) -> _F:
    """A ``PyroError`` reaches the model as a tool error carrying its message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PyroError as exc:
            raise ToolError(model_errors.for_model(f"{type(exc).__name__}: {exc}")) from exc

    return wrapper  # type: ignore[return-value]


def _log_progress(message: str) -> None:
    log.info(message)


def serve(
    server: MCPServer, log_file: Path | None = None, *, serving: str = "", verbose: bool = False
) -> None:
    """Run ``server`` on stdio. Logs go to stderr (or ``log_file``), never stdout.

    ``pyro mcp serve`` itself goes through ``fast_start.serve``, which answers
    the handshake before the SDK has loaded; this is the plain path for SDK users.
    """
    configure_logging(log_file, verbose, serving)
    server.run()
