"""Named snapshots of /workspace, and resetting to them.

A snapshot is a copy of the workspace's qcow2 overlay (only what the
workspace wrote since the baseline), taken consistently: the guest flushes and
freezes /workspace, QEMU pauses (flushing its block layer), the file is
copied, and the VM resumes and thaws, always in that order. ``baseline`` is the
reserved name of the create-time state.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pyro_mcp import names
from pyro_mcp.agent import operations as guest
from pyro_mcp.config import disk_full_message
from pyro_mcp.errors import InvalidArgument, NotFound, PyroError, StoreError
from pyro_mcp.vm import control_ops, disks
from pyro_mcp.workspaces.context import WorkspaceContext, WorkspaceState

BASELINE = "baseline"
MAX_SNAPSHOTS = 32
# Room a snapshot needs beyond the overlay it copies (the record, some slack).
SNAPSHOT_MARGIN_BYTES = 16 * 1024 * 1024


class SnapshotOps:
    def __init__(self, ctx: WorkspaceContext) -> None:
        self.ctx = ctx

    def folder(self, workspace_id: str) -> Path:
        return self.ctx.root / workspace_id / "snapshots"

    def create(self, ref: str, name: str) -> dict[str, Any]:
        names.check_name("name", name)
        if name == BASELINE:
            raise InvalidArgument("name", "baseline is the reserved name of the create-time state")
        workspace = self.ctx.touch(self.ctx.find(ref))
        workspace_id = workspace["workspace_id"]
        existing = {s["name"] for s in self.ctx.store.snapshots(workspace_id)}
        if name in existing:
            raise InvalidArgument(
                "name", f"snapshot {name!r} exists; delete it first or pick another name"
            )
        if len(existing) >= MAX_SNAPSHOTS:
            raise InvalidArgument("name", f"at most {MAX_SNAPSHOTS} snapshots per workspace")
        running = self.ctx.state(workspace).state == WorkspaceState.RUNNING
        # A running workspace forked since it started writes to a newer top.
        source = disks.live_top(self.ctx.root / workspace_id / "workspace.qcow2")
        target = self.folder(workspace_id) / f"{name}.qcow2"
        target.parent.mkdir(mode=0o700, exist_ok=True)
        partial = target.with_suffix(".partial")
        # A snapshot copies the overlay: check for room first, before the guest
        # is frozen (on a full disk its flush fails with a bare I/O error).
        state_dir = self.ctx.vms.paths.state_dir
        stat = os.statvfs(target.parent)
        if stat.f_bavail * stat.f_frsize < source.stat().st_size + SNAPSHOT_MARGIN_BYTES:
            raise StoreError(disk_full_message(state_dir))
        try:
            if running:
                with self.ctx.vms.connect(workspace["vm_id"], "") as client:
                    guest.freeze(client, True)
                    try:
                        control_ops.pause(client)
                        try:
                            shutil.copyfile(source, partial)
                        finally:
                            control_ops.resume(client)
                    finally:
                        guest.freeze(client, False)
            else:
                shutil.copyfile(source, partial)  # a stopped VM's disk is already consistent
            disks.pin_backing(partial, source.parent)
            partial.rename(target)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                raise StoreError(disk_full_message(state_dir)) from exc
            raise StoreError(f"could not save snapshot {name!r}: {exc}") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        created = time.time()
        self.ctx.store.add_snapshot(workspace_id, name, created, target.stat().st_size)
        self.ctx.journal(workspace, "snapshot", {"name": name, "action": "create"})
        made = {"name": name, "created_at": created, "bytes": target.stat().st_size}
        return self.ctx.done(
            workspace, {**made, "snapshot": _described(workspace_id, {**made, "reserved": False})}
        )

    def list(self, ref: str) -> dict[str, Any]:
        workspace = self.ctx.find(ref)
        snapshots = [
            {"name": BASELINE, "created_at": workspace["created_at"], "bytes": 0, "reserved": True}
        ] + [{**s, "reserved": False} for s in self.ctx.store.snapshots(workspace["workspace_id"])]
        described = [_described(workspace["workspace_id"], s) for s in snapshots]
        return self.ctx.done(workspace, {"count": len(described), "snapshots": described})

    def delete(self, ref: str, name: str) -> dict[str, Any]:
        workspace = self.ctx.find(ref)
        if name == BASELINE:
            raise InvalidArgument("name", "the baseline snapshot cannot be deleted")
        self.path(workspace, name).unlink(missing_ok=True)
        self.ctx.store.delete_snapshot(workspace["workspace_id"], name)
        self.ctx.journal(workspace, "snapshot", {"name": name, "action": "delete"})
        return self.ctx.done(workspace, {"name": name, "snapshot_name": name, "deleted": True})

    def path(self, workspace: dict[str, Any], name: str) -> Path:
        """The file of snapshot ``name``; NotFound listing the names otherwise."""
        known = [s["name"] for s in self.ctx.store.snapshots(workspace["workspace_id"])]
        if name not in known:
            raise NotFound(
                f"no snapshot {names.shown(name)}; snapshots: {', '.join([BASELINE, *known])} "
                "(see snapshot list)"
            )
        return self.folder(workspace["workspace_id"]) / f"{name}.qcow2"

    def remove_all(self, workspace_id: str) -> None:
        with contextlib.suppress(PyroError):
            self.ctx.store.delete_snapshot(workspace_id)


def _described(workspace_id: str, snapshot: dict[str, Any]) -> dict[str, Any]:
    """A snapshot with pyro-mcp 4.5's fields beside pyro's own."""
    return {
        **snapshot,
        "workspace_id": workspace_id,
        "snapshot_name": snapshot["name"],
        "kind": "baseline" if snapshot["reserved"] else "named",
        "deletable": not snapshot["reserved"],
    }
