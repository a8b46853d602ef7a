"""What every boot, resume and failed start of a workspace needs, for create,
start, reset and fork alike: the egress policy handed to the VM, the per-boot
guest set-up, published ports put back, and nothing left of a half-made one.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyro_mcp.agent import operations as guest
from pyro_mcp.agent.client import SupervisorClient
from pyro_mcp.errors import PyroError
from pyro_mcp.vm import control_ops
from pyro_mcp.workspaces import ca_trust, package_index, processes
from pyro_mcp.workspaces import egress as workspace_egress
from pyro_mcp.workspaces import secrets as secret_store
from pyro_mcp.workspaces.context import WorkspaceContext

log = logging.getLogger("pyro.workspaces")


def discard_half_made(
    ctx: WorkspaceContext, workspace_id: str, folder: Path, vm_id: str | None
) -> None:
    """Remove what a create or fork that failed midway made: VM, record, folder."""
    if vm_id is not None:
        with contextlib.suppress(PyroError):
            ctx.vms.delete_vm(vm_id)
    ctx.store.delete_workspace(workspace_id)
    shutil.rmtree(folder, ignore_errors=True)


def publish_like(ctx: WorkspaceContext, parent: dict[str, Any], fork: dict[str, Any]) -> list[str]:
    """Publish a fork's copies of the parent's published ports, on new host ports."""
    rows = ctx.store.published_ports(parent["workspace_id"])
    warnings: list[str] = []
    if not rows:
        return warnings
    with ctx.connect(fork) as client:
        for row in rows:
            port = processes.free_host_port()
            try:
                control_ops.add_port(client, port, row["guest_port"])
            except PyroError as exc:
                warnings.append(f"guest port {row['guest_port']} not published: {exc}")
                continue
            ctx.store.add_published_port(
                fork["workspace_id"], row["service"], port, row["guest_port"]
            )
    return warnings


def republish(ctx: WorkspaceContext, workspace: dict[str, Any]) -> list[str]:
    """Put a resumed workspace's published ports back (QEMU's forwards died with it)."""
    warnings = []
    rows = ctx.store.published_ports(workspace["workspace_id"])
    if not rows:
        return []
    with ctx.connect(workspace) as client:
        for row in rows:
            try:
                control_ops.add_port(client, row["host_port"], row["guest_port"])
            except PyroError as exc:
                ctx.store.delete_published_ports(workspace["workspace_id"], row["service"])
                warnings.append(
                    f"port {row['host_port']} of service {row['service']} could not be "
                    f"published again ({exc}); restart the service to publish it"
                )
    return warnings


def apply_egress(ctx: WorkspaceContext, workspace: dict[str, Any]) -> None:
    """Hand the workspace's egress policy to its VM (now if running, else at boot)."""
    policy = workspace_egress.policy_of(workspace)
    if policy is None:
        return
    folder = ctx.root / workspace["workspace_id"]
    ctx.vms.set_egress(
        workspace["vm_id"],
        workspace_egress.config_for(workspace, folder, policy, ctx.store.path),
    )


def after_boot(ctx: WorkspaceContext, workspace: dict[str, Any]) -> None:
    """Per-boot guest set-up: secrets, and the host's CAs for a workspace with egress."""
    values = workspace_egress.guest_values(
        workspace_egress.policy_of(workspace),
        secret_store.load(ctx.root / workspace["workspace_id"] / "secrets"),
    )
    if values:
        encoded = {name: base64.b64encode(value).decode("ascii") for name, value in values.items()}
        with ctx.vms.connect(workspace["vm_id"], "Start it first.") as client:
            guest.secrets_put(client, encoded)
    vm = ctx.vms.status_vm(workspace["vm_id"])
    if not vm.network:
        return
    index = package_index.host_settings()
    if not index.empty():
        with ctx.vms.connect(workspace["vm_id"], "Start it first.") as client:
            args = {
                "pip_conf": index.pip_conf(),
                "npm_registry": index.npm_registry,
                "env": index.env,
            }
            guest.package_index(client, args)
    if not workspace.get("host_ca", 1):
        return
    bundle = ca_trust.host_ca_bundle()
    if bundle is None:
        log.warning("no CA bundle found on the host; guest TLS uses its own CAs only")
        return
    with ctx.vms.connect(workspace["vm_id"], "Start it first.") as client:
        guest.trust_ca(client, base64.b64encode(bundle).decode("ascii"))


def build_guest_setup(host_ca: bool = True) -> Callable[[SupervisorClient], None]:
    """What a Dockerfile build's guest gets before its first ``RUN`` step: the
    host's package index settings and CA bundle, as a workspace with egress gets
    them after boot (``after_boot``). Its steps run chrooted into the image, so
    the index settings travel as variables (pip's configuration too) and the
    guest hands the steps a bundle of the image's CAs and the host's."""

    def setup(client: SupervisorClient) -> None:
        index = package_index.host_settings()
        env = dict(index.env)
        for key, variable in PIP_VARIABLES.items():
            if index.pip.get(key) and variable not in env:
                env[variable] = index.pip[key]
        if index.npm_registry and "NPM_CONFIG_REGISTRY" not in env:
            env["NPM_CONFIG_REGISTRY"] = index.npm_registry
        if env:
            guest.package_index(client, {"env": env})
        bundle = ca_trust.host_ca_bundle() if host_ca else None
        if bundle is not None:
            guest.trust_ca(client, base64.b64encode(bundle).decode("ascii"))

    return setup


# pip.conf keys as pip's own variables.
PIP_VARIABLES = {
    "index-url": "PIP_INDEX_URL",
    "extra-index-url": "PIP_EXTRA_INDEX_URL",
    "trusted-host": "PIP_TRUSTED_HOST",
}
