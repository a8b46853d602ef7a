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
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from pyro_mcp import config, host_tools
from pyro_mcp.environments.builder import Progress
from pyro_mcp.errors import InvalidArgument, NotFound, PyroError, VMError
from pyro_mcp.vm import disks
from pyro_mcp.vms import VmService, describe_command
from pyro_mcp.workspaces.seed import stage_seed

# Every workspace disk has the same virtual size (memory snapshots rely on it);
# it is sparse, so only what is written costs space.
WORKSPACE_DISK_MIB = 8192
WORKSPACE_LABEL = "pyro-workspace"
WORKSPACE_ROOT = PurePosixPath("/workspace")
JOURNAL_OUTPUT_BYTES = 64 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")


def _quiet(_: str) -> None:
    pass


class WorkspaceService:
    def __init__(self, vms: VmService) -> None:
        self.vms = vms
        self.store = vms.store
        self.root = vms.paths.state_dir / "workspaces"

    # -------------------------------------------------------------- create

    def create(
        self,
        environment: str = config.DEFAULT_ENVIRONMENT,
        *,
        seed_path: str | Path | None = None,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        ttl_seconds: int | None = None,
        vcpu_count: int = config.DEFAULT_VCPU_COUNT,
        mem_mib: int = config.DEFAULT_MEM_MIB,
        network: bool = False,
        progress: Progress = _quiet,
    ) -> dict[str, Any]:
        """Seed a workspace and boot it. On any failure nothing is left behind."""
        if name is not None and not _NAME.match(name):
            raise InvalidArgument("name", f"{name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        labels = check_labels(labels or {})
        if name is not None and self.store.find_workspace(name) is not None:
            raise InvalidArgument("name", f"a workspace called {name!r} exists")
        self.reap_expired()
        workspace_id = "ws-" + uuid.uuid4().hex[:12]
        folder = self.root / workspace_id
        folder.mkdir(parents=True, mode=0o700)
        vm_id: str | None = None
        try:
            progress("phase=seed staging the seed")
            staging = folder / "seed"
            seed = stage_seed(Path(seed_path) if seed_path is not None else None, staging)
            _make_ext4(staging, folder / "baseline.ext4")
            shutil.rmtree(staging)
            os.chmod(folder / "baseline.ext4", 0o444)
            disks.create_overlay(folder / "baseline.ext4", folder / "workspace.qcow2")
            record = self.vms.create_vm(
                environment,
                vcpu_count=vcpu_count,
                mem_mib=mem_mib,
                network=network,
                progress=progress,
                workspace_disk=folder / "workspace.qcow2",
            )
            vm_id = record.vm_id
            now = time.time()
            self.store.insert_workspace(
                {
                    "workspace_id": workspace_id,
                    "name": name,
                    "labels": labels,
                    "environment": environment,
                    "vm_id": vm_id,
                    "seed": seed.to_dict(),
                    "created_at": now,
                    "last_activity_at": now,
                    "expires_at": now + ttl_seconds if ttl_seconds else None,
                }
            )
            self.vms.start_vm(vm_id, progress=progress)
        except BaseException:
            if vm_id is not None:
                with contextlib.suppress(PyroError):
                    self.vms.delete_vm(vm_id)
            self.store.delete_workspace(workspace_id)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self.status(workspace_id)

    # ------------------------------------------------------------- queries

    def status(self, ref: str) -> dict[str, Any]:
        workspace = self._find(ref)
        vm = self.vms.status_vm(workspace["vm_id"])
        return {
            **{k: v for k, v in workspace.items() if k != "vm_id"},
            "state": vm.state.value,
            "accel": vm.accel,
            "vm_id": vm.vm_id,
            "last_error": vm.last_error,
            "command_count": len(self.store.journal(workspace["workspace_id"])),
        }

    def list_all(self) -> list[dict[str, Any]]:
        self.reap_expired()
        return [self.status(w["workspace_id"]) for w in self.store.list_workspaces()]

    def logs(self, ref: str) -> dict[str, Any]:
        workspace = self._find(ref)
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
        labels: dict[str, str] | None = None,
        clear_labels: Sequence[str] = (),
    ) -> dict[str, Any]:
        workspace = self._find(ref)
        merged = {k: v for k, v in workspace["labels"].items() if k not in set(clear_labels)}
        merged.update(check_labels(labels or {}))
        fields: dict[str, Any] = {"labels": merged}
        if name is not None:
            if not _NAME.match(name):
                raise InvalidArgument(
                    "name", f"{name!r}: use 1-64 letters, digits, '.', '_' or '-'"
                )
            fields["name"] = name
        self.store.update_workspace(workspace["workspace_id"], **fields)
        return self.status(workspace["workspace_id"])

    def exec(
        self,
        ref: str,
        command: str | Sequence[str],
        *,
        timeout_seconds: float = config.DEFAULT_TIMEOUT_SECONDS,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run a command in ``/workspace`` (or ``cwd`` under it); journal it."""
        workspace = self._find(ref)
        guest_cwd = str(resolve_workspace_path(cwd or "."))
        started = time.time()
        try:
            result = self.vms.exec_vm(
                workspace["vm_id"], command, timeout_seconds=timeout_seconds, env=env, cwd=guest_cwd
            )
        finally:
            self.store.update_workspace(workspace["workspace_id"], last_activity_at=time.time())
        data = result.to_dict()
        self.store.add_journal(
            workspace["workspace_id"],
            "exec",
            started,
            {
                "command": describe_command(command),
                "cwd": guest_cwd,
                "exit_code": result.exit_code,
                "duration_ms": result.duration_ms,
                "timed_out": result.timed_out,
                **_bounded("stdout", result.stdout, result.stdout_truncated),
                **_bounded("stderr", result.stderr, result.stderr_truncated),
            },
        )
        return {"workspace_id": workspace["workspace_id"], **data}

    def stop(self, ref: str) -> dict[str, Any]:
        workspace = self._find(ref)
        self.vms.stop_vm(workspace["vm_id"])
        return self.status(workspace["workspace_id"])

    def start(self, ref: str) -> dict[str, Any]:
        workspace = self._find(ref)
        self.vms.start_vm(workspace["vm_id"])
        self.store.update_workspace(workspace["workspace_id"], last_activity_at=time.time())
        return self.status(workspace["workspace_id"])

    def delete(self, ref: str) -> dict[str, Any]:
        workspace = self._find(ref)
        with contextlib.suppress(NotFound):
            self.vms.delete_vm(workspace["vm_id"])
        shutil.rmtree(self.root / workspace["workspace_id"], ignore_errors=True)
        self.store.delete_workspace(workspace["workspace_id"])
        return {"workspace_id": workspace["workspace_id"], "deleted": True}

    def reap_expired(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        reaped = []
        for workspace in self.store.list_workspaces():
            expires = workspace["expires_at"]
            if expires is not None and expires <= now:
                with contextlib.suppress(PyroError):
                    self.delete(workspace["workspace_id"])
                    reaped.append(workspace["workspace_id"])
        return reaped

    def _find(self, ref: str) -> dict[str, Any]:
        workspace = self.store.find_workspace(ref)
        if workspace is None:
            raise NotFound(f"no workspace {ref!r}; see `pyro workspace list`")
        return workspace


def resolve_workspace_path(path: str) -> PurePosixPath:
    """``path`` (relative to /workspace, or absolute inside it) as an absolute guest path.

    Raises:
        InvalidArgument: the path leaves /workspace.
    """
    candidate = PurePosixPath(path)
    if not candidate.is_absolute():
        candidate = WORKSPACE_ROOT / candidate
    parts: list[str] = []
    for part in candidate.parts[1:]:
        if part == "..":
            if not parts:
                raise InvalidArgument("path", f"{path!r} is outside /workspace")
            parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    resolved = PurePosixPath("/", *parts)
    if resolved != WORKSPACE_ROOT and WORKSPACE_ROOT not in resolved.parents:
        raise InvalidArgument("path", f"{path!r} is outside /workspace")
    return resolved


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if not _LABEL_KEY.match(key) or not isinstance(value, str) or len(value) > 256:
            raise InvalidArgument("labels", f"{key!r}={value!r} is not a valid label")
    return dict(labels)


def _bounded(name: str, text: str, truncated: bool) -> dict[str, Any]:
    data = text.encode("utf-8", errors="replace")
    kept = data[:JOURNAL_OUTPUT_BYTES].decode("utf-8", errors="ignore")
    return {name: kept, f"{name}_truncated": truncated or len(data) > JOURNAL_OUTPUT_BYTES}


def _make_ext4(tree: Path, image: Path) -> None:
    mkfs = host_tools.require(host_tools.MKFS_EXT4)["mkfs.ext4"]
    result = subprocess.run(
        [
            str(mkfs),
            "-q",
            "-F",
            "-L",
            WORKSPACE_LABEL,
            "-d",
            str(tree),
            str(image),
            f"{WORKSPACE_DISK_MIB}M",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise VMError(f"could not build the workspace disk: {result.stderr.strip()[-500:]}")
