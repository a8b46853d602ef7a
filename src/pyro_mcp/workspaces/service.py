"""The workspace service: a VM an agent inhabits across many calls.

A workspace is a VM plus ``/workspace`` on its own disk. The seed becomes an
immutable baseline image (``baseline.ext4``, read-only); the live disk is a
qcow2 overlay on it, so creating one costs only what the workspace writes.
Every command run is journalled.

Files live in ``<state>/workspaces/<workspace_id>/``; the VM (root overlay,
sockets, logs) in ``<state>/vms/<vm_id>/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyro_mcp import config, host_tools, names
from pyro_mcp.environments.builder import Progress
from pyro_mcp.errors import (
    InvalidArgument,
    NotFound,
    PyroError,
    VMError,
)
from pyro_mcp.vm import disks
from pyro_mcp.vm.service import VmService
from pyro_mcp.workspaces import (
    boot,
    commands,
    disk,
    files,
    fork,
    ignore,
    lifetime,
    processes,
    project_source,
)
from pyro_mcp.workspaces import egress as workspace_egress
from pyro_mcp.workspaces import secrets as secret_store
from pyro_mcp.workspaces import snapshots as snapshot_ops
from pyro_mcp.workspaces.context import WorkspaceContext, WorkspaceState, expiry_warning
from pyro_mcp.workspaces.paths import WORKSPACE_ROOT
from pyro_mcp.workspaces.seed import SeedInfo, stage_seed, staging_area

WORKSPACE_DISK_MIB = config.WORKSPACE_DISK_MIB
WORKSPACE_LABEL = "pyro-workspace"
# Longer than any create takes (a cold build of an environment included).
ORPHAN_GRACE_SECONDS = 3600


log = logging.getLogger("pyro.workspaces")


def _quiet(_: str) -> None:
    pass


# What the summary shows of each crossing of the host boundary.
_CROSSING_FIELDS = (
    *("origin_kind", "origin_ref", "source", "dest", "path", "output", "files", "bytes"),
    *("names", "by", "allow_hosts", "deny_hosts"),
)


class WorkspaceService:
    def __init__(self, vms: VmService) -> None:
        self.vms = vms
        self.store = vms.store
        self.root = vms.paths.state_dir / "workspaces"
        self.ctx = WorkspaceContext(self.store, vms, self.root, resume=self.start)
        self.services = processes.ServiceOps(self.ctx)
        self.shells = processes.ShellOps(self.ctx)
        self.snapshots = snapshot_ops.SnapshotOps(self.ctx)
        self.disk = disk.DiskOps(self.ctx)
        self.commands = commands.CommandOps(self.ctx)
        self.files = files.FileOps(self.ctx)
        self.forks = fork.ForkOps(self.ctx, status=self.status, delete=self.delete)

    # -------------------------------------------------------------- create

    def create(
        self,
        environment: str = config.DEFAULT_ENVIRONMENT,
        *,
        seed_path: str | Path | None = None,
        project_path: str | Path | None = None,
        origin: tuple[str, str] | None = None,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        ttl_seconds: int | None = None,
        max_lifetime_seconds: int | None = None,
        idle_suspend_seconds: int | None = None,
        idle_suspend_published: bool = False,
        vcpu_count: int = config.DEFAULT_VCPU_COUNT,
        mem_mib: int = config.DEFAULT_MEM_MIB,
        network: bool = False,
        network_policy: str | None = None,
        host_ca: bool = True,
        secrets: Mapping[str, secret_store.SecretSpec] | None = None,
        secret_files: Mapping[str, secret_store.SecretSpec] | None = None,
        allow_hosts: Sequence[str] | None = None,
        allow_package_index: bool = False,
        deny_hosts: Sequence[str] = (),
        allow_private_egress: bool = False,
        allow_host_services: bool = False,
        progress: Progress = _quiet,
    ) -> dict[str, Any]:
        """Seed a workspace and boot it. On any failure nothing is left behind.

        Args:
            seed_path: a directory or archive copied whole into /workspace.
            project_path: a Git checkout whose tracked files are copied instead.
            origin: how to report where the files came from (kind, ref); by default
                derived from the seed.
            allow_hosts: the only hosts the guest may reach (None: any public host).
            allow_package_index: add the hosts of this host's package index settings
                (what the guest's pip and npm are pointed at) to allow_hosts.
            allow_private_egress, allow_host_services: operator switches (never
                from a model): private addresses, and host.pyro.internal.
            secrets, secret_files: NAME -> value (path), or {"value" ("path"): ...,
                "hosts": [...]}: those hosts get the real value through the egress
                proxy and the guest sees a placeholder.
        """
        if seed_path is not None and project_path is not None:
            raise InvalidArgument("seed_path", "give seed_path or project_path, not both")
        secret_values = secret_store.collect(secrets, secret_files)
        # `network=True` is shorthand for the egress policy.
        policy = processes.check_policy(network_policy or ("egress" if network else "off"))
        network = policy != "off"
        egress_policy = workspace_egress.build_policy(
            network=network,
            allow_hosts=allow_hosts,
            allow_package_index=allow_package_index,
            deny_hosts=deny_hosts,
            allow_private_egress=allow_private_egress,
            allow_host_services=allow_host_services,
            secret_hosts=secret_store.bound_hosts(secrets, secret_files),
            secret_names=sorted(secret_values),
        )
        for field, value in (
            ("ttl_seconds", ttl_seconds),
            ("max_lifetime_seconds", max_lifetime_seconds),
        ):
            if value is not None and (isinstance(value, bool) or not 1 <= value <= 365 * 86400):
                raise InvalidArgument(field, "must be a whole number of seconds from 1 to a year")
        if name is not None:
            names.check_name("name", name)
        _check_idle_suspend(idle_suspend_seconds)
        labels = check_labels(labels or {})
        if name is not None and self.store.find_workspace(name) is not None:
            raise InvalidArgument("name", f"a workspace called {name!r} exists")
        self.reap_expired()
        workspace_id = "ws-" + uuid.uuid4().hex[:12]
        folder = self.root / workspace_id
        folder.mkdir(parents=True, mode=0o700)
        vm_id: str | None = None
        try:
            if secret_values:
                secret_store.store(folder / "secrets", secret_values)
            if egress_policy is not None:
                workspace_egress.ensure_ca(folder, egress_policy, workspace_id)
            progress("phase=seed staging the seed")
            seed, kind, ref = _build_baseline(folder, project_path, seed_path, origin)
            os.chmod(folder / "baseline.ext4", 0o444)
            disks.create_overlay(folder / "baseline.ext4", folder / "workspace.qcow2")
            disks.mark_fresh(folder / "workspace.qcow2")
            record = self.vms.create_vm(
                environment,
                vcpu_count=vcpu_count,
                mem_mib=mem_mib,
                network=network,
                progress=progress,
                workspace_disk=folder / "workspace.qcow2",
                baseline_disk=folder / "baseline.ext4",
            )
            vm_id = record.vm_id
            now = time.time()
            row: dict[str, Any] = {
                "workspace_id": workspace_id,
                "name": name,
                "labels": labels,
                "environment": environment,
                "vm_id": vm_id,
                "seed": {**seed.to_dict(), "origin_kind": kind, "origin_ref": ref},
                "created_at": now,
                "last_activity_at": now,
                "ttl_seconds": ttl_seconds,
                "max_lifetime_seconds": max_lifetime_seconds,
                "idle_suspend_seconds": idle_suspend_seconds,
                "idle_suspend_published": int(idle_suspend_published),
                "host_ca": int(host_ca),
                "network_policy": policy,
                "egress": egress_policy.to_dict() if egress_policy is not None else None,
            }
            row["expires_at"] = lifetime.expires_at(row)
            self.store.insert_workspace(row)
            boot.apply_egress(self.ctx, row)
            self.vms.start_vm(vm_id, progress=progress)
            boot.after_boot(self.ctx, row)
            # Host crossings are journalled, so the summary shows them.
            self.ctx.journal(
                row,
                "seed",
                {
                    "origin_kind": kind,
                    "origin_ref": ref,
                    "files": seed.file_count,
                    "bytes": seed.bytes,
                },
            )
        except BaseException:
            boot.discard_half_made(self.ctx, workspace_id, folder, vm_id)
            raise
        created = self.status(workspace_id)
        config.keep_reserve(self.vms.paths.state_dir)
        space = config.low_space_warning(self.vms.paths.state_dir)
        if space is not None:
            log.warning("%s", space)
            created["warning"] = space
        return created

    # ------------------------------------------------------------- queries

    def status(self, ref: str, *, touch: bool = True) -> dict[str, Any]:
        workspace = self.ctx.find(ref)
        if touch:
            workspace = self.ctx.touch(workspace)
        lifecycle = self.ctx.state(workspace)
        vm, suspended = lifecycle.vm, lifecycle.suspended
        if lifecycle.state in (WorkspaceState.STOPPED, WorkspaceState.CREATED):
            # The VM died or stopped: QEMU took its port forwards with it.
            self.store.delete_published_ports(workspace["workspace_id"])
        extra = {"suspended_at": suspended["suspended_at"]} if suspended else {}
        return {
            **{k: v for k, v in workspace.items() if k != "vm_id"},
            "origin_kind": workspace["seed"].get("origin_kind", "seed_path"),
            "origin_ref": workspace["seed"].get(
                "origin_ref", workspace["seed"].get("source") or ""
            ),
            "workspace_seed": workspace_seed(workspace["seed"]),
            "state": lifecycle.state.value,
            **extra,
            "idle_suspend_seconds": idle_suspend_limit(workspace),
            "idle_suspend_published": bool(workspace.get("idle_suspend_published")),
            "accel": vm.accel,
            "boot_ms": vm.boot_ms,
            "boot_kind": vm.boot_kind,
            "boot_warning": vm.boot_warning,
            "vm_id": vm.vm_id,
            "last_error": vm.last_error,
            "command_count": self.store.count_journal(workspace["workspace_id"], "exec"),
            "network": vm.network,
            "network_policy": workspace.get("network_policy", "off"),
            "egress": workspace_egress.describe(workspace_egress.policy_of(workspace)),
            "secrets": sorted(secret_store.load(self.root / workspace["workspace_id"] / "secrets")),
            "services": self.services.counts(workspace)
            if lifecycle.state == WorkspaceState.RUNNING
            else {"running": 0, "total": 0},
            **lifetime.describe(workspace),
        }

    def list_all(self) -> list[dict[str, Any]]:
        self.reap_expired()
        return [self.status(w["workspace_id"], touch=False) for w in self.store.list_workspaces()]

    def logs(self, ref: str) -> dict[str, Any]:
        workspace = self.ctx.find(ref)
        entries = self.store.journal(workspace["workspace_id"])
        workspace_id = workspace["workspace_id"]
        return {"workspace_id": workspace_id, "count": len(entries), "entries": entries}

    # ------------------------------------------------------------ changes

    def update(
        self,
        ref: str,
        *,
        name: str | None = None,
        clear_name: bool = False,
        labels: dict[str, str] | None = None,
        clear_labels: Sequence[str] = (),
        idle_suspend_seconds: int | None = None,
        idle_suspend_published: bool | None = None,
        allow_hosts: Sequence[str] = (),
        deny_hosts: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Rename, relabel, change the idle limit or the egress host rules.

        Host rules apply to the guest's next connections at once, running or not.
        """
        workspace = self.ctx.find(ref)
        _check_idle_suspend(idle_suspend_seconds)
        egress_policy = None
        if allow_hosts or deny_hosts:
            egress_policy = workspace_egress.updated(
                workspace_egress.policy_of(workspace), allow_hosts, deny_hosts
            )
        if clear_name and name is not None:
            raise InvalidArgument("clear_name", "give a new name or clear_name, not both")
        merged = {k: v for k, v in workspace["labels"].items() if k not in set(clear_labels)}
        merged.update(check_labels(labels or {}))
        fields: dict[str, Any] = {"labels": merged}
        if name is not None:
            names.check_name("name", name)
            other = self.store.find_workspace(name)
            if other is not None and other["workspace_id"] != workspace["workspace_id"]:
                raise InvalidArgument("name", f"a workspace called {name!r} exists")
            fields["name"] = name
        if clear_name:
            fields["name"] = None
        if idle_suspend_seconds is not None:
            fields["idle_suspend_seconds"] = idle_suspend_seconds
        if idle_suspend_published is not None:
            fields["idle_suspend_published"] = int(idle_suspend_published)
        if egress_policy is not None:
            fields["egress"] = egress_policy.to_dict()
        self.store.update_workspace(workspace["workspace_id"], **fields)
        if egress_policy is not None:
            boot.apply_egress(self.ctx, {**workspace, **fields})
            self.ctx.journal(
                workspace,
                "egress_policy",
                {"allow_hosts": list(allow_hosts), "deny_hosts": list(deny_hosts)},
            )
        return self.status(workspace["workspace_id"])

    def reset(self, ref: str, *, snapshot: str | None = None) -> dict[str, Any]:
        """Recreate the whole sandbox: fresh root disk, /workspace from the baseline
        (or from the named snapshot)."""
        workspace = self.ctx.find(ref)
        folder = self.root / workspace["workspace_id"]
        source = None
        if snapshot not in (None, snapshot_ops.BASELINE):
            source = self.snapshots.path(workspace, str(snapshot))  # NotFound before any change
        self.vms.stop_vm(workspace["vm_id"])
        self.vms.discard_suspended(workspace["vm_id"])
        self.store.delete_published_ports(workspace["workspace_id"])
        self.vms.reset_root_disk(workspace["vm_id"])
        fresh = folder / "workspace.qcow2.new"
        fresh.unlink(missing_ok=True)
        if source is None:
            disks.create_overlay(folder / "baseline.ext4", fresh)
        else:
            shutil.copyfile(source, fresh)
        disks.replace_top(fresh, folder / "workspace.qcow2")
        disks.take_fresh(folder / "workspace.qcow2")
        if source is None:
            disks.mark_fresh(folder / "workspace.qcow2")
        boot.apply_egress(self.ctx, workspace)
        self.vms.start_vm(workspace["vm_id"])
        boot.after_boot(self.ctx, workspace)
        self.ctx.journal(workspace, "reset", {"to": snapshot or snapshot_ops.BASELINE})
        resets = self.store.count_journal(workspace["workspace_id"], "reset")
        return {
            **self.status(workspace["workspace_id"]),
            # pyro-mcp 4.5's fields: how many resets so far, and to what.
            "reset_count": resets,
            "workspace_reset": {"snapshot_name": snapshot or snapshot_ops.BASELINE},
        }

    def summary(self, ref: str, *, include_ignored: bool = False) -> dict[str, Any]:
        """What ran and changed since the last reset, short enough to paste."""
        workspace = self.ctx.find(ref)
        entries = self.store.journal(workspace["workspace_id"])
        resets = [e for e in entries if e["kind"] == "reset"]
        since = [e for e in entries if not resets or e["entry_id"] > resets[-1]["entry_id"]]
        commands = [
            {
                "command": e["command"],
                "exit_code": e["exit_code"],
                "timed_out": e["timed_out"],
                "duration_ms": e["duration_ms"],
            }
            for e in since
            if e["kind"] == "exec"
        ]
        operations = {
            kind: [
                {k: v for k, v in e.items() if k not in ("entry_id", "kind")}
                for e in since
                if e["kind"] == kind
            ]
            for kind in ("write", "patch", "sync", "export")
        }
        crossings = [
            {"kind": e["kind"], **{k: e[k] for k in _CROSSING_FIELDS if k in e}}
            for e in entries
            if e["kind"] in ("seed", "sync", "export", "secret_use", "egress_policy")
        ]
        # Network crossings since the last reset, folded per host.
        crossings += workspace_egress.crossings([e for e in since if e["kind"] == "egress"])
        status = self.status(workspace["workspace_id"])
        note = None
        if status["state"] in (WorkspaceState.RUNNING, WorkspaceState.SUSPENDED):  # resumes one
            diff = self.files.diff(workspace["workspace_id"], include_ignored=include_ignored)
            changes: dict[str, Any] = {
                "available": True,
                "summary": diff["summary"],
                "files": [{"path": c["path"], "status": c["status"]} for c in diff["changes"]],
                "ignored_count": diff["ignored_count"],
            }
        else:
            note = f"the workspace is {status['state']}; start it to see file changes"
            changes = {"available": False, "reason": note}

        def events(kind: str) -> list[dict[str, Any]]:
            return [
                {k: v for k, v in e.items() if k not in ("entry_id", "kind")}
                for e in since
                if e["kind"] == kind
            ]

        named = self.store.snapshots(workspace["workspace_id"])
        return {
            "workspace_id": workspace["workspace_id"],
            "name": workspace["name"],
            "state": self.status(workspace["workspace_id"], touch=False)["state"],
            "since": resets[-1]["started_at"] if resets else workspace["created_at"],
            "resets": len(resets),
            "commands": commands,
            "failed_commands": sum(1 for c in commands if c["exit_code"] != 0),
            "operations": operations,
            "changes": changes,
            # pyro-mcp 4.5's review sections: what left, the checkpoints, the services.
            "artifacts": {"exports": operations["export"]},
            "snapshots": {"named_count": len(named), "events": events("snapshot")},
            "services": {"events": events("service")},
            "host_crossings": crossings,
            "note": note,
            **expiry_warning(self.store.find_workspace(workspace["workspace_id"]) or workspace),
        }

    def stop(self, ref: str, *, discard_memory: bool = False) -> dict[str, Any]:
        """Suspend the workspace (memory saved, every process carries on at start), or
        with ``discard_memory`` stop it (the disks are kept; processes end)."""
        workspace = self.ctx.find(ref)
        if self.ctx.state(workspace).state == WorkspaceState.RUNNING and not discard_memory:
            saved = self.vms.suspend_vm(workspace["vm_id"])
            self.ctx.journal(workspace, "suspend", saved)
            return {**self.status(workspace["workspace_id"]), "suspended": True, **saved}
        self.vms.stop_vm(workspace["vm_id"])
        self.vms.discard_suspended(workspace["vm_id"])
        self.store.delete_published_ports(workspace["workspace_id"])
        return {**self.status(workspace["workspace_id"]), "suspended": False}

    def start(self, ref: str) -> dict[str, Any]:
        """Resume a suspended workspace, or boot a stopped one from its disks."""
        workspace = self.ctx.touch(self.ctx.find(ref))
        had_memory = self.vms.suspended(workspace["vm_id"]) is not None
        boot.apply_egress(self.ctx, workspace)  # from the record: a damaged egress.json heals here
        vm = self.vms.start_vm(workspace["vm_id"])
        resumed = vm.boot_kind == "resumed"
        warnings = []
        if resumed:
            warnings = boot.republish(self.ctx, workspace)
            self.ctx.journal(workspace, "resume", {"resume_ms": vm.boot_ms})
        else:
            self.store.delete_published_ports(workspace["workspace_id"])
            boot.after_boot(self.ctx, workspace)
        result: dict[str, Any] = {**self.status(workspace["workspace_id"]), "resumed": resumed}
        if resumed:
            result["resume_ms"] = vm.boot_ms
        elif had_memory or (vm.boot_warning or "").startswith("not resumed"):
            result["reason"] = vm.boot_warning
        if warnings:
            result["warning"] = "; ".join([*warnings, *filter(None, [result.get("warning")])])
        return result

    def delete(self, ref: str, *, reason: str = "deleted on request") -> dict[str, Any]:
        workspace = self.ctx.find(ref)
        # Files first, records after: on a full disk the freed space is what
        # lets the records be written.
        with contextlib.suppress(NotFound):
            self.vms.discard_files(workspace["vm_id"])
        shutil.rmtree(self.root / workspace["workspace_id"], ignore_errors=True)
        with contextlib.suppress(NotFound):
            self.vms.delete_vm(workspace["vm_id"])
        self.store.delete_published_ports(workspace["workspace_id"])
        self.snapshots.remove_all(workspace["workspace_id"])
        self.store.add_tombstone(workspace["workspace_id"], workspace["name"], reason, time.time())
        self.store.delete_workspace(workspace["workspace_id"])
        return {"workspace_id": workspace["workspace_id"], "deleted": True}

    def suspend_idle(self, now: float | None = None) -> list[str]:
        """Suspend running workspaces idle past their ``idle_suspend_seconds``.

        Never one with a command or transfer in flight, nor one whose services
        publish ports (a published port must keep answering) unless it was
        created or updated with ``idle_suspend_published``: its ports then stop
        answering while it is suspended and come back when a call resumes it.
        """
        now = time.time() if now is None else now
        suspended = []
        for workspace in self.store.list_workspaces():
            limit = idle_suspend_limit(workspace)
            if not limit or now - workspace["last_activity_at"] < limit:
                continue
            lifecycle = self.ctx.state(workspace)
            vm = lifecycle.vm
            if lifecycle.state != WorkspaceState.RUNNING or vm.workspace_disk is None:
                continue
            if self.vms.busy(vm.vm_id):
                continue
            ports = self.store.published_ports(workspace["workspace_id"])
            if ports and not workspace.get("idle_suspend_published"):
                continue
            try:
                saved = self.vms.suspend_vm(vm.vm_id)
            except PyroError as exc:
                log.warning("could not suspend idle %s: %s", workspace["workspace_id"], exc)
                continue
            self.ctx.journal(workspace, "suspend", {**saved, "reason": f"idle for {limit} s"})
            suspended.append(workspace["workspace_id"])
        return suspended

    def reap_expired(self, now: float | None = None) -> list[str]:
        """Delete expired workspaces, and the remains of creates that were killed midway."""
        now = time.time() if now is None else now
        reaped = []
        workspaces = self.store.list_workspaces()
        for workspace in workspaces:
            expires = workspace["expires_at"]
            if expires is None or expires > now or self.vms.busy(workspace["vm_id"]):
                continue  # a command or transfer in flight is never cut off
            cap = workspace.get("max_lifetime_seconds")
            why = (
                f"reaped at its max_lifetime_seconds ({cap} s)"
                if cap and workspace["created_at"] + cap <= now
                else f"reaped after {workspace['ttl_seconds']} s without activity (ttl_seconds)"
            )
            with contextlib.suppress(PyroError):
                self.delete(workspace["workspace_id"], reason=why)
                reaped.append(workspace["workspace_id"])
        self._remove_orphans(
            {w["workspace_id"] for w in workspaces}, {w["vm_id"] for w in workspaces}, now
        )
        return reaped

    def _remove_orphans(self, workspace_ids: set[str], vm_ids: set[str], now: float) -> None:
        # A create killed between its steps leaves a workspace VM or folder with
        # no record. Wait out the grace period so a create in progress is safe.
        for vm in self.store.list_vms():
            if (
                vm.workspace_disk
                and vm.vm_id not in vm_ids
                and now - vm.created_at > ORPHAN_GRACE_SECONDS
            ):
                with contextlib.suppress(PyroError):
                    self.vms.delete_vm(vm.vm_id)
        if self.root.is_dir():
            for folder in self.root.iterdir():
                if (
                    folder.name not in workspace_ids
                    and now - folder.stat().st_mtime > ORPHAN_GRACE_SECONDS
                ):
                    shutil.rmtree(folder, ignore_errors=True)

    def redactor(self, ref: str) -> secret_store.Redactor:
        """Replaces the workspace's secret values in text (empty if it has none)."""
        return self.ctx.redactor(ref)


def idle_suspend_limit(workspace: dict[str, Any]) -> int:
    """Seconds of inactivity before the workspace is suspended; 0 for never."""
    value = workspace.get("idle_suspend_seconds")
    return config.DEFAULT_IDLE_SUSPEND_SECONDS if value is None else int(value)


def _check_idle_suspend(value: int | None) -> None:
    if value is not None and (
        isinstance(value, bool) or not 0 <= value <= config.MAX_IDLE_SUSPEND_SECONDS
    ):
        raise InvalidArgument(
            "idle_suspend_seconds", "must be a whole number of seconds from 0 (never) to a year"
        )


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    if not isinstance(labels, Mapping):
        raise InvalidArgument(
            "labels", f'{labels!r:.100} is not a mapping; give {{"key": "value", ...}}'
        )
    for key, value in labels.items():
        if (
            not isinstance(key, str)
            or not names.LABEL_KEY.match(key)
            or not isinstance(value, str)
            or len(value) > 256
            or "\0" in value
        ):
            raise InvalidArgument(
                "labels",
                f"{names.shown(key)}={names.shown(value)} is not a valid label: keys are 1-64 "
                "letters, digits, '.', '_', '/' or '-'; values up to 256 characters",
            )
    return dict(labels)


def _build_baseline(
    folder: Path,
    project_path: str | Path | None,
    seed_path: str | Path | None,
    origin: tuple[str, str] | None,
) -> tuple[SeedInfo, str, str]:
    """Stage the seed, keep its ignore rules and write ``baseline.ext4`` from it;
    the seed's facts and its origin (kind, reference)."""
    with staging_area(folder / "seed") as staging:
        if project_path is not None:
            root = project_source.git_toplevel(Path(project_path).expanduser())
            if root is None:
                raise InvalidArgument(
                    "project_path", f"{project_path} is not inside a Git checkout"
                )
            tracked = project_source.tracked_files(root)
            seed = stage_seed(root, staging, only=tracked)
            checkout: Path | None = root
            kind, ref = origin or ("project_path", str(root))
        else:
            source = Path(seed_path) if seed_path is not None else None
            seed = stage_seed(source, staging, as_is=True)
            checkout = project_source.checkout_at(Path(seed.source)) if seed.source else None
            tracked = project_source.tracked_files(checkout) if checkout else []
            kind, ref = origin or (("seed_path", str(seed.source)) if seed.source else ("none", ""))
        tree = seed.tree or staging
        ignore.save(folder, ignore.collect(tree, tracked, checkout=checkout))
        _make_ext4(tree, folder / "baseline.ext4")
    return seed, kind, ref


def _make_ext4(tree: Path, image: Path) -> None:
    result = host_tools.run(
        host_tools.MKFS_EXT4,
        ["-q", "-F", "-L", WORKSPACE_LABEL, "-d", tree, image, f"{WORKSPACE_DISK_MIB}M"],
        capture_output=True,
    )
    if result.returncode != 0:
        raise VMError(f"could not build the workspace disk: {result.stderr.strip()[-500:]}")


# How pyro-mcp 4.5 names a seed's kind (``workspace_seed.mode``).
_SEED_MODES = {"empty": "empty", "directory": "directory", "project": "directory"}


def workspace_seed(seed: dict[str, Any]) -> dict[str, Any]:
    """What went into /workspace at create time, in pyro-mcp 4.5's fields (``seed``
    has pyro's own, with the skipped links and unreadable files)."""
    kind = str(seed.get("kind") or "empty")
    return {
        "mode": _SEED_MODES.get(kind, "tar_archive"),
        "seed_path": seed.get("source"),
        "destination": str(WORKSPACE_ROOT),
        "entry_count": int(seed.get("file_count") or 0),
        "bytes_written": int(seed.get("bytes") or 0),
        "origin_kind": seed.get("origin_kind", "seed_path"),
        "origin_ref": seed.get("origin_ref", seed.get("source") or ""),
    }
