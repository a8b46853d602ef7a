"""``pyro prepare``: take the warm snapshot that makes create and reset sub-second.

Preparing one shape (environment, vCPUs, memory, NIC or not):

1. Under the shape's lock, see whether the current snapshot is still valid
   (``already warm``) unless forced.
2. Boot a template guest with its RAM in a file of a fresh partial directory
   (``share=on``) and stand-ins for the workspace and baseline drives, never
   mounted. Its supervisor is owner-bound to this process: killed, it stops.
3. Once the agent is ready, save the device state and quit: that guest never
   runs again (it would change the RAM file every warm VM maps).
4. Prove it: in a throwaway state dir, create a workspace from the candidate,
   run a command, reset, delete. Each start must be warm.
5. Write the manifest last and swap ``current``. Until then nothing uses the
   partial directory; a failure (or kill -9, or a full disk) leaves the previous
   snapshot current and the partial for the next prepare or prune to remove.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyro_mcp import config
from pyro_mcp.environments.builder import Progress
from pyro_mcp.environments.cache import InstalledEnvironment
from pyro_mcp.errors import HostSetupError, PyroError, VMError
from pyro_mcp.models import VmRecord, VmState
from pyro_mcp.vm import backend, control_ops, disks, warm
from pyro_mcp.vm.files import VmFiles
from pyro_mcp.vm.service import VmService


def _quiet(_: str) -> None:
    pass


def prepare(
    vms: VmService,
    environment: str = config.DEFAULT_ENVIRONMENT,
    *,
    network: bool = True,
    force: bool = False,
    vcpu_count: int = config.DEFAULT_VCPU_COUNT,
    mem_mib: int = config.DEFAULT_MEM_MIB,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Build ``environment`` if needed and take its warm snapshot(s).

    Args:
        network: also prepare the shape with a NIC, for workspaces with egress
            (a snapshot without a NIC cannot gain one); on by default, since
            installing a project's dependencies needs the network.
        force: take new snapshots even when the current ones are valid.

    Returns:
        ``environment``, ``accel``, ``already_warm`` (every shape was), and per
        shape ``snapshots``: ``network``, ``status`` (``already warm`` or
        ``prepared``), ``path``, ``bytes``, ``seconds``, ``proof`` timings.
    """
    started = time.monotonic()
    progress(f"phase=environment checking {environment}")
    installed = vms.environments.ensure(environment, progress)
    decision = vms.accel_decision(installed)
    results = []
    for with_network in (False, True) if network else (False,):
        key = vms.warm_key(
            installed,
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
            network=with_network,
            accel_name=decision.accel,
        )
        results.append(_prepare_shape(vms, installed, key, force, progress))
    return {
        "environment": environment,
        "accel": decision.accel,
        "already_warm": all(r["status"] == "already warm" for r in results),
        # pyro-mcp 4.5's names: the daily loop is ready after this call (it is,
        # or the call raised), and whether every snapshot was already there.
        "prepared": True,
        "reused": all(r["status"] == "already warm" for r in results),
        "network_prepared": any(r["network"] for r in results),
        "snapshots": results,
        "seconds": round(time.monotonic() - started, 2),
    }


def _prepare_shape(
    vms: VmService,
    installed: InstalledEnvironment,
    key: warm.WarmKey,
    force: bool,
    progress: Progress,
) -> dict[str, Any]:
    started = time.monotonic()
    label = f"{key.environment} ({key.shape})"
    with vms.warm.lock(key):
        # Checked under the lock: a prepare that waited here finds the first's work.
        status = vms.warm.status(key)
        if status.snapshot is not None and not force:
            progress(f"phase=done {label} is already warm")
            return _describe(key, "already warm", status.snapshot, started)
        if status.status == "stale":
            progress(f"phase=stale {status.reason}")
        partial = vms.warm.new_partial(key)
        try:
            snapshot = _take(vms, installed, key, partial, progress)
            progress(f"phase=prove create, exec, reset and delete a workspace from {label}")
            proof = _prove(vms, key, snapshot)
            progress("phase=commit recording the warm manifest")
            snapshot = vms.warm.commit(key, partial, {"proof": proof})
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    described = _describe(key, "prepared", snapshot, started)
    progress(f"phase=done {label} is warm ({described['seconds']} s)")
    return described


