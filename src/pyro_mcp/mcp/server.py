"""``pyro mcp serve``: the MCP server a chat host starts over stdio.

Tools are thin: they validate arguments (pydantic, from the signatures),
call the SDK, and return structured content plus a short text rendering.
Every ``PyroError`` becomes a tool error with its actionable message; the
server never dies on bad input and writes nothing but protocol to stdout.
"""

# No `from __future__ import annotations`: the MCP SDK reads these signatures
# at runtime to build each tool's input and output schema.

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from pydantic import Field, ValidationError

from pyro_mcp import __version__, config
from pyro_mcp.errors import InvalidArgument, PyroError
from pyro_mcp.mcp import errors as model_errors
from pyro_mcp.mcp import profiles, schemas
from pyro_mcp.mcp.fast_start import configure_logging
from pyro_mcp.mcp.host_paths import HostPathPolicy
from pyro_mcp.mcp.warmup import BackgroundWarmUp, WarmUpAfterHandshake
from pyro_mcp.sdk import Pyro
from pyro_mcp.workspaces.project_source import ProjectSource
from pyro_mcp.workspaces.summary import render_journal_entry, render_summary

log = logging.getLogger("pyro.mcp")

# How much of each output stream the text rendering shows; the structured
# content carries up to pyro's full bound (1 MiB).
TEXT_STREAM_CHARS = 16 * 1024

WorkspaceId = Annotated[
    str, Field(description="The workspace_id returned by workspace_create (its name works too).")
]
VmId = Annotated[str, Field(description="The vm_id returned by vm_create.")]
Command = Annotated[
    str, Field(description="A shell command line, run with /bin/sh -c (pipes, &&, redirects work).")
]
Timeout = Annotated[
    float, Field(description="Kill the command after this many seconds.", gt=0, le=86400)
]
WorkspacePath = Annotated[
    str, Field(description="A path relative to /workspace (or absolute inside it).")
]
IncludeIgnored = Annotated[
    bool,
    Field(
        description="Also show what the project's .gitignore rules ignore (caches, build "
        "output, virtualenvs); left out by default for a workspace seeded from a Git project."
    ),
]

_F = TypeVar("_F", bound=Callable[..., Any])

# The one-shot VM of vm_run is deleted after this long whatever happens (unless
# the call gives its own ttl_seconds): a chat must not leave VMs behind.
VM_RUN_TTL_SECONDS = 600
# How often a running server looks for idle workspaces to suspend.
IDLE_CHECK_SECONDS = 30.0
# A tool whose arguments are narrower outside workspace-full is kept under this
# prefix (workspace_create: no secrets or network policy in core and the modes).
CORE_VARIANT = "core:"


