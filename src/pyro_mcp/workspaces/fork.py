"""Fork: new workspaces that are copies of a running one, processes included."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyro_mcp import names
from pyro_mcp.errors import InvalidArgument, PyroError
from pyro_mcp.vm import disks
from pyro_mcp.workspaces import boot, ignore, lifetime
from pyro_mcp.workspaces import egress as workspace_egress
from pyro_mcp.workspaces.context import WorkspaceContext, WorkspaceState

# How many forks one call may make, and how many are made at once.
MAX_FORKS = 8
FORK_WORKERS = 4
# What a fork keeps of its parent's record (the rest is its own).
_FORKED_FIELDS = (
    "labels",
    "environment",
    "seed",
    "ttl_seconds",
    "max_lifetime_seconds",
    "host_ca",
    "network_policy",
    "egress",
    "idle_suspend_seconds",
    "idle_suspend_published",
)


class ForkOps:
    """Takes the service's ``status`` and ``delete`` (a fork is answered, and a
    failed sibling removed, as any workspace is)."""

    def __init__(
        self,
        ctx: WorkspaceContext,
        status: Callable[[str], dict[str, Any]],
        delete: Callable[..., dict[str, Any]],
    ) -> None:
        self.ctx = ctx
        self._status = status
        self._delete = delete

    def fork(self, ref: str, *, name: str | None = None, count: int = 1) -> dict[str, Any]:
        """New workspaces that are copies of this one as it is now, processes included.

        The source pauses while its memory is saved and its disks become
        read-only layers, then runs on, on new images of its own. Each fork
        resumes from that memory on its own images over those layers, with
        fresh entropy, clock, hostname and machine id, its own secrets and its
        own host ports for the source's published ports; its diff baseline is
        the source's. Nothing is left of a fork that fails.
        """
        parent = self.ctx.find(ref)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_FORKS:
            raise InvalidArgument("count", f"must be a whole number from 1 to {MAX_FORKS}")
        self.ctx.require(
            parent,
            (WorkspaceState.RUNNING,),
            "Start it first (`pyro workspace start {ref}`), then fork it.",
        )
        fork_names: list[str | None] = [None] * count
        if name is not None:
            fork_names = [name] if count == 1 else [f"{name}-{i}" for i in range(1, count + 1)]
            for each in fork_names:
                names.check_name("name", each)
                if self.ctx.store.find_workspace(str(each)) is not None:
                    raise InvalidArgument("name", f"a workspace called {each!r} exists")
        # Checked for all K at once: the forks start side by side.
        self.ctx.vms.check_capacity(more=count)
        started = time.monotonic()
        work = self.ctx.root / f".fork-{uuid.uuid4().hex[:8]}"
        work.mkdir()
        try:
            # The source's live tops become layers every fork shares: a fork costs
            # what it writes, and so does the source from now on.
            saved, (root_layer, workspace_layer) = self.ctx.vms.fork_save(
                parent["vm_id"], work / "memory.state"
            )
            layers = {"root": root_layer, "workspace": workspace_layer}
            forks = self._make_forks(parent, work, fork_names, saved, layers)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.ctx.journal(parent, "fork", {"forks": [f["workspace_id"] for f in forks]})
        return {
            "workspace_id": parent["workspace_id"],
            "forks": forks,
            "pause_ms": saved["pause_ms"],
            "fork_ms": int((time.monotonic() - started) * 1000),
        }

    def _make_forks(
        self,
        parent: dict[str, Any],
        work: Path,
        fork_names: list[str | None],
        saved: dict[str, Any],
        layers: dict[str, disks.Layer],
    ) -> list[dict[str, Any]]:
        """The forks, made side by side (each resume mostly waits on its own QEMU).

        All or nothing: if one fails, the others are deleted and its error raised.
        """
        with concurrent.futures.ThreadPoolExecutor(max_workers=FORK_WORKERS) as pool:
            futures = [
                pool.submit(self._make_fork, parent, work, n, saved, layers) for n in fork_names
            ]
            concurrent.futures.wait(futures)
        failed = [error for f in futures if (error := f.exception()) is not None]
        if failed:
            for future in futures:
                if future.exception() is None:
                    with contextlib.suppress(PyroError):
                        self._delete(
                            future.result()["workspace_id"], reason="a sibling fork failed"
                        )
            raise failed[0]
        return [f.result() for f in futures]

    def _make_fork(
        self,
        parent: dict[str, Any],
        work: Path,
        name: str | None,
        saved: dict[str, Any],
        layers: dict[str, disks.Layer],
    ) -> dict[str, Any]:
        workspace_id = "ws-" + uuid.uuid4().hex[:12]
        folder = self.ctx.root / workspace_id
        folder.mkdir(mode=0o700)
        parent_folder = self.ctx.root / parent["workspace_id"]
        vm_id: str | None = None
        try:
            os.link(parent_folder / "baseline.ext4", folder / "baseline.ext4")  # immutable
            disks.stack_on(layers["workspace"], folder)
            if (parent_folder / "secrets").is_dir():
                shutil.copytree(parent_folder / "secrets", folder / "secrets")
            if (parent_folder / ignore.RULES_FILE).exists():
                shutil.copyfile(parent_folder / ignore.RULES_FILE, folder / ignore.RULES_FILE)
            if (parent_folder / workspace_egress.CA_FOLDER).is_dir():
                # The fork resumes the parent's memory, which trusts this CA.
                shutil.copytree(
                    parent_folder / workspace_egress.CA_FOLDER,
                    folder / workspace_egress.CA_FOLDER,
                )
            record = self.ctx.vms.clone_vm(
                parent["vm_id"],
                root_layer=layers["root"],
                workspace_disk=folder / "workspace.qcow2",
                baseline_disk=folder / "baseline.ext4",
                memory=work / "memory.state",
                memory_layout=saved["memory"],
            )
            vm_id = record.vm_id
            now = time.time()
            row = {
                **{k: v for k, v in parent.items() if k in _FORKED_FIELDS},
                "workspace_id": workspace_id,
                "name": name,
                "vm_id": vm_id,
                "created_at": now,
                "last_activity_at": now,
                "forked_from": parent["workspace_id"],
            }
            row["expires_at"] = lifetime.expires_at(row)
            self.ctx.store.insert_workspace(row)
            boot.apply_egress(self.ctx, row)
            self.ctx.vms.start_vm(vm_id)
            self.ctx.journal(row, "fork", {"from": parent["workspace_id"]})
            warnings = boot.publish_like(self.ctx, parent, row)
        except BaseException:
            boot.discard_half_made(self.ctx, workspace_id, folder, vm_id)
            raise
        status = self._status(workspace_id)
        if status.get("boot_kind") != "resumed":
            warnings.insert(
                0,
                f"this fork booted from its disks ({status.get('boot_warning')}): "
                "the source's running processes, shells and /tmp were not carried over",
            )
        if warnings:
            status["warning"] = "; ".join(warnings)
        return status
