"""The raw VM tools and the one-shot ``vm_run``."""

# No future annotations: the MCP SDK reads the signatures at run time.
from collections.abc import Callable
from typing import Annotated, Any

from mcp_types import CallToolResult
from pydantic import Field

from pyro_mcp import config
from pyro_mcp.mcp import schemas
from pyro_mcp.mcp.tooling import (
    Command,
    Timeout,
    ToolContext,
    VmId,
    render_command,
    reply,
)

# The one-shot VM of vm_run is deleted after this long whatever happens (unless
# the call gives its own ttl_seconds): a chat must not leave VMs behind.
VM_RUN_TTL_SECONDS = config.DEFAULT_VM_TTL_SECONDS


def tools(ctx: ToolContext) -> dict[str, Callable[..., Any]]:
    """The VM tools, by name (core variants under ``CORE_VARIANT``)."""
    pyro = ctx.pyro
    default_environment = ctx.default_environment

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
        return reply(render_command(result), result)

    def vm_create(
        environment: Annotated[
            str, Field(description="debian:12-base, debian:12 or debian:12-build.")
        ] = default_environment,
        network: bool = False,
        ttl_seconds: Annotated[
            int | None,
            Field(
                ge=1,
                description="Seconds the VM may live before it is reaped (pyro-mcp 4.5's "
                "default, 600), so a VM a chat forgets does not run on; null: no limit.",
            ),
        ] = config.DEFAULT_VM_TTL_SECONDS,
        vcpu_count: Annotated[int, Field(ge=1, le=8)] = config.DEFAULT_VCPU_COUNT,
        mem_mib: Annotated[int, Field(ge=128, le=16384)] = config.DEFAULT_MEM_MIB,
    ) -> Annotated[CallToolResult, schemas.Vm]:
        vm = pyro.create_vm(
            environment,
            network=network,
            ttl_seconds=ttl_seconds,
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
        )
        return reply(f"{vm['vm_id']} {vm['state']}", vm)

    def vm_start(vm_id: VmId) -> Annotated[CallToolResult, schemas.Vm]:
        vm = pyro.start_vm(vm_id)
        return reply(f"{vm['vm_id']} {vm['state']}", vm)

    def vm_exec(
        vm_id: VmId,
        command: Command,
        timeout_seconds: Timeout = config.DEFAULT_TIMEOUT_SECONDS,
        keep_vm: Annotated[
            bool, Field(description="Keep the VM for more commands (by default it is deleted).")
        ] = False,
    ) -> Annotated[CallToolResult, schemas.VmExecResult]:
        result = pyro.exec_vm(vm_id, command, timeout_seconds=timeout_seconds, keep_vm=keep_vm)
        return reply(render_command(result), result)

    def vm_stop(vm_id: VmId) -> Annotated[CallToolResult, schemas.Vm]:
        vm = pyro.stop_vm(vm_id)
        return reply(f"{vm['vm_id']} {vm['state']}", vm)

    def vm_delete(vm_id: VmId) -> Annotated[CallToolResult, schemas.Deleted]:
        result = pyro.delete_vm(vm_id)
        return reply(f"deleted {vm_id}", result)

    def vm_status(vm_id: VmId) -> Annotated[CallToolResult, schemas.Vm]:
        vm = pyro.status_vm(vm_id)
        return reply(f"{vm['vm_id']} {vm['state']}", vm)

    def vm_list() -> Annotated[CallToolResult, schemas.VmList]:
        vms = pyro.list_vms()
        return reply("\n".join(f"{v['vm_id']} {v['state']}" for v in vms) or "no VMs", {"vms": vms})

    def vm_list_environments() -> Annotated[CallToolResult, schemas.EnvironmentList]:
        environments = pyro.list_environments()
        text = "\n".join(
            f"{e['name']} [{e['kind']}]: {e['description']} "
            + (f"from {e['source']} " if e.get("source") else "")
            + f"({'installed' if e['installed'] else 'not built'})"
            for e in environments
        )
        return reply(text, {"environments": environments})

    def vm_network_info(vm_id: VmId) -> Annotated[CallToolResult, schemas.NetworkInfo]:
        info = pyro.network_info_vm(vm_id)
        return reply(f"{vm_id}: {info['mode']}", info)

    def vm_reap_expired() -> Annotated[CallToolResult, schemas.Reaped]:
        result = pyro.reap_expired()
        return reply(f"reaped {len(result['reaped'])} VM(s)", result)

    return {
        "vm_run": vm_run,
        "vm_create": vm_create,
        "vm_start": vm_start,
        "vm_exec": vm_exec,
        "vm_stop": vm_stop,
        "vm_delete": vm_delete,
        "vm_status": vm_status,
        "vm_list": vm_list,
        "vm_list_environments": vm_list_environments,
        "vm_network_info": vm_network_info,
        "vm_reap_expired": vm_reap_expired,
    }