class PyroMCPServer(MCPServer):
    """MCPServer that refuses arguments a tool does not have, instead of ignoring them."""

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
        return await super().call_tool(name, arguments, context)


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
    """
    names = profiles.tool_names(profile, mode)
    client = pyro or Pyro(progress=_log_progress)
    source = project or ProjectSource.none()
    roots = [source.root] if source.root is not None else []
    policy = HostPathPolicy([*roots, *allow_host_paths])
    if isinstance(default_ttl_seconds, bool) or not 0 <= default_ttl_seconds <= 365 * 86400:
        raise InvalidArgument("default_ttl_seconds", "must be 0 (never) up to a year in seconds")
    if (
        isinstance(idle_suspend_seconds, bool)
        or not 0 <= idle_suspend_seconds <= config.MAX_IDLE_SUSPEND_SECONDS
    ):
        raise InvalidArgument("idle_suspend_seconds", "must be 0 (never) up to a year in seconds")
    tools = _tools(
        client,
        source,
        environment,
        policy,
        default_ttl_seconds or None,
        idle_suspend_seconds,
        {
            "allow_private_egress": allow_private_egress,
            "allow_host_services": allow_host_services,
        },
    )
    purpose = f" Mode {mode}: {profiles.MODE_PURPOSE[mode]}." if mode else ""
    warm_up = BackgroundWarmUp(client, environment)
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
    full = profile == "workspace-full"
    for name in names:
        tool = tools[name] if full else tools.get(CORE_VARIANT + name, tools[name])
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


def _tools(
    pyro: Pyro,
    source: ProjectSource,
    default_environment: str,
    policy: HostPathPolicy,
    default_ttl: int | None,
    default_idle_suspend: int,
    operator_egress: dict[str, bool],
) -> dict[str, Callable[..., Any]]:
    """Every tool function, by name; profiles and modes pick from these."""

    def vm_run(
        command: Command,
        environment: Annotated[
            str, Field(description="debian:12-base, debian:12 or debian:12-build.")
        ] = default_environment,
        timeout_seconds: Timeout = config.DEFAULT_TIMEOUT_SECONDS,
        network: Annotated[
            bool,
            Field(description="Give the VM outbound network access (through the egress proxy)."),
        ] = False,
        vcpu_count: Annotated[int, Field(ge=1, le=8)] = config.DEFAULT_VCPU_COUNT,
        mem_mib: Annotated[int, Field(ge=128, le=16384)] = config.DEFAULT_MEM_MIB,
        ttl_seconds: Annotated[
            int,
            Field(
                description="The VM is deleted after this long whatever happens (more than "
                "timeout_seconds).",
                ge=2,
                le=86400,
            ),
        ] = VM_RUN_TTL_SECONDS,
    ) -> Annotated[CallToolResult, schemas.RunResult]:
        result = pyro.run_in_vm(
            environment,
            command,
            timeout_seconds=timeout_seconds,
            ttl_seconds=max(ttl_seconds, int(timeout_seconds) + 60)
            if ttl_seconds == VM_RUN_TTL_SECONDS
            else ttl_seconds,
            network=network,
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
        )
        return _reply(_render_command(result), result)

    # workspace_create's arguments, shared by its full and its core variant.
    EnvironmentArg = Annotated[
        str, Field(description="debian:12-base, debian:12 (git) or debian:12-build (compilers).")
    ]
    SeedPathArg = Annotated[
        str | None,
        Field(
            description="A host directory or .tar/.tgz to copy into /workspace "
            "instead of the project's files."
        ),
    ]
    NameArg = Annotated[
        str | None, Field(description="A unique name to refer to the workspace by.")
    ]
    LabelsArg = Annotated[dict[str, str] | None, Field(description="Key/value labels.")]
    TtlArg = Annotated[
        int | None,
        Field(
            description="Delete the workspace after this many seconds without activity "
            f"(default: {default_ttl or 'never'}"
            + (" s, set by the server)" if default_ttl else ", set by the server)"),
            ge=1,
        ),
    ]
    MaxLifetimeArg = Annotated[
        int | None,
        Field(description="Delete the workspace this many seconds after creation.", ge=1),
    ]
    IdleSuspendArg = Annotated[
        int | None,
        Field(
            description="Suspend the workspace after this many seconds without a call (its "
            "memory is saved; the next call resumes it as it was); 0: never "
            f"(default: {default_idle_suspend}, set by the server).",
            ge=0,
            le=config.MAX_IDLE_SUSPEND_SECONDS,
        ),
    ]
    VcpuArg = Annotated[int, Field(ge=1, le=8)]
    MemArg = Annotated[int, Field(ge=128, le=16384)]
    IdleSuspendPublishedArg = Annotated[
        bool,
        Field(
            description="Suspend when idle even while services publish ports: they stop "
            "answering until the next call resumes the workspace (default: such a "
            "workspace keeps running)."
        ),
    ]
    AllowHostsArg = Annotated[
        list[str] | None,
        Field(
            description="With network egress, the only hosts the sandbox may reach: "
            "'name', '*.name' (subdomains) or either with ':port', e.g. "
            "['pypi.example.org', '*.example.com', 'git.example.net:22']. Leave it out for "
            "any public host. Clients use the HTTP(S)_PROXY the sandbox sets; others get "
            "no network."
            + (
                " This server lets 'host.pyro.internal:PORT' reach the user's 127.0.0.1:PORT."
                if operator_egress["allow_host_services"]
                else ""
            )
        ),
    ]
    DenyHostsArg = Annotated[
        list[str] | None,
        Field(description="Hosts refused even if allowed (same patterns as allow_hosts)."),
    ]

    def workspace_create(
        environment: EnvironmentArg = default_environment,
        seed_path: SeedPathArg = None,
        name: NameArg = None,
        labels: LabelsArg = None,
        ttl_seconds: TtlArg = None,
        max_lifetime_seconds: MaxLifetimeArg = None,
        idle_suspend_seconds: IdleSuspendArg = None,
        vcpu_count: VcpuArg = config.DEFAULT_VCPU_COUNT,
        mem_mib: MemArg = config.DEFAULT_MEM_MIB,
        network: Annotated[
            bool, Field(description="Give the workspace outbound network access (egress).")
        ] = False,
        network_policy: Annotated[
            str | None,
            Field(
                description="off (no network), egress (outbound, through pyro's egress "
                "proxy) or egress+published-ports (services may also publish ports on the "
                "user's 127.0.0.1). Overrides network."
            ),
        ] = None,
        idle_suspend_published: IdleSuspendPublishedArg = False,
        allow_hosts: AllowHostsArg = None,
        allow_package_index: Annotated[
            bool,
            Field(
                description="Also allow the package index the user's machine installs from "
                "(pip, uv, npm settings; the sandbox's pip and npm already point there). "
                "Without allow_hosts: that index and nothing else."
            ),
        ] = False,
        deny_hosts: DenyHostsArg = None,
        secrets: Annotated[
            dict[str, str | schemas.SecretWithHosts] | None,
            Field(
                description="NAME: value secrets, kept out of every result (see secret_env). "
                "NAME: {value, hosts}: the sandbox only ever sees a placeholder, and the "
                "egress proxy puts the real value in its place in requests to those hosts."
            ),
        ] = None,
        secret_files: Annotated[
            dict[str, str | schemas.SecretFileWithHosts] | None,
            Field(
                description="NAME: host path secrets, read from allowed host paths; "
                "NAME: {path, hosts} binds one to hosts as in secrets."
            ),
        ] = None,
    ) -> Annotated[CallToolResult, schemas.Workspace]:
        literal: dict[str, Any] = {
            name: spec.model_dump() if isinstance(spec, schemas.SecretWithHosts) else spec
            for name, spec in (secrets or {}).items()
        }
        files: dict[str, Any] = {}
        for name, spec in (secret_files or {}).items():
            if isinstance(spec, schemas.SecretFileWithHosts):
                readable = policy.readable(spec.path, "secret_files")
                files[name] = {"path": readable, "hosts": spec.hosts}
            else:
                files[name] = policy.readable(spec, "secret_files")
        common: dict[str, Any] = dict(
            secrets=literal,
            secret_files=files,
            idle_suspend_published=idle_suspend_published,
            allow_hosts=allow_hosts,
            allow_package_index=allow_package_index,
            deny_hosts=deny_hosts or (),
            **operator_egress,
            network_policy=network_policy,
            name=name,
            labels=labels,
            ttl_seconds=ttl_seconds if ttl_seconds is not None else default_ttl,
            max_lifetime_seconds=max_lifetime_seconds,
            idle_suspend_seconds=(
                idle_suspend_seconds if idle_suspend_seconds is not None else default_idle_suspend
            ),
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
            network=network,
        )
        if seed_path is not None:
            seed = policy.readable(seed_path, "seed_path")
            workspace = pyro.create_workspace(environment, seed_path=seed, **common)
        elif source.root is not None:
            workspace = pyro.create_workspace(
                environment,
                project_path=source.root,
                origin=(source.origin_kind, source.origin_ref),
                **common,
            )
        else:
            workspace = pyro.create_workspace(environment, **common)
        return _reply(_render_workspace(workspace), workspace)

    def workspace_create_core(
        environment: EnvironmentArg = default_environment,
        seed_path: SeedPathArg = None,
        name: NameArg = None,
        labels: LabelsArg = None,
        ttl_seconds: TtlArg = None,
        max_lifetime_seconds: MaxLifetimeArg = None,
        idle_suspend_seconds: IdleSuspendArg = None,
        vcpu_count: VcpuArg = config.DEFAULT_VCPU_COUNT,
        mem_mib: MemArg = config.DEFAULT_MEM_MIB,
    ) -> Annotated[CallToolResult, schemas.Workspace]:
        # Secrets and network policy are workspace-full's (the 4.5 contract): a
        # core workspace has no network and no secrets.
        return workspace_create(
            environment=environment,
            seed_path=seed_path,
            name=name,
            labels=labels,
            ttl_seconds=ttl_seconds,
            max_lifetime_seconds=max_lifetime_seconds,
            idle_suspend_seconds=idle_suspend_seconds,
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
        )

    def workspace_list() -> Annotated[CallToolResult, schemas.WorkspaceList]:
        workspaces = pyro.list_workspaces()
        text = (
            "\n".join(f"{w['workspace_id']} {w['name'] or '-'} {w['state']}" for w in workspaces)
            or "no workspaces"
        )
        return _reply(text, {"workspaces": workspaces})

    def workspace_update(
        workspace_id: WorkspaceId,
        name: Annotated[str | None, Field(description="A new name.")] = None,
        clear_name: Annotated[bool, Field(description="Remove the workspace's name.")] = False,
        labels: Annotated[
            dict[str, str] | None, Field(description="Labels to add or change.")
        ] = None,
        clear_labels: Annotated[
            list[str] | None, Field(description="Label keys to remove.")
        ] = None,
        idle_suspend_seconds: IdleSuspendArg = None,
        idle_suspend_published: Annotated[
            bool | None,
            Field(
                description="Suspend when idle even while services publish ports (true), "
                "or keep such a workspace running (false)."
            ),
        ] = None,
        allow_hosts: Annotated[
            list[str] | None,
            Field(
                description="Hosts to add to the allow list (a workspace with open egress "
                "then reaches only these); effective for the next connection."
            ),
        ] = None,
        deny_hosts: Annotated[
            list[str] | None,
            Field(description="Hosts to refuse (taken off the allow list)."),
        ] = None,
    ) -> Annotated[CallToolResult, schemas.Workspace]:
        workspace = pyro.update_workspace(
            workspace_id,
            name=name,
            clear_name=clear_name,
            labels=labels,
            clear_labels=clear_labels or (),
            idle_suspend_seconds=idle_suspend_seconds,
            idle_suspend_published=idle_suspend_published,
            allow_hosts=allow_hosts or (),
            deny_hosts=deny_hosts or (),
        )
        return _reply(_render_workspace(workspace), workspace)

    def workspace_update_core(
        workspace_id: WorkspaceId,
        name: Annotated[str | None, Field(description="A new name.")] = None,
        clear_name: Annotated[bool, Field(description="Remove the workspace's name.")] = False,
        labels: Annotated[
            dict[str, str] | None, Field(description="Labels to add or change.")
        ] = None,
        clear_labels: Annotated[
            list[str] | None, Field(description="Label keys to remove.")
        ] = None,
        idle_suspend_seconds: IdleSuspendArg = None,
    ) -> Annotated[CallToolResult, schemas.Workspace]:
        # Host rules are workspace-full's, with the network they apply to.
        return workspace_update(
            workspace_id,
            name=name,
            clear_name=clear_name,
            labels=labels,
            clear_labels=clear_labels,
            idle_suspend_seconds=idle_suspend_seconds,
        )

    def workspace_status(workspace_id: WorkspaceId) -> Annotated[CallToolResult, schemas.Workspace]:
        workspace = pyro.status_workspace(workspace_id)
        return _reply(_render_workspace(workspace), workspace)

    def workspace_exec(
        workspace_id: WorkspaceId,
        command: Command,
        timeout_seconds: Timeout = config.DEFAULT_TIMEOUT_SECONDS,
        cwd: Annotated[
            str | None, Field(description="Directory to run in, relative to /workspace.")
        ] = None,
        secret_env: Annotated[
            list[str] | None,
            Field(description="Secrets to put in the environment: NAME or NAME:ENV_VAR."),
        ] = None,
    ) -> Annotated[CallToolResult, schemas.ExecResult]:
        result = pyro.exec_workspace(
            workspace_id,
            command,
            timeout_seconds=timeout_seconds,
            cwd=cwd,
            secret_env=secret_env or (),
        )
        return _reply(_render_command(result), result)

    def workspace_logs(workspace_id: WorkspaceId) -> Annotated[CallToolResult, schemas.Journal]:
        journal = pyro.logs_workspace(workspace_id)
        lines = [render_journal_entry(e) for e in journal["entries"]]
        return _reply("\n".join(lines) or "nothing has run yet", journal)

    def workspace_summary(
        workspace_id: WorkspaceId, include_ignored: IncludeIgnored = False
    ) -> Annotated[CallToolResult, schemas.Summary]:
        summary = pyro.summarize_workspace(workspace_id, include_ignored=include_ignored)
        return _reply(render_summary(summary), summary)

    def workspace_sync_push(
        workspace_id: WorkspaceId,
        source_path: Annotated[
            str, Field(description="A directory or .tar/.tgz on the user's machine.")
        ],
        dest: Annotated[str, Field(description="Where to put it, relative to /workspace.")] = ".",
    ) -> Annotated[CallToolResult, schemas.SyncResult]:
        result = pyro.push_workspace_sync(
            workspace_id, policy.readable(source_path, "source_path"), dest=dest
        )
        return _reply(f"pushed {result['files']} file(s) to /workspace/{result['dest']}", result)

    def workspace_file_list(
        workspace_id: WorkspaceId,
        path: WorkspacePath = ".",
        recursive: Annotated[
            bool, Field(description="Include everything below, not just direct entries.")
        ] = False,
    ) -> Annotated[CallToolResult, schemas.FileList]:
        listing = pyro.list_workspace_files(workspace_id, path, recursive=recursive)
        lines = [e["path"] + ("/" if e["type"] == "directory" else "") for e in listing["entries"]]
        return _reply("\n".join(lines) or "(empty)", listing)

    def workspace_file_read(
        workspace_id: WorkspaceId,
        path: WorkspacePath,
        max_bytes: Annotated[
            int, Field(description="Return at most this many bytes.", ge=1, le=4 * 1024 * 1024)
        ] = 65536,
    ) -> Annotated[CallToolResult, schemas.FileContent]:
        content = pyro.read_workspace_file(workspace_id, path, max_bytes=max_bytes)
        if content["binary"]:
            text = f"{content['path']} is a binary file of {content['size']} bytes (content_base64)"
        else:
            text = content["content"] + ("\n[truncated]" if content["truncated"] else "")
        return _reply(text, content)

    def workspace_file_write(
        workspace_id: WorkspaceId,
        path: WorkspacePath,
        text: Annotated[str, Field(description="The complete new text of the file.")],
    ) -> Annotated[CallToolResult, schemas.FileWritten]:
        result = pyro.write_workspace_file(workspace_id, path, text)
        return _reply(f"wrote {result['bytes']} bytes to {result['path']}", result)

    def workspace_patch_apply(
        workspace_id: WorkspaceId,
        patch: Annotated[str, Field(description="A unified diff (git diff / diff -u format).")],
    ) -> Annotated[CallToolResult, schemas.PatchResult]:
        result = pyro.apply_workspace_patch(workspace_id, patch)
        text = "\n".join(f"{f['status']}: {f['path']}" for f in result["files"])
        return _reply(text, result)

    def workspace_diff(
        workspace_id: WorkspaceId,
        format: Annotated[
            Literal["changes", "patch"],
            Field(
                description="`patch`: binary files as Git binary patches, so the whole "
                "patch goes through `git apply`; `changes` marks them in one line."
            ),
        ] = "changes",
        include_ignored: IncludeIgnored = False,
    ) -> Annotated[CallToolResult, schemas.Diff]:
        diff = pyro.diff_workspace(workspace_id, include_ignored=include_ignored, format=format)
        text = diff["patch"] if diff["changed"] else "no changes\n"
        if diff["ignored_count"]:
            text += (
                f"({diff['ignored_count']} path(s) the project ignores left out; "
                "include_ignored: true shows them)\n"
            )
        return _reply(text, diff)

    def workspace_export(
        workspace_id: WorkspaceId,
        path: WorkspacePath,
        output_path: Annotated[
            str,
            Field(
                description="A new path on the user's machine (never an existing file), inside "
                "the project or a directory the user allowed."
            ),
        ],
        include_ignored: IncludeIgnored = False,
    ) -> Annotated[CallToolResult, schemas.Exported]:
        target = policy.writable(output_path, "output_path")
        result = pyro.export_workspace(
            workspace_id, path, target, overwrite=False, include_ignored=include_ignored
        )
        text = f"exported {result['path']} to {result['output']}"
        if result["ignored_count"]:
            text += f" ({result['ignored_count']} ignored path(s) left out)"
        return _reply(text, result)

    def workspace_reset(
        workspace_id: WorkspaceId,
        snapshot: Annotated[
            str | None, Field(description="A snapshot name to go back to (default: baseline).")
        ] = None,
    ) -> Annotated[CallToolResult, schemas.Workspace]:
        workspace = pyro.reset_workspace(workspace_id, snapshot=snapshot)
        return _reply(
            f"reset to {snapshot or 'baseline'}\n" + _render_workspace(workspace), workspace
        )

    def workspace_disk_export(
        workspace_id: WorkspaceId,
        output_path: Annotated[str, Field(description="A new host path for the image.")],
    ) -> Annotated[CallToolResult, schemas.DiskImage]:
        target = policy.writable(output_path, "output_path")
        result = pyro.export_workspace_disk(workspace_id, target)
        return _reply(f"wrote {result['output']}", result)

    def workspace_disk_list(
        workspace_id: WorkspaceId,
        path: WorkspacePath = ".",
        recursive: Annotated[bool, Field(description="Include everything below.")] = False,
    ) -> Annotated[CallToolResult, schemas.FileList]:
        listing = pyro.list_workspace_disk(workspace_id, path, recursive=recursive)
        return _reply("\n".join(e["path"] for e in listing["entries"]) or "(empty)", listing)

    def workspace_disk_read(
        workspace_id: WorkspaceId,
        path: WorkspacePath,
        max_bytes: Annotated[
            int, Field(description="Return at most this many bytes.", ge=1, le=4 * 1024 * 1024)
        ] = 65536,
    ) -> Annotated[CallToolResult, schemas.DiskFile]:
        content = pyro.read_workspace_disk(workspace_id, path, max_bytes=max_bytes)
        text = (
            content["content"] if not content["binary"] else f"binary file, {content['size']} bytes"
        )
        return _reply(text, content)

    def snapshot_create(
        workspace_id: WorkspaceId,
        snapshot_name: Annotated[str, Field(description="A new snapshot name.")],
    ) -> Annotated[CallToolResult, schemas.Snapshot]:
        result = pyro.create_snapshot(workspace_id, snapshot_name)
        return _reply(f"saved snapshot {snapshot_name} ({result['bytes']} bytes)", result)

    def snapshot_list(workspace_id: WorkspaceId) -> Annotated[CallToolResult, schemas.SnapshotList]:
        result = pyro.list_snapshots(workspace_id)
        return _reply("\n".join(s["name"] for s in result["snapshots"]), result)

    def snapshot_delete(
        workspace_id: WorkspaceId,
        snapshot_name: Annotated[str, Field(description="The snapshot to delete.")],
    ) -> Annotated[CallToolResult, schemas.Snapshot]:
        result = pyro.delete_snapshot(workspace_id, snapshot_name)
        return _reply(f"deleted snapshot {snapshot_name}", result)

    def workspace_delete(workspace_id: WorkspaceId) -> Annotated[CallToolResult, schemas.Deleted]:
        result = pyro.delete_workspace(workspace_id)
        return _reply(f"deleted {result['workspace_id']}", result)

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
        return _reply(f"opened shell {shell['shell_id']}", shell)

    def shell_write(
        workspace_id: WorkspaceId,
        shell_id: ShellId,
        input: Annotated[str, Field(description="What to type.")],
        append_newline: Annotated[bool, Field(description="Press Enter after the input.")] = True,
    ) -> Annotated[CallToolResult, schemas.Shell]:
        result = pyro.write_shell(workspace_id, shell_id, input, newline=append_newline)
        return _reply(f"typed {result['bytes']} bytes", result)

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
        return _reply(result["output"] + note, result)

    def shell_signal(
        workspace_id: WorkspaceId,
        shell_id: ShellId,
        signal_name: Annotated[str, Field(description="INT, TERM, KILL, HUP or QUIT.")] = "INT",
    ) -> Annotated[CallToolResult, schemas.Shell]:
        result = pyro.signal_shell(workspace_id, shell_id, signal_name)
        return _reply(f"sent {result['signal']}", result)

    def shell_close(
        workspace_id: WorkspaceId, shell_id: ShellId
    ) -> Annotated[CallToolResult, schemas.Shell]:
        result = pyro.close_shell(workspace_id, shell_id)
        return _reply(f"closed shell {shell_id}", result)

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
        return _reply(_render_service(status), status)

    def service_list(workspace_id: WorkspaceId) -> Annotated[CallToolResult, schemas.ServiceList]:
        result = pyro.list_services(workspace_id)
        text = "\n".join(_render_service(s) for s in result["services"]) or "no services"
        return _reply(text, result)

    def service_status(
        workspace_id: WorkspaceId, service_name: ServiceName
    ) -> Annotated[CallToolResult, schemas.Service]:
        status = pyro.status_service(workspace_id, service_name)
        return _reply(_render_service(status), status)

    def service_logs(
        workspace_id: WorkspaceId,
        service_name: ServiceName,
        tail_lines: Annotated[
            int, Field(description="How many of the last lines.", ge=0, le=100000)
        ] = 200,
        all: Annotated[bool, Field(description="The whole kept log instead of the tail.")] = False,
    ) -> Annotated[CallToolResult, schemas.ServiceLogs]:
        result = pyro.logs_service(workspace_id, service_name, tail_lines=tail_lines, all=all)
        return _reply(result["log"] or "(no output)", result)

    def service_stop(
        workspace_id: WorkspaceId, service_name: ServiceName
    ) -> Annotated[CallToolResult, schemas.Service]:
        status = pyro.stop_service(workspace_id, service_name)
        return _reply(_render_service(status), status)

    def workspace_stop(
        workspace_id: WorkspaceId,
        discard_memory: Annotated[
            bool,
            Field(
                description="End every process instead of suspending: by default the memory "
                "is saved and workspace_start (or the next call) resumes it as it was."
            ),
        ] = False,
    ) -> Annotated[CallToolResult, schemas.Workspace]:
        workspace = pyro.stop_workspace(workspace_id, discard_memory=discard_memory)
        return _reply(_render_workspace(workspace), workspace)

    def workspace_fork(
        workspace_id: WorkspaceId,
        name: Annotated[
            str | None,
            Field(description="Name of the fork (with count > 1: name-1, name-2, ...)."),
        ] = None,
        count: Annotated[int, Field(description="How many forks.", ge=1, le=8)] = 1,
    ) -> Annotated[CallToolResult, schemas.Forked]:
        result = pyro.fork_workspace(workspace_id, name=name, count=count)
        lines = [f"forked {result['workspace_id']} in {result['fork_ms']} ms:"]
        lines += [f"  {f['workspace_id']} {f['name'] or ''}".rstrip() for f in result["forks"]]
        return _reply("\n".join(lines), result)

    def workspace_start(workspace_id: WorkspaceId) -> Annotated[CallToolResult, schemas.Workspace]:
        workspace = pyro.start_workspace(workspace_id)
        return _reply(_render_workspace(workspace), workspace)

    def vm_create(
        environment: Annotated[
            str, Field(description="debian:12-base, debian:12 or debian:12-build.")
        ] = default_environment,
        network: bool = False,
        ttl_seconds: Annotated[int | None, Field(ge=1)] = None,
    ) -> Annotated[CallToolResult, schemas.Vm]:
        vm = pyro.create_vm(environment, network=network, ttl_seconds=ttl_seconds)
        return _reply(f"{vm['vm_id']} {vm['state']}", vm)

    def vm_start(vm_id: VmId) -> Annotated[CallToolResult, schemas.Vm]:
        vm = pyro.start_vm(vm_id)
        return _reply(f"{vm['vm_id']} {vm['state']}", vm)

    def vm_exec(
        vm_id: VmId, command: Command, timeout_seconds: Timeout = config.DEFAULT_TIMEOUT_SECONDS
    ) -> Annotated[CallToolResult, schemas.VmExecResult]:
        result = pyro.exec_vm(vm_id, command, timeout_seconds=timeout_seconds)
        return _reply(_render_command(result), result)

    def vm_stop(vm_id: VmId) -> Annotated[CallToolResult, schemas.Vm]:
        vm = pyro.stop_vm(vm_id)
        return _reply(f"{vm['vm_id']} {vm['state']}", vm)

    def vm_delete(vm_id: VmId) -> Annotated[CallToolResult, schemas.Deleted]:
        result = pyro.delete_vm(vm_id)
        return _reply(f"deleted {vm_id}", result)

    def vm_status(vm_id: VmId) -> Annotated[CallToolResult, schemas.Vm]:
        vm = pyro.status_vm(vm_id)
        return _reply(f"{vm['vm_id']} {vm['state']}", vm)

    def vm_list() -> Annotated[CallToolResult, schemas.VmList]:
        vms = pyro.list_vms()
        return _reply(
            "\n".join(f"{v['vm_id']} {v['state']}" for v in vms) or "no VMs", {"vms": vms}
        )

    def vm_list_environments() -> Annotated[CallToolResult, schemas.EnvironmentList]:
        environments = pyro.list_environments()
        text = "\n".join(
            f"{e['name']}: {e['description']} ({'installed' if e['installed'] else 'not built'})"
            for e in environments
        )
        return _reply(text, {"environments": environments})

    def vm_network_info(vm_id: VmId) -> Annotated[CallToolResult, schemas.NetworkInfo]:
        info = pyro.network_info_vm(vm_id)
        return _reply(f"{vm_id}: {info['mode']}", info)

    def vm_reap_expired() -> Annotated[CallToolResult, schemas.Reaped]:
        result = pyro.reap_expired()
        return _reply(f"reaped {len(result['reaped'])} VM(s)", result)

    functions: list[Callable[..., Any]] = [
        vm_run,
        workspace_create,
        workspace_list,
        workspace_update,
        workspace_status,
        workspace_exec,
        workspace_logs,
        workspace_summary,
        workspace_sync_push,
        workspace_file_list,
        workspace_file_read,
        workspace_file_write,
        workspace_patch_apply,
        workspace_diff,
        workspace_export,
        workspace_reset,
        workspace_delete,
        workspace_stop,
        workspace_start,
        workspace_fork,
        vm_create,
        vm_start,
        vm_exec,
        vm_stop,
        vm_delete,
        vm_status,
        vm_list,
        vm_list_environments,
        vm_network_info,
        vm_reap_expired,
        shell_open,
        shell_read,
        shell_write,
        shell_signal,
        shell_close,
        service_start,
        service_list,
        service_status,
        service_logs,
        service_stop,
        snapshot_create,
        snapshot_list,
        snapshot_delete,
        workspace_disk_export,
        workspace_disk_list,
        workspace_disk_read,
    ]
    tools = {fn.__name__: _as_tool_errors(fn) for fn in functions}
    tools[CORE_VARIANT + "workspace_create"] = _as_tool_errors(workspace_create_core)
    tools[CORE_VARIANT + "workspace_update"] = _as_tool_errors(workspace_update_core)
    return tools


def _as_tool_errors(fn: _F) -> _F:
    """A ``PyroError`` reaches the model as a tool error carrying its message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PyroError as exc:
            raise ToolError(model_errors.for_model(f"{type(exc).__name__}: {exc}")) from exc

    return wrapper  # type: ignore[return-value]