def _take(
    vms: VmService,
    installed: InstalledEnvironment,
    key: warm.WarmKey,
    partial: Path,
    progress: Progress,
    template_hello: dict[str, Any] | None = None,
) -> warm.WarmSnapshot:
    """Boot the template guest and save it into ``partial``.

    Args:
        template_hello: extra hello arguments for the template (tests age its
            clock with ``time_ns``).
    """
    # The template's kernel zeroes all of its RAM as it boots (init_on_free):
    # the RAM file is whole until its zero pages are punched out after the save.
    _check_space(partial, max(vms.warm.estimate_bytes(key), key.mem_mib * 2**20 + FULL_DISK_BYTES))
    progress(f"phase=boot booting a template guest (accel={key.accel})")
    _make_standins(installed, partial)
    files = VmFiles(partial / "template")
    files.dir.mkdir(mode=0o700)
    template = VmRecord(
        vm_id="vm-template",
        environment=key.environment,
        state=VmState.CREATED,
        vcpu_count=key.vcpu_count,
        mem_mib=key.mem_mib,
        network=key.network,
        owner_bound=True,
        build_dir=str(installed.build_dir),
        created_at=time.time(),
        expires_at=None,
    )
    machine = vms.machine_spec(template, installed, files, key.accel)
    machine = replace(
        machine,
        root_disk=partial / warm.ROOT,
        workspace_disk=partial / warm.WORKSPACE,
        baseline_disk=partial / warm.BASELINE,
        memory_file=partial / warm.RAM,
        memory_shared=True,
        zero_freed_memory=True,
        free_page_reporting=False,
    )
    try:
        report = backend.launch(
            files,
            machine,
            config.BOOT_TIMEOUT_SECONDS,
            owner_bound=True,
            hello={"mounts": {}, **(template_hello or {})},
            # A preparer killed while the template boots (a server whose chat
            # host went away) takes it down within seconds, not after the
            # owner grace period.
            watch_pid=os.getpid(),
        )
    except VMError as exc:
        # A guest writing its RAM file on a full disk dies of SIGBUS: say so.
        _check_space(partial, FULL_DISK_BYTES, evidence=str(exc).splitlines()[0])
        raise
    progress(f"phase=save saving the template (booted in {report['boot_ms']} ms)")
    try:
        backend.save_and_exit(
            files, int(report["pid"]), control_ops.save_template, partial / warm.DEVICES, 90
        )
    finally:
        shutil.rmtree(files.dir, ignore_errors=True)
    devices = partial / warm.DEVICES
    if not devices.is_file() or devices.stat().st_size == 0:
        raise VMError("saving the template wrote no device state (is the disk full?)")
    progress("phase=sparsify punching the zero pages out of the RAM file")
    warm.punch_zero_pages(partial / warm.RAM)
    return warm.WarmSnapshot(partial, {"files": warm.describe_files(partial)})


# Below this much free space, a failed prepare is blamed on a full disk.
FULL_DISK_BYTES = 64 * 1024 * 1024


def _check_space(directory: Path, needed: int, evidence: str = "") -> None:
    """HostSetupError naming the filesystem when it has less than ``needed`` free."""
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    if free >= needed:
        return
    raise HostSetupError(
        f"not enough free disk space for a warm snapshot in {directory.parent}: "
        f"{free // 2**20} MiB free, about {needed // 2**20} MiB needed"
        + (f" ({evidence})" if evidence else "")
        + ". Free space on that filesystem (`pyro env prune` removes unused snapshots and "
        "builds), or set PYRO_CACHE_DIR to a larger one. The previous snapshot, if any, "
        "is unchanged."
    )


