"""``pyro env rm``: one environment out of the cache, with what only it used.

An environment is removed whole: its builds, its warm snapshots, and the layer
disks and image blobs no other environment names (``EnvironmentCache.remove``).
Workspaces and VMs boot from its files, so while any exists the removal is
refused, naming them; ``force`` deletes them first, after saying which. Nothing
is removed before every check has passed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyro_mcp import names
from pyro_mcp.errors import StateError
from pyro_mcp.workspaces.service import WorkspaceService


def remove_environment(
    workspaces: WorkspaceService, name: str, *, force: bool, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Remove installed environment ``name``; see the module docstring.

    Raises:
        InvalidArgument: ``name`` is not an environment name.
        NotFound: no environment of that name is installed (the message lists them).
        StateError: workspaces or VMs use it and ``force`` is off; or another
            environment is built on its files.
    """
    names.check_environment("name", name)
    vms = workspaces.vms
    cache = vms.environments
    if name not in cache.installed_names():
        cache.remove(name)  # raises NotFound, naming what is installed
    by_vm = {row["vm_id"]: row for row in workspaces.store.list_workspaces()}
    users = [record.vm_id for record in vms.store.list_vms() if record.environment == name]
    using_workspaces = [by_vm[vm_id] for vm_id in users if vm_id in by_vm]
    using_vms = [vm_id for vm_id in users if vm_id not in by_vm]
    described = [f"workspace {_shown(row)}" for row in using_workspaces]
    described += [f"VM {vm_id}" for vm_id in using_vms]
    if described and not force:
        raise StateError(
            f"environment {name}",
            f"in use by {', '.join(described)}",
            "unused",
            "Delete them first, or pass --force (force=True) to delete them and then remove it.",
        )
    deleted_workspaces = []
    for row in using_workspaces:
        progress(f"phase=remove deleting workspace {_shown(row)} (it uses {name})")
        workspaces.delete(row["workspace_id"], reason=f"environment {name} removed")
        deleted_workspaces.append(row["workspace_id"])
    for vm_id in using_vms:
        progress(f"phase=remove deleting VM {vm_id} (it uses {name})")
        vms.delete_vm(vm_id)
    warm = vms.warm.remove_environment(name)
    files = cache.remove(name)
    freed = warm["freed_bytes"] + files["freed_bytes"]
    progress(f"phase=done {name} removed ({freed // 2**20} MiB freed)")
    return {
        "name": name,
        "removed": True,
        "deleted_workspaces": deleted_workspaces,
        "deleted_vms": using_vms,
        "removed_paths": warm["removed"] + files["removed"],
        "freed_bytes": freed,
    }


def _shown(row: dict[str, Any]) -> str:
    return f"{row['name']} ({row['workspace_id']})" if row.get("name") else row["workspace_id"]