def _reply(text: str, data: dict[str, Any]) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def _render_command(result: dict[str, Any]) -> str:
    head = f"exit_code={result['exit_code']} duration_ms={result['duration_ms']}"
    if result["timed_out"]:
        head += " TIMED OUT (killed)"
    parts = [head]
    for stream in ("stdout", "stderr"):
        text = result[stream]
        if not text:
            continue
        note = ""
        if len(text) > TEXT_STREAM_CHARS:
            text = text[-TEXT_STREAM_CHARS:]
            note = f" (last {TEXT_STREAM_CHARS} characters; the structured result has more)"
        elif result[f"{stream}_truncated"]:
            note = " (truncated at 1 MiB)"
        parts.append(f"--- {stream}{note} ---\n{text}")
    return "\n".join(parts)


def _render_service(status: dict[str, Any]) -> str:
    line = f"service {status['name']}: {status['state']}"
    if status.get("exit_code") is not None:
        line += f" (exit code {status['exit_code']})"
    if status.get("reason"):
        line += f": {status['reason']}"
    for port in status.get("published_ports", []):
        address = f"http://{port['host']}:{port['host_port']}"
        line += f"; published at {address} (guest port {port['guest_port']})"
    return line


def _render_workspace(workspace: dict[str, Any]) -> str:
    seed = workspace["seed"]
    origin = workspace["origin_kind"] + (
        f" {workspace['origin_ref']}" if workspace["origin_ref"] else ""
    )
    line = (
        f"workspace {workspace['workspace_id']} ({workspace['name'] or 'unnamed'}): "
        f"{workspace['state']}, "
        f"{workspace['environment']}, files from {origin} ({seed['file_count']} files)"
    )
    if workspace.get("last_error"):
        line += f"\nlast error: {workspace['last_error']}"
    return line


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
