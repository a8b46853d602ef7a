"""What every workspace operation takes: find, touch, connect, journal, secrets, checks.

The workspace service and its operation modules (processes, snapshots, disk)
share one ``WorkspaceContext``; its public methods are their contract, so no
operation module reaches into the service. ``resume`` is the one thing it
needs from above: how to start a suspended workspace before connecting.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pyro_mcp import config, names
from pyro_mcp.agent import operations as guest
from pyro_mcp.agent.client import SupervisorClient
from pyro_mcp.errors import AgentError, InvalidArgument, NotFound, StateError, StoreError
from pyro_mcp.models import VmRecord, VmState
from pyro_mcp.store.db import Store
from pyro_mcp.vm.service import VmService
from pyro_mcp.workspaces import lifetime, replies
from pyro_mcp.workspaces import secrets as secret_store
from pyro_mcp.workspaces.paths import workspace_relative

log = logging.getLogger("pyro.workspaces")


class WorkspaceState(enum.StrEnum):
    """A workspace's lifecycle, as ``status`` reports it; read only by ``WorkspaceContext.state``.

    created -> running <-> suspended (memory saved) ; running/suspended -> stopped
    (disks kept) -> running. Reset and fork leave the state running.
    """

    CREATED = "created"
    RUNNING = "running"
    SUSPENDED = "suspended"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Lifecycle:
    """A workspace's state, its VM record and, when suspended, the saved memory's facts."""

    state: WorkspaceState
    vm: VmRecord
    suspended: dict[str, Any] | None


def expiry_warning(workspace: dict[str, Any]) -> dict[str, Any]:
    """``{"warning": ...}`` when the workspace is near its expiry, else nothing."""
    described = lifetime.describe(workspace)
    return {"warning": described["warning"]} if "warning" in described else {}


class WorkspaceContext:
    """The shared helpers of the workspace operations, over the store and the VM layer."""

    def __init__(
        self, store: Store, vms: VmService, root: Path, resume: Callable[[str], Any]
    ) -> None:
        self.store = store
        self.vms = vms
        self.root = root
        self._resume = resume

    def state(self, workspace: dict[str, Any]) -> Lifecycle:
        """The one place a workspace's state is worked out (from its VM and saved memory)."""
        vm = self.vms.status_vm(workspace["vm_id"])
        suspended = self.vms.suspended(vm.vm_id) if vm.state == VmState.STOPPED else None
        if suspended is not None:
            return Lifecycle(WorkspaceState.SUSPENDED, vm, suspended)
        return Lifecycle(WorkspaceState(vm.state.value), vm, None)

    def require(
        self, workspace: dict[str, Any], allowed: tuple[WorkspaceState, ...], fix: str
    ) -> Lifecycle:
        """The workspace's lifecycle if its state is one of ``allowed``; else
        ``StateError`` with ``fix`` (``{ref}`` in it becomes the workspace's name or id)."""
        found = self.state(workspace)
        if found.state not in allowed:
            ref = workspace["name"] or workspace["workspace_id"]
            required = " or ".join(state.value for state in allowed)
            raise StateError(f"workspace {ref}", found.state.value, required, fix.format(ref=ref))
        return found

    def connect(self, workspace: dict[str, Any], *, touch: bool = True) -> SupervisorClient:
        """A connection to the workspace's running VM; a suspended one is resumed first."""
        if touch:
            self.touch(workspace)
        ref = workspace["name"] or workspace["workspace_id"]
        with self.vms.lifecycle_lock(workspace["vm_id"]):  # waits out a suspend or resume
            suspended = self.vms.suspended(workspace["vm_id"]) is not None
        if suspended:
            with contextlib.suppress(StateError):  # another call resumed it first
                self._resume(workspace["workspace_id"])
        return self.vms.connect(workspace["vm_id"], f"Start it with `pyro workspace start {ref}`.")

    def check_writable(
        self, client: SupervisorClient, workspace: dict[str, Any], *, strict: bool = True
    ) -> str | None:
        """Before a write: make sure /workspace takes writes, mounting it again if needed.

        Returns a warning when the guest had to mount it again. A /workspace that
        stays read-only raises with ``strict``; otherwise it is a warning (a
        command may only read, or may free space).
        """
        try:
            reply = guest.workspace_check(client)
            if reply.get("state") == "read_only" and config.release_reserve(
                self.vms.paths.state_dir
            ):
                # Mounting it again needs room on the host: give back pyro's reserve.
                log.warning("released pyro's space reserve to mount /workspace again")
                reply = guest.workspace_check(client)
        except AgentError as exc:
            if "unknown operation" in str(exc):
                return None  # a guest started by an older pyro
            raise
        return self.judge_check(reply, workspace, strict=strict)

    def checked_write(
        self,
        client: SupervisorClient,
        workspace: dict[str, Any],
        send: Callable[[bool], dict[str, Any]],
        *,
        strict: bool = True,
    ) -> tuple[dict[str, Any], str | None]:
        """A request that writes, with the /workspace check in the same round trip.

        ``send(check)`` makes the request, asking the guest to check /workspace
        first when ``check``. If it stayed read-only the request was not carried
        out: pyro's space reserve is given back (``check_writable``) and it is
        sent once more. Returns the reply and ``check_writable``'s warning.
        """
        reply = send(True)
        if reply.get("ran") is False:
            warning = self.check_writable(client, workspace, strict=strict)
            return send(False), warning
        checked = reply.get("workspace")
        if not isinstance(checked, dict):
            return reply, None  # a guest started by an older pyro: it checked nothing
        return reply, self.judge_check(checked, workspace, strict=strict)

    def judge_check(
        self, reply: dict[str, Any], workspace: dict[str, Any], *, strict: bool
    ) -> str | None:
        """What a guest's /workspace check means: nothing, a warning, or (strict) an error."""
        state, message = reply.get("state"), str(reply.get("message", ""))[:500]
        if state == "ok":
            config.keep_reserve(self.vms.paths.state_dir)
        if state == "repaired":
            return f"{message}; pyro mounted it again (the journal was replayed) and it is writable"
        if state != "read_only":
            return None
        ref = workspace["name"] or workspace["workspace_id"]
        fix = (
            f"Free space where PYRO_HOME lives ({self.vms.paths.state_dir}); pyro mounts "
            f"/workspace again before the next write. If it stays read-only: "
            f"`pyro workspace stop {ref}` then `pyro workspace start {ref}`."
        )
        if strict:
            raise StateError(f"/workspace of {ref}", "read-only", "writable", f"{message}. {fix}")
        return f"{message}. {fix}"

    def journal(self, workspace: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
        self.store.add_journal(workspace["workspace_id"], kind, time.time(), data)

    def read_text(self, client: SupervisorClient, guest_path: str) -> str:
        reply = replies.check_read(
            guest.file_read(client, guest_path, replies.MAX_READ_BYTES),
            replies.MAX_READ_BYTES,
        )
        if reply["binary"] or reply["truncated"]:
            raise InvalidArgument(
                "patch", f"{workspace_relative(guest_path)} is binary or too large to patch"
            )
        return str(reply["content"])

    def exists(self, client: SupervisorClient, guest_path: str) -> bool:
        parent = str(PurePosixPath(guest_path).parent)
        with contextlib.suppress(InvalidArgument):
            listing = guest.file_list(client, parent)
            return any(
                e.get("path") == workspace_relative(guest_path) for e in listing.get("entries", [])
            )
        return False

    def find(self, ref: str) -> dict[str, Any]:
        workspace = self.store.find_workspace(names.check_workspace_ref(ref))
        if workspace is None:
            tombstone = self.store.find_tombstone(ref)
            if tombstone is not None:
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(tombstone["at"]))
                label = f" ({tombstone['name']})" if tombstone["name"] else ""
                raise NotFound(
                    f"workspace {tombstone['workspace_id']}{label} no longer exists: "
                    f"{tombstone['reason']} at {when}. Create a new one with workspace_create."
                )
            raise NotFound(f"no workspace {names.shown(ref)}; see `pyro workspace list`")
        return workspace

    def redactor(self, ref: str) -> secret_store.Redactor:
        """Replaces the workspace's secret values in text (empty if it has none)."""
        workspace = self.store.find_workspace(ref)
        if workspace is None:
            return secret_store.Redactor({})
        return secret_store.Redactor(
            secret_store.load(self.root / workspace["workspace_id"] / "secrets")
        )

    def secrets(self, workspace: dict[str, Any]) -> dict[str, bytes]:
        return secret_store.load(self.root / workspace["workspace_id"] / "secrets")

    def secret_env(
        self,
        workspace: dict[str, Any],
        specs: Sequence[str] | Mapping[str, str],
        used_by: str = "exec",
        *,
        known: dict[str, bytes] | None = None,
    ) -> dict[str, str]:
        """``NAME[:ENV_VAR]`` specs checked against the workspace's secrets.

        Each use is journalled by name (never value): a host crossing the
        summary shows.
        """
        values = known if known is not None else self.secrets(workspace)
        mapping = secret_store.parse_secret_env(specs, sorted(values))
        if mapping:
            self.journal(
                workspace, "secret_use", {"names": sorted(set(mapping.values())), "by": used_by}
            )
        return mapping

    def done(self, workspace: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """An operation's result: its data, plus a warning when expiry is near."""
        current = self.store.find_workspace(workspace["workspace_id"]) or workspace
        return {"workspace_id": workspace["workspace_id"], **data, **expiry_warning(current)}

    def touch(self, workspace: dict[str, Any]) -> dict[str, Any]:
        """Record activity now: moves an idle expiry forward."""
        touched = {**workspace, "last_activity_at": time.time()}
        touched["expires_at"] = lifetime.expires_at(touched)
        try:
            self.store.update_workspace(
                workspace["workspace_id"],
                last_activity_at=touched["last_activity_at"],
                expires_at=touched["expires_at"],
            )
        except StoreError as exc:
            # Activity is bookkeeping: a full disk must not stop the call that
            # could free it (an exec that deletes files in /workspace).
            log.warning("could not record activity: %s", exc)
        return touched