def _make_standins(installed: InstalledEnvironment, partial: Path) -> None:
    """The template's root overlay and the drives a workspace brings, at their sizes."""
    disks.create_overlay(installed.rootfs, partial / warm.ROOT)
    disks.create_blank(partial / warm.WORKSPACE, config.WORKSPACE_DISK_MIB)
    with (partial / warm.BASELINE).open("wb") as handle:
        handle.truncate(config.WORKSPACE_DISK_MIB * 1024 * 1024)
    os.chmod(partial / warm.BASELINE, 0o444)


def _prove(vms: VmService, key: warm.WarmKey, snapshot: warm.WarmSnapshot) -> dict[str, Any]:
    """Create, exec, reset and delete one workspace from ``snapshot``; each start warm."""
    # Imported here: the workspace service sits above the VM layer this module
    # otherwise uses, and only the proof needs it.
    from pyro_mcp.workspaces.service import WorkspaceService

    with tempfile.TemporaryDirectory(prefix=".prove-", dir=snapshot.directory) as state:
        paths = config.Paths(
            state_dir=Path(state), cache_dir=vms.paths.cache_dir, warm_dir=vms.paths.warm_dir
        )
        proving = VmService(paths, pinned_warm=snapshot, watch_pid=os.getpid())
        workspaces = WorkspaceService(proving)
        timings: dict[str, Any] = {}
        started = time.monotonic()
        created = workspaces.create(
            key.environment,
            vcpu_count=key.vcpu_count,
            mem_mib=key.mem_mib,
            network=key.network,
            host_ca=False,
        )
        try:
            timings["create_ms"] = _ms(started)
            _require_warm(created, "create")
            started = time.monotonic()
            result = workspaces.commands.run(
                created["workspace_id"], "cat /etc/hostname; ls /workspace"
            )
            timings["exec_ms"] = _ms(started)
            if result["exit_code"] != 0:
                raise VMError(f"the proof's command failed in the warm VM: {result['stderr']}")
            started = time.monotonic()
            reset = workspaces.reset(created["workspace_id"])
            timings["reset_ms"] = _ms(started)
            _require_warm(reset, "reset")
        finally:
            started = time.monotonic()
            workspaces.delete(created["workspace_id"])
            timings["delete_ms"] = _ms(started)
    return timings


def _require_warm(workspace: dict[str, Any], step: str) -> None:
    if workspace.get("boot_kind") != "warm":
        raise VMError(
            f"the new warm snapshot did not restore on {step} "
            f"({workspace.get('boot_warning') or 'it cold-booted'}); nothing was changed"
        )


def _describe(
    key: warm.WarmKey, status: str, snapshot: warm.WarmSnapshot, started: float
) -> dict[str, Any]:
    return {
        "network": key.network,
        "vcpu_count": key.vcpu_count,
        "mem_mib": key.mem_mib,
        "status": status,
        "path": str(snapshot.directory),
        "prepared_at": snapshot.manifest.get("prepared_at"),
        "bytes": snapshot.manifest.get("bytes"),
        "proof": snapshot.manifest.get("proof"),
        "seconds": round(time.monotonic() - started, 2),
    }


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def usable_snapshots(vms: VmService) -> set[Path]:
    """The current warm snapshots whose key still matches today's (prune keeps these)."""
    usable = set()
    for directory, manifest in vms.warm.current_snapshots():
        recorded = (manifest or {}).get("key") or {}
        try:
            status = vms.warm_status(
                str(recorded.get("environment")),
                vcpu_count=int(recorded.get("vcpu_count", 0)),
                mem_mib=int(recorded.get("mem_mib", 0)),
                network=bool(recorded.get("network")),
                verify=False,
            )
        except (PyroError, ValueError, TypeError):
            continue
        if status.snapshot is not None and status.snapshot.directory == directory:
            usable.add(directory)
    return usable
