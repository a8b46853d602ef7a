"""The workspace service: a VM an agent inhabits across many calls.

A workspace is a VM plus ``/workspace`` on its own disk. The seed becomes an
immutable baseline image (``baseline.ext4``, read-only); the live disk is a
qcow2 overlay on it, so creating one costs only what the workspace writes.
Every command run is journalled.

Files live in ``<state>/workspaces/<workspace_id>/``; the VM (root overlay,
sockets, logs) in ``<state>/vms/<vm_id>/``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyro_mcp import config, host_tools, names
from pyro_mcp.agent import operations as guest
from pyro_mcp.agent.client import SupervisorClient
from pyro_mcp.environments.builder import Progress
from pyro_mcp.errors import (
    InvalidArgument,
    NotFound,
    PyroError,
    StateError,
    StoreError,
    VMError,
)
from pyro_mcp.vm import disks
from pyro_mcp.vm.service import VmService, describe_command, exec_args, exec_result
from pyro_mcp.workspaces import (
    ca_trust,
    disk,
    files,
    ignore,
    lifetime,
    package_index,
    processes,
    project_source,
    transfer,
)
from pyro_mcp.workspaces import egress as workspace_egress
from pyro_mcp.workspaces import secrets as secret_store
from pyro_mcp.workspaces import snapshots as snapshot_ops
from pyro_mcp.workspaces.context import WorkspaceContext, expiry_warning
from pyro_mcp.workspaces.patch import apply_file_patch, parse_patch
from pyro_mcp.workspaces.paths import resolve_workspace_path, workspace_relative
from pyro_mcp.workspaces.seed import SeedInfo, stage_seed, staging_area

WORKSPACE_DISK_MIB = config.WORKSPACE_DISK_MIB
WORKSPACE_LABEL = "pyro-workspace"
JOURNAL_OUTPUT_BYTES = 64 * 1024
# Longer than any create takes (a cold build of an environment included).
ORPHAN_GRACE_SECONDS = 3600


log = logging.getLogger("pyro.workspaces")


DIFF_FORMATS = ("changes", "patch")
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
            self._apply_egress(row)
            self.vms.start_vm(vm_id, progress=progress)
            self._after_boot(row)
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
            self._discard_half_made(workspace_id, folder, vm_id)
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
        vm = self.vms.status_vm(workspace["vm_id"])
        suspended = self.vms.suspended(vm.vm_id) if vm.state.value == "stopped" else None
        if vm.state.value != "running" and suspended is None:
            # The VM died or stopped: QEMU took its port forwards with it.
            self.store.delete_published_ports(workspace["workspace_id"])
        extra = {"suspended_at": suspended["suspended_at"]} if suspended else {}
        return {
            **{k: v for k, v in workspace.items() if k != "vm_id"},
            "origin_kind": workspace["seed"].get("origin_kind", "seed_path"),
            "origin_ref": workspace["seed"].get(
                "origin_ref", workspace["seed"].get("source") or ""
            ),
            "state": "suspended" if suspended else vm.state.value,
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
            if vm.state.value == "running"
            else {"running": 0, "total": 0},
            **lifetime.describe(workspace),
        }

    def list_all(self) -> list[dict[str, Any]]:
        self.reap_expired()
        return [self.status(w["workspace_id"], touch=False) for w in self.store.list_workspaces()]

    def logs(self, ref: str) -> dict[str, Any]:
        workspace = self.ctx.find(ref)
        return {
            "workspace_id": workspace["workspace_id"],
            "entries": self.store.journal(workspace["workspace_id"]),
        }

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
            self._apply_egress({**workspace, **fields})
            self.ctx.journal(
                workspace,
                "egress_policy",
                {"allow_hosts": list(allow_hosts), "deny_hosts": list(deny_hosts)},
            )
        return self.status(workspace["workspace_id"])

    def exec(
        self,
        ref: str,
        command: str | Sequence[str],
        *,
        timeout_seconds: float = config.DEFAULT_TIMEOUT_SECONDS,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        secret_env: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Run a command in ``/workspace`` (or ``cwd`` under it); journal it.

        One workspace read, one VM reconcile, one guest round trip (the
        /workspace check rides along with the command), one journal write.
        """
        workspace = self.ctx.find(ref)
        secrets = self.ctx.secrets(workspace)
        secret_vars = self.ctx.secret_env(workspace, secret_env, known=secrets)
        guest_cwd = str(resolve_workspace_path(cwd or "."))
        args = exec_args(command, timeout_seconds, env, guest_cwd, secret_vars)
        started = time.time()
        try:
            # Touched when the command ends, not before: a long command must not
            # leave the workspace looking idle the moment it finishes.
            with self.ctx.connect(workspace, touch=False) as client:
                reply, repaired = self.ctx.checked_write(
                    client,
                    workspace,
                    lambda check: self.vms.exec_reply(
                        workspace["vm_id"], client, {**args, "check_workspace": check}
                    ),
                    strict=False,
                )
                result = exec_result(reply)
                if config.space_is_low(self.vms.paths.state_dir):
                    # The command may have deleted files: hand their blocks back to
                    # the host now, whatever the guest's discards did on a full disk.
                    with contextlib.suppress(PyroError):
                        guest.trim(client)
        finally:
            workspace = self.ctx.touch(workspace)
        redact = secret_store.Redactor(secrets)
        data = result.to_dict()
        data["stdout"], data["stderr"] = (
            redact.redact_text(data["stdout"]),
            redact.redact_text(data["stderr"]),
        )
        entry = {
            "command": redact.redact_text(describe_command(command)),
            "cwd": guest_cwd,
            "exit_code": result.exit_code,
            "duration_ms": result.duration_ms,
            "timed_out": result.timed_out,
            **_bounded("stdout", data["stdout"], result.stdout_truncated),
            **_bounded("stderr", data["stderr"], result.stderr_truncated),
        }
        warnings = [repaired] if repaired else []
        try:
            self.store.add_journal(workspace["workspace_id"], "exec", started, entry)
        except StoreError as exc:
            # The command ran: its output matters more than its journal entry.
            warnings.append(f"this command was not journalled: {exc}")
        warnings.extend(expiry_warning(workspace).values())
        joined = {"warning": "; ".join(warnings)} if warnings else {}
        return {"workspace_id": workspace["workspace_id"], **data, **joined}

    # -------------------------------------------------------------- files

    def file_list(self, ref: str, path: str = ".", *, recursive: bool = False) -> dict[str, Any]:
        workspace, guest_path = self.ctx.find(ref), str(resolve_workspace_path(path))
        with self.ctx.connect(workspace) as client:
            reply = guest.file_list(client, guest_path, recursive=recursive)
        return self.ctx.done(workspace, {**files.check_listing(reply)})

    def file_read(
        self, ref: str, path: str, *, max_bytes: int = files.DEFAULT_READ_BYTES
    ) -> dict[str, Any]:
        if isinstance(max_bytes, bool) or not 1 <= max_bytes <= files.MAX_READ_BYTES:
            raise InvalidArgument("max_bytes", f"must be from 1 to {files.MAX_READ_BYTES}")
        workspace, guest_path = self.ctx.find(ref), str(resolve_workspace_path(path))
        with self.ctx.connect(workspace) as client:
            reply = guest.file_read(client, guest_path, max_bytes)
        return self.ctx.done(workspace, {**files.check_read(reply, max_bytes)})

    def file_write(self, ref: str, path: str, content: str | bytes) -> dict[str, Any]:
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        if len(data) > files.MAX_READ_BYTES:
            raise InvalidArgument(
                "content", f"is larger than {files.MAX_READ_BYTES} bytes; use sync push"
            )
        workspace, guest_path = self.ctx.find(ref), str(resolve_workspace_path(path))
        encoded = base64.b64encode(data).decode("ascii")
        with self.ctx.connect(workspace) as client:
            self.ctx.checked_write(
                client,
                workspace,
                lambda check: guest.file_write(client, guest_path, encoded, check_workspace=check),
            )
        relative = workspace_relative(guest_path)
        self.ctx.journal(workspace, "write", {"path": relative, "bytes": len(data)})
        return self.ctx.done(workspace, {"path": relative, "bytes": len(data)})

    def patch_apply(self, ref: str, patch: str) -> dict[str, Any]:
        """Apply a unified diff: every hunk is checked first, then all files change at once."""
        file_patches = parse_patch(patch)
        workspace = self.ctx.find(ref)
        writes, deletes, summary = [], [], []
        with self.ctx.connect(workspace) as client:
            for file_patch in file_patches:
                guest_path = str(resolve_workspace_path(file_patch.path))
                original = self.ctx.read_text(client, guest_path) if file_patch.old_path else None
                if file_patch.old_path is None and self.ctx.exists(client, guest_path):
                    original = self.ctx.read_text(client, guest_path)
                result = apply_file_patch(file_patch, original)
                relative = workspace_relative(guest_path)
                if result is None:
                    deletes.append(guest_path)
                    summary.append({"path": relative, "status": "deleted"})
                else:
                    encoded = base64.b64encode(result.encode("utf-8")).decode("ascii")
                    writes.append({"path": guest_path, "content": encoded})
                    status = "added" if file_patch.old_path is None else "modified"
                    summary.append({"path": relative, "status": status})
            self.ctx.checked_write(
                client,
                workspace,
                lambda check: guest.files_apply(client, writes, deletes, check_workspace=check),
            )
        self.ctx.journal(workspace, "patch", {"files": summary})
        return self.ctx.done(workspace, {"applied": True, "files": summary})

    def diff(
        self, ref: str, *, include_ignored: bool = False, format: str = "changes"
    ) -> dict[str, Any]:
        """Changes against the immutable create-time baseline.

        A workspace seeded from a Git project leaves out what the project's
        ignore rules ignore unless ``include_ignored``; ``ignored_count`` says
        how many paths were left out. ``format="patch"`` writes binary files as
        Git binary patches, so the whole ``patch`` goes through ``git apply``.
        """
        if format not in DIFF_FORMATS:
            raise InvalidArgument("format", f"use one of {', '.join(DIFF_FORMATS)}")
        workspace = self.ctx.find(ref)
        folder = self.root / workspace["workspace_id"]
        rules = None if include_ignored else ignore.IgnoreRules.load(folder)
        left_out: list[str] = []
        with self.ctx.connect(workspace) as client:
            if rules is not None:  # which changes the rules leave out, then the diff without them
                listing = files.check_diff(guest.diff(client, {"patch": False, "collapse": True}))
                left_out = ignore.left_out(rules, listing["changes"])
            args = {"exclude": left_out, "git_binary": format == "patch"}
            reply = guest.diff(client, args)
        result = files.check_diff(reply)
        return self.ctx.done(
            workspace, {**result, "format": format, "ignored_count": len(left_out)}
        )

    def _ignored(
        self, client: SupervisorClient, workspace: dict[str, Any], top: str, include: bool
    ) -> list[str]:
        """What the project's ignore rules leave out under ``top`` (nothing if ``include``)."""
        rules = None if include else ignore.IgnoreRules.load(self.root / workspace["workspace_id"])
        return [] if rules is None else ignore.ignored_under(client, rules, top)

    def sync_push(self, ref: str, source: str | Path, *, dest: str = ".") -> dict[str, Any]:
        """Copy a host directory or archive into /workspace/<dest>."""
        workspace, guest_dest = self.ctx.find(ref), str(resolve_workspace_path(dest))
        with self.ctx.connect(workspace) as client:
            self.ctx.check_writable(client, workspace)
            info, _ = transfer.push_tree(client, Path(source), guest_dest)
        record = {
            "source": info.source,
            "dest": workspace_relative(guest_dest),
            "files": info.file_count,
            "bytes": info.bytes,
            "skipped_links": info.skipped_links,
        }
        self.ctx.journal(workspace, "sync", record)
        return self.ctx.done(workspace, {**record})

    def export(
        self,
        ref: str,
        path: str,
        output: str | Path,
        *,
        overwrite: bool = False,
        include_ignored: bool = False,
    ) -> dict[str, Any]:
        """Copy a file or directory under /workspace to ``output`` on the host.

        A directory from a workspace seeded from a Git project leaves out what
        the project's ignore rules ignore, unless ``include_ignored``.
        """
        workspace, guest_path = self.ctx.find(ref), str(resolve_workspace_path(path))
        target = transfer.check_output(Path(output), overwrite)  # before any guest work
        with (
            self.ctx.connect(workspace) as client,
            tempfile.TemporaryDirectory(prefix="pyro-export-") as tmp,
        ):
            left_out = self._ignored(
                client, workspace, workspace_relative(guest_path), include_ignored
            )
            archive, kind = transfer.fetch_tree(client, guest_path, Path(tmp), exclude=left_out)
            result = transfer.extract_export(archive, kind, target, overwrite)
        record = {"path": workspace_relative(guest_path), **result, "ignored_count": len(left_out)}
        self.ctx.journal(workspace, "export", record)
        return self.ctx.done(workspace, {**record})

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
        self._apply_egress(workspace)
        self.vms.start_vm(workspace["vm_id"])
        self._after_boot(workspace)
        self.ctx.journal(workspace, "reset", {"to": snapshot or snapshot_ops.BASELINE})
        return self.status(workspace["workspace_id"])

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
        changes: dict[str, Any] | None = None
        note = None
        if status["state"] in ("running", "suspended"):  # the diff resumes a suspended one
            diff = self.diff(workspace["workspace_id"], include_ignored=include_ignored)
            changes = {
                "counts": diff["counts"],
                "files": [{"path": c["path"], "status": c["status"]} for c in diff["changes"]],
                "ignored_count": diff["ignored_count"],
            }
        else:
            note = f"the workspace is {status['state']}; start it to see file changes"
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
            "host_crossings": crossings,
            "note": note,
            **expiry_warning(self.store.find_workspace(workspace["workspace_id"]) or workspace),
        }

    def stop(self, ref: str, *, discard_memory: bool = False) -> dict[str, Any]:
        """Suspend the workspace (memory saved, every process carries on at start), or
        with ``discard_memory`` stop it (the disks are kept; processes end)."""
        workspace = self.ctx.find(ref)
        vm = self.vms.status_vm(workspace["vm_id"])
        if vm.state.value == "running" and not discard_memory:
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
        self._apply_egress(workspace)  # from the record: a damaged egress.json heals here
        vm = self.vms.start_vm(workspace["vm_id"])
        resumed = vm.boot_kind == "resumed"
        warnings = []
        if resumed:
            warnings = self._republish(workspace)
            self.ctx.journal(workspace, "resume", {"resume_ms": vm.boot_ms})
        else:
            self.store.delete_published_ports(workspace["workspace_id"])
            self._after_boot(workspace)
        result: dict[str, Any] = {**self.status(workspace["workspace_id"]), "resumed": resumed}
        if resumed:
            result["resume_ms"] = vm.boot_ms
        elif had_memory or (vm.boot_warning or "").startswith("not resumed"):
            result["reason"] = vm.boot_warning
        if warnings:
            result["warning"] = "; ".join([*warnings, *filter(None, [result.get("warning")])])
        return result

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
        label = parent["name"] or parent["workspace_id"]
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_FORKS:
            raise InvalidArgument("count", f"must be a whole number from 1 to {MAX_FORKS}")
        state = self.status(parent["workspace_id"])["state"]
        if state != "running":
            raise StateError(
                f"workspace {label}",
                state,
                "running",
                f"Start it first (`pyro workspace start {label}`), then fork it.",
            )
        fork_names: list[str | None] = [None] * count
        if name is not None:
            fork_names = [name] if count == 1 else [f"{name}-{i}" for i in range(1, count + 1)]
            for each in fork_names:
                names.check_name("name", each)
                if self.store.find_workspace(str(each)) is not None:
                    raise InvalidArgument("name", f"a workspace called {each!r} exists")
        # Checked for all K at once: the forks start side by side.
        self.vms.check_capacity(more=count)
        started = time.monotonic()
        work = self.root / f".fork-{uuid.uuid4().hex[:8]}"
        work.mkdir()
        try:
            # The source's live tops become layers every fork shares: a fork costs
            # what it writes, and so does the source from now on.
            saved, (root_layer, workspace_layer) = self.vms.fork_save(
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
                        self.delete(future.result()["workspace_id"], reason="a sibling fork failed")
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
        folder = self.root / workspace_id
        folder.mkdir(mode=0o700)
        parent_folder = self.root / parent["workspace_id"]
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
            record = self.vms.clone_vm(
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
            self.store.insert_workspace(row)
            self._apply_egress(row)
            self.vms.start_vm(vm_id)
            self.ctx.journal(row, "fork", {"from": parent["workspace_id"]})
            warnings = self._publish_like(parent, row)
        except BaseException:
            self._discard_half_made(workspace_id, folder, vm_id)
            raise
        status = self.status(workspace_id)
        if status.get("boot_kind") != "resumed":
            warnings.insert(
                0,
                f"this fork booted from its disks ({status.get('boot_warning')}): "
                "the source's running processes, shells and /tmp were not carried over",
            )
        if warnings:
            status["warning"] = "; ".join(warnings)
        return status

    def _discard_half_made(self, workspace_id: str, folder: Path, vm_id: str | None) -> None:
        """Remove what a create or fork that failed midway made: VM, record, folder."""
        if vm_id is not None:
            with contextlib.suppress(PyroError):
                self.vms.delete_vm(vm_id)
        self.store.delete_workspace(workspace_id)
        shutil.rmtree(folder, ignore_errors=True)

    def _publish_like(self, parent: dict[str, Any], fork: dict[str, Any]) -> list[str]:
        """Publish a fork's copies of the parent's published ports, on new host ports."""
        rows = self.store.published_ports(parent["workspace_id"])
        warnings: list[str] = []
        if not rows:
            return warnings
        with self.ctx.connect(fork) as client:
            for row in rows:
                port = processes.free_host_port()
                try:
                    client.call(
                        "hostfwd",
                        {"action": "add", "host_port": port, "guest_port": row["guest_port"]},
                    )
                except PyroError as exc:
                    warnings.append(f"guest port {row['guest_port']} not published: {exc}")
                    continue
                self.store.add_published_port(
                    fork["workspace_id"], row["service"], port, row["guest_port"]
                )
        return warnings

    def _republish(self, workspace: dict[str, Any]) -> list[str]:
        """Put a resumed workspace's published ports back (QEMU's forwards died with it)."""
        warnings = []
        rows = self.store.published_ports(workspace["workspace_id"])
        if not rows:
            return []
        with self.ctx.connect(workspace) as client:
            for row in rows:
                try:
                    client.call(
                        "hostfwd",
                        {
                            "action": "add",
                            "host_port": row["host_port"],
                            "guest_port": row["guest_port"],
                        },
                    )
                except PyroError as exc:
                    self.store.delete_published_ports(workspace["workspace_id"], row["service"])
                    warnings.append(
                        f"port {row['host_port']} of service {row['service']} could not be "
                        f"published again ({exc}); restart the service to publish it"
                    )
        return warnings

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
            vm = self.vms.status_vm(workspace["vm_id"])
            if vm.state.value != "running" or vm.workspace_disk is None:
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

    def _apply_egress(self, workspace: dict[str, Any]) -> None:
        """Hand the workspace's egress policy to its VM (now if running, else at boot)."""
        policy = workspace_egress.policy_of(workspace)
        if policy is None:
            return
        folder = self.root / workspace["workspace_id"]
        self.vms.set_egress(
            workspace["vm_id"],
            workspace_egress.config_for(workspace, folder, policy, self.store.path),
        )

    def _after_boot(self, workspace: dict[str, Any]) -> None:
        """Per-boot guest set-up: secrets, and the host's CAs for a workspace with egress."""
        values = workspace_egress.guest_values(
            workspace_egress.policy_of(workspace),
            secret_store.load(self.root / workspace["workspace_id"] / "secrets"),
        )
        if values:
            encoded = {
                name: base64.b64encode(value).decode("ascii") for name, value in values.items()
            }
            with self.vms.connect(workspace["vm_id"], "Start it first.") as client:
                guest.secrets_put(client, encoded)
        vm = self.vms.status_vm(workspace["vm_id"])
        if not vm.network:
            return
        index = package_index.host_settings()
        if not index.empty():
            with self.vms.connect(workspace["vm_id"], "Start it first.") as client:
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
        with self.vms.connect(workspace["vm_id"], "Start it first.") as client:
            guest.trust_ca(client, base64.b64encode(bundle).decode("ascii"))


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


def _bounded(name: str, text: str, truncated: bool) -> dict[str, Any]:
    data = text.encode("utf-8", errors="replace")
    kept = data[:JOURNAL_OUTPUT_BYTES].decode("utf-8", errors="ignore")
    return {name: kept, f"{name}_truncated": truncated or len(data) > JOURNAL_OUTPUT_BYTES}


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
