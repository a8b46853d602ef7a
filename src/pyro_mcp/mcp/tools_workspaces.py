"""The workspace lifecycle tools: create, update, status, exec, logs, summary, stop, fork...

Also list, reset, start, snapshots and delete.
"""

# No future annotations: the MCP SDK reads the signatures at run time.
from collections.abc import Callable
from typing import Annotated, Any

from mcp_types import CallToolResult
from pydantic import Field

from pyro_mcp import config
from pyro_mcp.mcp import schemas
from pyro_mcp.mcp.tooling import (
    CORE_VARIANT,
    Command,
    IncludeIgnored,
    Timeout,
    ToolContext,
    WorkspaceId,
    render_command,
    render_workspace,
    reply,
)
from pyro_mcp.render import render_journal_entry, render_summary


def tools(ctx: ToolContext) -> dict[str, Callable[..., Any]]:
    """The workspace tools, by name (core variants under ``CORE_VARIANT``)."""
    pyro = ctx.pyro
    source = ctx.source
    policy = ctx.policy
    default_environment = ctx.default_environment
    default_ttl = ctx.default_ttl
    default_idle_suspend = ctx.default_idle_suspend
    operator_egress = ctx.operator_egress

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
    # workspace_update's, shared by its full and its core variant.
    NewNameArg = Annotated[str | None, Field(description="A new name.")]
    ClearNameArg = Annotated[bool, Field(description="Remove the workspace's name.")]
    NewLabelsArg = Annotated[dict[str, str] | None, Field(description="Labels to add or change.")]
    ClearLabelsArg = Annotated[list[str] | None, Field(description="Label keys to remove.")]
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
            # A checkout gives its tracked files; a plain folder, all of it.
            workspace = pyro.create_workspace(
                environment,
                project_path=source.root if source.tracked else None,
                seed_path=None if source.tracked else source.root,
                origin=(source.origin_kind, source.origin_ref),
                **common,
            )
        else:
            workspace = pyro.create_workspace(environment, **common)
        return reply(render_workspace(workspace), workspace)

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
        listed = pyro.list_workspaces()
        text = (
            "\n".join(
                f"{w['workspace_id']} {w['name'] or '-'} {w['state']}" for w in listed["workspaces"]
            )
            or "no workspaces"
        )
        return reply(text, listed)

    def workspace_update(
        workspace_id: WorkspaceId,
        name: NewNameArg = None,
        clear_name: ClearNameArg = False,
        labels: NewLabelsArg = None,
        clear_labels: ClearLabelsArg = None,
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
        return reply(render_workspace(workspace), workspace)

    def workspace_update_core(
        workspace_id: WorkspaceId,
        name: NewNameArg = None,
        clear_name: ClearNameArg = False,
        labels: NewLabelsArg = None,
        clear_labels: ClearLabelsArg = None,
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
        return reply(render_workspace(workspace), workspace)

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
        return reply(render_command(result), result)

    def workspace_logs(workspace_id: WorkspaceId) -> Annotated[CallToolResult, schemas.Journal]:
        journal = pyro.logs_workspace(workspace_id)
        lines = [render_journal_entry(e) for e in journal["entries"]]
        return reply("\n".join(lines) or "nothing has run yet", journal)

    def workspace_summary(
        workspace_id: WorkspaceId, include_ignored: IncludeIgnored = False
    ) -> Annotated[CallToolResult, schemas.Summary]:
        summary = pyro.summarize_workspace(workspace_id, include_ignored=include_ignored)
        return reply(render_summary(summary), summary)

    def workspace_reset(
        workspace_id: WorkspaceId,
        snapshot: Annotated[
            str | None, Field(description="A snapshot name to go back to (default: baseline).")
        ] = None,
    ) -> Annotated[CallToolResult, schemas.Workspace]:
        workspace = pyro.reset_workspace(workspace_id, snapshot=snapshot)
        return reply(
            f"reset to {snapshot or 'baseline'}\n" + render_workspace(workspace), workspace
        )

    def snapshot_create(
        workspace_id: WorkspaceId,
        snapshot_name: Annotated[str, Field(description="A new snapshot name.")],
    ) -> Annotated[CallToolResult, schemas.Snapshot]:
        result = pyro.create_snapshot(workspace_id, snapshot_name)
        return reply(f"saved snapshot {snapshot_name} ({result['bytes']} bytes)", result)

    def snapshot_list(workspace_id: WorkspaceId) -> Annotated[CallToolResult, schemas.SnapshotList]:
        result = pyro.list_snapshots(workspace_id)
        return reply("\n".join(s["name"] for s in result["snapshots"]), result)

    def snapshot_delete(
        workspace_id: WorkspaceId,
        snapshot_name: Annotated[str, Field(description="The snapshot to delete.")],
    ) -> Annotated[CallToolResult, schemas.Snapshot]:
        result = pyro.delete_snapshot(workspace_id, snapshot_name)
        return reply(f"deleted snapshot {snapshot_name}", result)

    def workspace_delete(workspace_id: WorkspaceId) -> Annotated[CallToolResult, schemas.Deleted]:
        result = pyro.delete_workspace(workspace_id)
        return reply(f"deleted {result['workspace_id']}", result)

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
        return reply(render_workspace(workspace), workspace)

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
        return reply("\n".join(lines), result)

    def workspace_start(workspace_id: WorkspaceId) -> Annotated[CallToolResult, schemas.Workspace]:
        workspace = pyro.start_workspace(workspace_id)
        return reply(render_workspace(workspace), workspace)

    return {
        "workspace_create": workspace_create,
        "workspace_list": workspace_list,
        "workspace_update": workspace_update,
        "workspace_status": workspace_status,
        "workspace_exec": workspace_exec,
        "workspace_logs": workspace_logs,
        "workspace_summary": workspace_summary,
        "workspace_reset": workspace_reset,
        "snapshot_create": snapshot_create,
        "snapshot_list": snapshot_list,
        "snapshot_delete": snapshot_delete,
        "workspace_delete": workspace_delete,
        "workspace_stop": workspace_stop,
        "workspace_fork": workspace_fork,
        "workspace_start": workspace_start,
        CORE_VARIANT + "workspace_create": workspace_create_core,
        CORE_VARIANT + "workspace_update": workspace_update_core,
    }
