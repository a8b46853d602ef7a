"""The shell and service tools."""

# No future annotations: the MCP SDK reads the signatures at run time.
from collections.abc import Callable
from typing import Annotated, Any

from mcp_types import CallToolResult
from pydantic import Field

from pyro_mcp.mcp import schemas
from pyro_mcp.mcp.tooling import (
    Command,
    ToolContext,
    WorkspaceId,
    render_service,
    reply,
)


def tools(ctx: ToolContext) -> dict[str, Callable[..., Any]]:
    """The shell and service tools, by name (core variants under ``CORE_VARIANT``)."""
    pyro = ctx.pyro

    ShellId = Annotated[str, Field(description="The shell_id returned by shell_open.")]
    ServiceName = Annotated[str, Field(description="The service's name.")]

    def shell_open(
        workspace_id: WorkspaceId,
        cwd: Annotated[
            str | None, Field(description="Directory to start in, relative to /workspace.")
        ] = None,
        cols: Annotated[int, Field(description="Terminal width.", ge=10, le=1000)] = 120,
        rows: Annotated[int, Field(description="Terminal height.", ge=2, le=500)] = 40,
        secret_env: Annotated[
            list[str] | None,
            Field(description="Secrets to put in the environment: NAME or NAME:ENV_VAR."),
        ] = None,
    ) -> Annotated[CallToolResult, schemas.Shell]:
        shell = pyro.open_shell(
            workspace_id, cwd=cwd, cols=cols, rows=rows, secret_env=secret_env or ()
        )
        return reply(f"opened shell {shell['shell_id']}", shell)

    def shell_write(
        workspace_id: WorkspaceId,
        shell_id: ShellId,
        input: Annotated[str, Field(description="What to type.")],
        append_newline: Annotated[bool, Field(description="Press Enter after the input.")] = True,
    ) -> Annotated[CallToolResult, schemas.Shell]:
        result = pyro.write_shell(workspace_id, shell_id, input, newline=append_newline)
        return reply(f"typed {result['bytes']} bytes", result)

    def shell_read(
        workspace_id: WorkspaceId,
        shell_id: ShellId,
        cursor: Annotated[
            int | None, Field(description="Read from here (next_cursor of the last read).", ge=0)
        ] = None,
        plain: Annotated[
            bool, Field(description="Render as plain text (no colours, CR applied).")
        ] = True,
        wait_for_idle_ms: Annotated[
            int | None, Field(description="Wait until output is quiet this long.", ge=0, le=60000)
        ] = 300,
        max_wait_ms: Annotated[
            int, Field(description="Never wait longer than this.", ge=0, le=120000)
        ] = 10000,
        max_chars: Annotated[
            int, Field(description="Return at most this much output.", ge=1, le=1048576)
        ] = 65536,
    ) -> Annotated[CallToolResult, schemas.ShellOutput]:
        result = pyro.read_shell(
            workspace_id,
            shell_id,
            cursor=cursor,
            plain=plain,
            wait_for_idle_ms=wait_for_idle_ms,
            max_wait_ms=max_wait_ms,
            max_chars=max_chars,
        )
        note = (
            f"\n[next_cursor={result['next_cursor']}"
            + (" closed" if result["closed"] else "")
            + "]"
        )
        return reply(result["output"] + note, result)

    def shell_signal(
        workspace_id: WorkspaceId,
        shell_id: ShellId,
        signal_name: Annotated[str, Field(description="INT, TERM, KILL, HUP or QUIT.")] = "INT",
    ) -> Annotated[CallToolResult, schemas.Shell]:
        result = pyro.signal_shell(workspace_id, shell_id, signal_name)
        return reply(f"sent {result['signal']}", result)

    def shell_close(
        workspace_id: WorkspaceId, shell_id: ShellId
    ) -> Annotated[CallToolResult, schemas.Shell]:
        result = pyro.close_shell(workspace_id, shell_id)
        return reply(f"closed shell {shell_id}", result)

    def service_start(
        workspace_id: WorkspaceId,
        service_name: ServiceName,
        command: Command,
        cwd: Annotated[
            str | None, Field(description="Directory to run in, relative to /workspace.")
        ] = None,
        ready_http: Annotated[
            str | None, Field(description="Ready when this URL (inside the VM) answers 2xx/3xx.")
        ] = None,
        ready_tcp: Annotated[
            str | None,
            Field(description="Ready when HOST:PORT (inside the VM) accepts connections."),
        ] = None,
        ready_file: Annotated[
            str | None, Field(description="Ready when this file exists (relative to cwd).")
        ] = None,
        ready_command: Annotated[
            str | None, Field(description="Ready when this shell command exits 0.")
        ] = None,
        ready_timeout_seconds: Annotated[
            float,
            Field(description="Give up (and stop the service) after this long.", gt=0, le=3600),
        ] = 60.0,
        ready_interval_ms: Annotated[
            int, Field(description="How often to check readiness.", ge=10, le=60000)
        ] = 200,
        published_ports: Annotated[
            list[str] | None,
            Field(description="Ports to publish on the user's 127.0.0.1: [HOST_PORT:]GUEST_PORT."),
        ] = None,
        secret_env: Annotated[
            list[str] | None,
            Field(description="Secrets to put in the environment: NAME or NAME:ENV_VAR."),
        ] = None,
    ) -> Annotated[CallToolResult, schemas.Service]:
        status = pyro.start_service(
            workspace_id,
            service_name,
            command,
            cwd=cwd,
            ready_http=ready_http,
            ready_tcp=ready_tcp,
            ready_file=ready_file,
            ready_command=ready_command,
            ready_timeout_seconds=ready_timeout_seconds,
            ready_interval_ms=ready_interval_ms,
            published_ports=published_ports or (),
            secret_env=secret_env or (),
        )
        return reply(render_service(status), status)

    def service_list(workspace_id: WorkspaceId) -> Annotated[CallToolResult, schemas.ServiceList]:
        result = pyro.list_services(workspace_id)
        text = "\n".join(render_service(s) for s in result["services"]) or "no services"
        return reply(text, result)

    def service_status(
        workspace_id: WorkspaceId, service_name: ServiceName
    ) -> Annotated[CallToolResult, schemas.Service]:
        status = pyro.status_service(workspace_id, service_name)
        return reply(render_service(status), status)

    def service_logs(
        workspace_id: WorkspaceId,
        service_name: ServiceName,
        tail_lines: Annotated[
            int, Field(description="How many of the last lines.", ge=0, le=100000)
        ] = 200,
        all: Annotated[bool, Field(description="The whole kept log instead of the tail.")] = False,
    ) -> Annotated[CallToolResult, schemas.ServiceLogs]:
        result = pyro.logs_service(workspace_id, service_name, tail_lines=tail_lines, all=all)
        return reply(result["stdout"] or "(no output)", result)

    def service_stop(
        workspace_id: WorkspaceId, service_name: ServiceName
    ) -> Annotated[CallToolResult, schemas.Service]:
        status = pyro.stop_service(workspace_id, service_name)
        return reply(render_service(status), status)

    return {
        "shell_open": shell_open,
        "shell_write": shell_write,
        "shell_read": shell_read,
        "shell_signal": shell_signal,
        "shell_close": shell_close,
        "service_start": service_start,
        "service_list": service_list,
        "service_status": service_status,
        "service_logs": service_logs,
        "service_stop": service_stop,
    }
