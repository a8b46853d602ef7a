"""The VM service: the lifecycle of raw VMs and one-shot runs.

Stays one module on purpose (~1,000 lines): it is the one door from above to
the VM layer, and every path that changes a VM (create, start, warm restore,
suspend, resume, fork, clone, stop, delete) takes the VM's lifecycle lock and
reconciles its record with its supervisor here. Split, each part would need the
same lock, store and record reconciliation; what stands alone is beside it
(``disks``, ``warm``, ``suspend``, ``thin``, ``reclaim``, ``commands``).

Every surface (CLI, SDK, later MCP and workspaces) reaches VMs through here.
Records live in the SQLite store; disks, sockets and logs in
``<state>/vms/<vm_id>/``. Reads reconcile records with reality: a VM whose
supervisor is gone is shown ``stopped`` with the reason, never ``running``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyro_mcp import config, host_tools, names
from pyro_mcp.agent import operations as guest
from pyro_mcp.agent.client import SupervisorClient
from pyro_mcp.egress import config as egress_config
from pyro_mcp.environments import images
from pyro_mcp.environments.builder import Progress
from pyro_mcp.environments.cache import EnvironmentCache, InstalledEnvironment
from pyro_mcp.environments.catalog import CATALOG
from pyro_mcp.errors import (
    AgentError,
    InvalidArgument,
    NotFound,
    PyroError,
    StateError,
    StoreError,
    VMError,
)
from pyro_mcp.models import ExecResult, RunResult, VmRecord, VmState, require_state
from pyro_mcp.store.db import Store
from pyro_mcp.vm import (
    accel,
    backend,
    control_ops,
    disks,
    env_build,
    image_builder,
    supervisor,
    suspend,
    thin,
    warm,
)
from pyro_mcp.vm.commands import exec_args, exec_result
from pyro_mcp.vm.files import VmFiles
from pyro_mcp.vm.qemu import MachineSpec, qemu_version

# POSIX file locks: the engine's. A remote client on Windows imports this module
# (through the SDK) but never takes one.
with contextlib.suppress(ImportError):
    import fcntl

MAX_VCPU_COUNT = 8
# Room kept free beyond a suspended guest's memory (its devices, the filesystem's own).
SUSPEND_MARGIN_BYTES = 64 * 2**20
MIN_MEM_MIB, MAX_MEM_MIB = 128, 16384
KVM_PROBE_BOOT_SECONDS = 20.0


log = logging.getLogger("pyro.vms")


def _quiet(_: str) -> None:
    pass


class VmService:
    """Creates, starts, runs commands in, stops and deletes VMs.

    A start restores the matching warm snapshot (see ``vm/warm.py``) when there
    is a valid one and the VM's root disk is fresh, and cold-boots otherwise.

    Args:
        pinned_warm: restore from this snapshot instead of looking one up
            (``pyro prepare`` proves a snapshot before making it current).
        watch_pid: VMs started here stop when this process is gone.
    """

    def __init__(
        self,
        paths: config.Paths,
        *,
        pinned_warm: warm.WarmSnapshot | None = None,
        watch_pid: int | None = None,
    ) -> None:
        paths.ensure()
        self.paths = paths
        self.store = Store(paths.db_path)
        self.environments = EnvironmentCache(paths.cache_dir)
        self.warm = warm.WarmStore(paths.warm_root)
        self.pinned_warm = pinned_warm
        self.watch_pid = watch_pid

    # ------------------------------------------------------------ lifecycle

    def create_vm(
        self,
        environment: str = config.DEFAULT_ENVIRONMENT,
        *,
        vcpu_count: int = config.DEFAULT_VCPU_COUNT,
        mem_mib: int = config.DEFAULT_MEM_MIB,
        network: bool = False,
        ttl_seconds: int | None = None,
        progress: Progress = _quiet,
        owner_bound: bool = False,
        workspace_disk: Path | None = None,
        baseline_disk: Path | None = None,
    ) -> VmRecord:
        """Record a new VM and give it a root overlay; it is not booted yet.

        Builds the environment first when it is not installed.
        """
        if environment not in CATALOG:
            self.environments.status(environment)  # NotFound names what is installed
        _check_range("vcpu_count", vcpu_count, 1, MAX_VCPU_COUNT)
        _check_range("mem_mib", mem_mib, MIN_MEM_MIB, MAX_MEM_MIB)
        if ttl_seconds is not None:
            _check_range("ttl_seconds", ttl_seconds, 1, 365 * 24 * 3600)
        host_tools.require(*host_tools.RUNTIME_TOOLS)
        installed = self.environments.ensure(environment, progress)
        vm_id = "vm-" + uuid.uuid4().hex[:12]
        files = self._files(vm_id)
        now = time.time()
        record = VmRecord(
            vm_id=vm_id,
            environment=environment,
            state=VmState.CREATED,
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
            network=network,
            owner_bound=owner_bound,
            build_dir=str(installed.build_dir),
            created_at=now,
            expires_at=now + ttl_seconds if ttl_seconds else None,
            workspace_disk=str(workspace_disk) if workspace_disk else None,
            baseline_disk=str(baseline_disk) if baseline_disk else None,
        )
        files.dir.mkdir(parents=True, mode=0o700)
        try:
            disks.create_overlay(installed.rootfs, files.root_disk)
            self.store.insert_vm(record)
        except BaseException:
            shutil.rmtree(files.dir, ignore_errors=True)
            raise
        return record

    @contextlib.contextmanager
    def lifecycle_lock(self, vm_id: str) -> Iterator[None]:
        """Held while the VM starts, resumes or suspends: other calls wait for it."""
        files = self._files(vm_id)
        try:
            fd = os.open(files.dir / "lifecycle.lock", os.O_CREAT | os.O_RDWR, 0o600)
        except FileNotFoundError:
            yield  # no VM directory: the caller's own checks say what is wrong
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def start_vm(self, vm_id: str, *, progress: Progress = _quiet) -> VmRecord:
        """Boot the VM (or restore it warm, or resume it) and wait until its agent answers."""
        with self.lifecycle_lock(vm_id):
            return self._start_vm(vm_id, progress)

    def _start_vm(self, vm_id: str, progress: Progress) -> VmRecord:
        record = self.status_vm(vm_id)
        require_state(
            vm_id,
            record.state,
            (VmState.CREATED, VmState.STOPPED),
            "It is already running; use exec_vm, or stop_vm first.",
        )
        self.check_capacity(exclude=vm_id)
        self.settle_disks(vm_id)  # a VM that died after a fork left its drives renamed
        files = self._files(vm_id)
        installed = self._installed_for(record)
        decision = self.accel_decision(installed)
        files.exit_record.unlink(missing_ok=True)
        report, warning = self._resume(record, installed, files, decision.accel, progress)
        snapshot: warm.WarmSnapshot | None = None
        if report is None and warning is None:
            snapshot, warning = self._warm_snapshot(record, installed, decision.accel)
        if snapshot is not None:
            progress(f"phase=start restoring a warm {record.environment} snapshot")
            try:
                report = self._launch_warm(record, installed, files, decision.accel, snapshot)
            except (VMError, OSError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                warning = (
                    f"the warm snapshot did not restore ({first}), so the VM cold-booted; "
                    f"run `pyro prepare {record.environment} --force` to take a new one"
                )
                log.warning("%s: %s", vm_id, warning)
                files.exit_record.unlink(missing_ok=True)
                _fresh_root(installed, files)  # the failed guest may have written to it
        if report is None:
            progress(f"phase=start booting {record.environment} (accel={decision.accel})")
            machine = self.machine_spec(record, installed, files, decision.accel)
            try:
                report = backend.launch(
                    files,
                    machine,
                    config.BOOT_TIMEOUT_SECONDS,
                    owner_bound=record.owner_bound,
                    hello=self._hello(record, installed),
                    watch_pid=self.watch_pid,
                )
            except VMError as exc:
                self.store.update_vm(vm_id, state=VmState.STOPPED, last_error=str(exc)[:4000])
                raise
        if _memory_layout(files) != "base":
            files.memory_base.unlink(missing_ok=True)  # a thin state would need the guest on it
        self.store.update_vm(
            vm_id,
            state=VmState.RUNNING,
            accel=decision.accel,
            started_at=time.time(),
            supervisor_pid=int(report["pid"]),
            boot_ms=int(report.get("boot_ms", 0)),
            boot_kind=str(report.get("boot_kind", "cold")),
            boot_warning=warning,
            fresh_root=False,
            last_error=None,
        )
        return self._get(vm_id)

    def suspend_vm(self, vm_id: str) -> dict[str, Any]:
        """Save a running VM whole (memory, devices) next to its disks; its process exits.

        The next ``start_vm`` resumes it: every process in the guest carries on.
        If saving fails (no room), the VM keeps running and the error says so.

        Returns:
            ``suspend_ms`` and ``memory_bytes`` (the size of the saved state).
        """
        with self.lifecycle_lock(vm_id):
            return self._suspend_vm(vm_id)

    def _suspend_vm(self, vm_id: str) -> dict[str, Any]:
        record = self.status_vm(vm_id)
        require_state(vm_id, record.state, (VmState.RUNNING,), "Start it first.")
        if record.workspace_disk is None:
            raise StateError(
                f"VM {vm_id}", "a raw VM", "a workspace's VM", "Stop it with `pyro vm stop`."
            )
        files = self._files(vm_id)
        installed = self._installed_for(record)
        memory = _memory_layout(files)
        _check_room_for_memory(files, record)
        suspend.discard(files.dir)
        try:
            with SupervisorClient(files.control_socket) as client:
                result = control_ops.suspend(
                    client,
                    suspend.partial(files.dir),
                    timeout=supervisor.SUSPEND_TIMEOUT_SECONDS + 10,
                )
        except (VMError, AgentError) as exc:
            suspend.discard(files.dir)
            if self._still_running(record, files):
                raise VMError(f"could not suspend {vm_id}; it keeps running: {exc}") from exc
            self._reconcile(self._get(vm_id))
            raise VMError(
                f"{vm_id} died while it was being suspended ({exc}); its disks are intact: "
                "start it again (it boots from them)"
            ) from exc
        if record.supervisor_pid is not None:
            backend.wait_for_exit(record.supervisor_pid, backend.STOP_WAIT_SECONDS)
        self.settle_disks(vm_id)
        if memory == "base":
            memory = _thin(vm_id, suspend.partial(files.dir), files.memory_base)
        machine = self._resume_machine(record, installed, files, record.accel or "tcg", memory)
        saved = suspend.record(files.dir, machine, memory)
        self.store.update_vm(vm_id, state=VmState.STOPPED, supervisor_pid=None)
        return {"suspend_ms": int(result.get("suspend_ms", 0)), "memory_bytes": saved.bytes}

    def _still_running(self, record: VmRecord, files: VmFiles) -> bool:
        """After a failed suspend: does the guest still run (or did its VM die)?"""
        try:
            with SupervisorClient(files.control_socket) as client:
                guest.ping(client)
            return True
        except PyroError:
            if record.supervisor_pid is not None:
                backend.wait_for_exit(record.supervisor_pid, backend.STOP_WAIT_SECONDS)
            return False

    def fork_save(self, vm_id: str, memory: Path) -> tuple[dict[str, Any], list[disks.Layer]]:
        """Save a running VM's memory and freeze its drives during one brief pause.

        Each drive's live top becomes a read-only layer and the VM runs on, on a
        new empty top (see ``disks``). Returns ``pause_ms`` and ``memory`` (how
        the forks' RAM is laid out, see ``vm/suspend.py``; with ``base``, the
        RAM file the memory was thinned against is linked next to ``memory`` as
        ``memory.base``), and the layers of its root and workspace drives, in
        that order. If it fails, the VM runs on as before.
        """
        with self.lifecycle_lock(vm_id):
            record = self.status_vm(vm_id)
            require_state(vm_id, record.state, (VmState.RUNNING,), "Start it first.")
            files = self._files(vm_id)
            layout = _memory_layout(files)
            _check_room_for_memory(files, record)
            splits: list[disks.Split] = []
            try:
                for drive in self._drives(record):
                    splits.append(disks.split(drive))
                with SupervisorClient(files.control_socket) as client:
                    result = control_ops.fork_save(
                        client,
                        memory,
                        [[str(s.live), str(s.top)] for s in splits],
                        timeout=supervisor.SUSPEND_TIMEOUT_SECONDS + 60,
                    )
            except (VMError, AgentError) as exc:
                _undo_splits(files, splits)
                if self._still_running(record, files):
                    raise
                self._reconcile(self._get(vm_id))
                raise VMError(
                    f"{vm_id} died while it was being forked ({exc}); its disks are intact: "
                    "start it again (it boots from them)"
                ) from exc
            except BaseException:
                _undo_splits(files, splits)
                raise
            layers = [disks.freeze(s) for s in splits]
            base = memory.with_name(suspend.BASE_NAME)
            if layout == "base":
                # Linked while the source still maps it (a later warm start relinks).
                try:
                    os.link(files.memory_base, base)
                except OSError as exc:
                    log.warning("%s: fork memory kept whole (%s)", vm_id, exc)
                    layout = "anonymous"
        if layout == "base":
            layout = _thin(vm_id, memory, base)
        return {"pause_ms": int(result.get("pause_ms", 0)), "memory": layout}, layers

    def save_root(self, vm_id: str, out: Path, base: Path) -> dict[str, Any]:
        """Write the VM's root disk as it is now into ``out``: a qcow2 over ``base``
        holding what differs from it. A running VM is paused only while its root
        drive moves onto a new top (the guest's page cache flushed first); the
        old top, now read-only, is what is copied while it runs on. Returns
        ``pause_ms`` (0 for a VM that is not running)."""
        with self.lifecycle_lock(vm_id):
            record = self.status_vm(vm_id)
            files = self._files(vm_id)
            pause_ms = 0
            if record.state == VmState.RUNNING:
                prepared = disks.split(files.root_disk)
                try:
                    with SupervisorClient(files.control_socket) as client:
                        guest.sync(client)  # the page cache on disk first
                        started = time.monotonic()
                        control_ops.split(client, [[str(prepared.live), str(prepared.top)]])
                        pause_ms = int((time.monotonic() - started) * 1000)
                except BaseException:
                    _undo_splits(files, [prepared])
                    raise
                source = disks.freeze(prepared).path
            else:
                source = disks.live_top(files.root_disk)
            disks.convert_over(source, base, out)
        return {"pause_ms": pause_ms}

    def settle_disks(self, vm_id: str) -> None:
        """A stopped VM's drives under their own names again (after forks while it ran)."""
        try:
            for drive in self._drives(self._get(vm_id)):
                disks.settle(drive)
        except OSError as exc:
            raise VMError(
                f"cannot give {vm_id}'s drives their names back after a fork ({exc}); "
                "check PYRO_HOME's filesystem, then start it again"
            ) from exc

    def clone_vm(
        self,
        parent_id: str,
        *,
        root_layer: disks.Layer,
        workspace_disk: Path,
        baseline_disk: Path,
        memory: Path,
        memory_layout: str,
    ) -> VmRecord:
        """A new VM that resumes as a copy of ``parent_id`` (a fork): same build and shape,
        its own disks, the saved ``memory`` to resume from, a machine id of its own."""
        parent = self._get(parent_id)
        vm_id = "vm-" + uuid.uuid4().hex[:12]
        files = self._files(vm_id)
        record = replace(
            parent,
            vm_id=vm_id,
            state=VmState.STOPPED,
            created_at=time.time(),
            expires_at=None,
            supervisor_pid=None,
            started_at=None,
            workspace_disk=str(workspace_disk),
            baseline_disk=str(baseline_disk),
            boot_warning=None,
            fresh_root=False,
            last_error=None,
        )
        files.dir.mkdir(parents=True)
        try:
            disks.stack_on(root_layer, files.dir)  # root.qcow2 on the shared layers
            os.link(memory, suspend.partial(files.dir))
            if memory_layout == "base":
                os.link(memory.with_name(suspend.BASE_NAME), files.memory_base)
            installed = self._installed_for(record)
            machine = self._resume_machine(
                record, installed, files, record.accel or "tcg", memory_layout
            )
            suspend.record(files.dir, machine, memory_layout, fresh_identity=True)
            self.store.insert_vm(record)
        except BaseException:
            shutil.rmtree(files.dir, ignore_errors=True)
            raise
        return record

    def suspended(self, vm_id: str) -> dict[str, Any] | None:
        """``suspended_at`` and ``bytes`` of a suspended VM's saved state, or None."""
        return suspend.summary(self._files(vm_id).dir)

    def discard_suspended(self, vm_id: str) -> None:
        """Forget a suspended VM's memory: its next start boots from the disks."""
        suspend.discard(self._files(vm_id).dir)

    def _resume(
        self,
        record: VmRecord,
        installed: InstalledEnvironment,
        files: VmFiles,
        accel_name: str,
        progress: Progress,
    ) -> tuple[dict[str, Any] | None, str | None]:
        """Resume a suspended VM: its report, or None and why it must boot from its disks."""

        def machine_for(memory: str) -> MachineSpec:
            return self._resume_machine(record, installed, files, accel_name, memory)

        saved, why = suspend.load(files.dir, machine_for)
        if saved is None:
            suspend.discard(files.dir)
            if why is None:
                return None, None
            log.warning("%s: not resumed: %s", record.vm_id, why)
            return None, f"not resumed: {why}; booted from its disks (files kept)"
        progress(f"phase=start resuming {record.vm_id}")
        hello = self._hello(record, installed)
        if not saved.fresh_identity:
            hello.pop("machine_id")  # the same machine, carrying on
        try:
            report = backend.launch(
                files,
                machine_for(saved.memory),
                config.RESTORE_TIMEOUT_SECONDS,
                owner_bound=record.owner_bound,
                restore=saved.state,
                restore_shared=False,
                restore_check={"bytes": saved.bytes, "crc32": saved.crc32},
                hello=hello,
                watch_pid=self.watch_pid,
            )
        except (VMError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            # Whole (console tail included): the cold boot that follows reuses the logs.
            log.warning("%s: resume failed: %s", record.vm_id, str(exc).strip() or repr(exc))
            files.exit_record.unlink(missing_ok=True)
            return None, f"not resumed: {first}; booted from its disks (files kept)"
        finally:
            suspend.discard(files.dir)
        return report, None

    def check_capacity(self, *, more: int = 1, exclude: str | None = None) -> None:
        """Refuse to start ``more`` VMs past the host's cap (``config.max_running_vms``).

        A looping caller must not exhaust host memory; the message names what
        runs, so the caller can stop or delete something first.
        """
        cap = config.max_running_vms()
        running = [r for r in self.list_vms() if r.state is VmState.RUNNING and r.vm_id != exclude]
        if len(running) + more <= cap:
            return
        names = self.store.workspace_names_by_vm()
        listed = ", ".join(
            names.get(r.vm_id) or r.vm_id for r in sorted(running, key=lambda r: r.created_at)
        )
        raise StateError(
            "this host",
            f"running {len(running)} VMs",
            f"with room for {more} more under its cap of {cap} (PYRO_MAX_RUNNING, sized from "
            "its memory)",
            f"Stop or delete one first (`pyro workspace stop WS` / `pyro workspace delete WS`, "
            f"`pyro vm delete VM`); running: {listed}",
        )

    def warm_status(
        self,
        environment: str,
        *,
        vcpu_count: int = config.DEFAULT_VCPU_COUNT,
        mem_mib: int = config.DEFAULT_MEM_MIB,
        network: bool = False,
        verify: bool = True,
    ) -> warm.WarmStatus:
        """Whether VMs of this shape start warm (``warm``), or why not (``cold``, ``stale``)."""
        installed = self.environments.status(environment)
        if not installed.installed:
            return warm.WarmStatus("cold", f"{environment} is not built yet", None, None, None)
        assert installed.build_dir is not None and installed.manifest is not None
        env = InstalledEnvironment(environment, installed.build_dir, installed.manifest)
        key = self.warm_key(env, vcpu_count=vcpu_count, mem_mib=mem_mib, network=network)
        return self.warm.status(key, verify=verify)

    def warm_key(
        self,
        installed: InstalledEnvironment,
        *,
        vcpu_count: int,
        mem_mib: int,
        network: bool,
        accel_name: str | None = None,
    ) -> warm.WarmKey:
        qemu = host_tools.require(host_tools.QEMU)["qemu-system-x86_64"]
        return warm.make_key(
            installed,
            qemu,
            accel_name or self.accel_decision(installed).accel,
            vcpu_count,
            mem_mib,
            network,
        )

    def _warm_snapshot(
        self, record: VmRecord, installed: InstalledEnvironment, accel_name: str
    ) -> tuple[warm.WarmSnapshot | None, str | None]:
        """The snapshot to restore, or None and a warning when one should have been usable."""
        if not config.warm_enabled() or not record.fresh_root:
            # PYRO_WARM=0 asks for cold boots; a used root disk cannot take a
            # restored guest (its page cache describes the snapshot's disk).
            return None, None
        if self.pinned_warm is not None:
            return self.pinned_warm, None
        key = self.warm_key(
            installed,
            vcpu_count=record.vcpu_count,
            mem_mib=record.mem_mib,
            network=record.network,
            accel_name=accel_name,
        )
        status = self.warm.status(key)
        if status.snapshot is not None:
            return status.snapshot, None
        if status.status == "stale":
            return None, (
                f"cold boot: {status.reason}; run `pyro prepare {record.environment}"
                + (" --network" if record.network else "")
                + "` to take a new warm snapshot"
            )
        return None, None

    def _launch_warm(
        self,
        record: VmRecord,
        installed: InstalledEnvironment,
        files: VmFiles,
        accel_name: str,
        snapshot: warm.WarmSnapshot,
    ) -> dict[str, Any]:
        # The restored guest expects the root disk its snapshot was taken with,
        # and drives of the same sizes in the same places: a raw VM gets the
        # snapshot's stand-ins (a private copy of the writable one).
        shutil.copyfile(snapshot.root_disk, files.root_disk)
        workspace_disk = Path(record.workspace_disk) if record.workspace_disk else None
        if workspace_disk is None:
            workspace_disk = files.dir / "workspace-standin.qcow2"
            shutil.copyfile(snapshot.workspace_disk, workspace_disk)
        baseline_disk = Path(record.baseline_disk) if record.baseline_disk else None
        machine = replace(
            self.machine_spec(record, installed, files, accel_name),
            workspace_disk=workspace_disk,
            baseline_disk=baseline_disk or snapshot.baseline_disk,
            memory_file=_link_base(snapshot.ram, files),
            memory_shared=False,
            incoming=True,
            free_page_reporting=False,
        )
        return backend.launch(
            files,
            machine,
            config.RESTORE_TIMEOUT_SECONDS,
            owner_bound=record.owner_bound,
            restore=snapshot.devices,
            hello=self._hello(record, installed),
            watch_pid=self.watch_pid,
        )

    def _resume_machine(
        self,
        record: VmRecord,
        installed: InstalledEnvironment,
        files: VmFiles,
        accel_name: str,
        memory: str,
    ) -> MachineSpec:
        """The machine a saved state of layout ``memory`` resumes into."""
        machine = replace(self.machine_spec(record, installed, files, accel_name), incoming=True)
        # A warm-started guest's devices are its template's: no balloon.
        if memory == "anonymous":
            return replace(machine, memory_anonymous=True, free_page_reporting=False)
        if memory == "base":
            return replace(
                machine,
                memory_file=files.memory_base,
                memory_shared=False,
                free_page_reporting=False,
            )
        return machine

    def _hello(self, record: VmRecord, installed: InstalledEnvironment) -> dict[str, Any]:
        """What makes this boot the VM's own: its name, machine id and disks to mount,
        and an image environment's config (Env, User, WorkingDir)."""
        hello = {
            "hostname": "pyro-" + record.vm_id.removeprefix("vm-"),
            "machine_id": uuid.uuid4().hex,
            "mounts": {
                "workspace": record.workspace_disk is not None,
                "baseline": record.baseline_disk is not None,
            },
            "fresh_workspace": (
                record.workspace_disk is not None and disks.take_fresh(Path(record.workspace_disk))
            ),
        }
        settings = _image_settings(installed.manifest)
        if settings is not None:
            hello["image"] = settings
        return hello

    def exec_vm(
        self,
        vm_id: str,
        command: str | Sequence[str],
        *,
        timeout_seconds: float = config.DEFAULT_TIMEOUT_SECONDS,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        client: SupervisorClient | None = None,
        secret_env: dict[str, str] | None = None,
    ) -> ExecResult:
        """Run ``command`` (a shell string, or an argv list) in a running VM.

        ``secret_env`` maps variables to secret names materialized in the guest.
        """
        args = exec_args(command, timeout_seconds, env, cwd, secret_env)
        if client is not None:  # connected, so it was running: no second reconcile
            return exec_result(self.exec_reply(vm_id, client, args))
        record = self.status_vm(vm_id)
        require_state(
            vm_id, record.state, (VmState.RUNNING,), f"Start it with `pyro vm start {vm_id}`."
        )
        try:
            with SupervisorClient(self._files(vm_id).control_socket) as own:
                return exec_result(self.exec_reply(vm_id, own, args))
        except VMError:
            self._settle_death(vm_id)  # it died before we could connect
            raise

    def exec_reply(
        self, vm_id: str, client: SupervisorClient, args: dict[str, Any]
    ) -> dict[str, Any]:
        """One exec request (``exec_args``) on a connected VM: the guest's reply, unchecked."""
        try:
            return guest.exec_command(client, args, float(args["timeout_seconds"]))
        except VMError:
            self._settle_death(vm_id)
            raise

    def _settle_death(self, vm_id: str) -> None:
        """The VM died under a call: let its supervisor finish writing why, so
        status shows ``stopped`` with the reason from now on."""
        record = self._get(vm_id)
        if record.supervisor_pid is not None:
            backend.wait_for_exit(record.supervisor_pid, backend.STOP_WAIT_SECONDS)
        self._reconcile(self._get(vm_id))

    def connect(self, vm_id: str, fix: str) -> SupervisorClient:
        """A client of the running VM; ``StateError`` (with ``fix``) when it is not running."""
        record = self.status_vm(vm_id)
        require_state(vm_id, record.state, (VmState.RUNNING,), fix)
        return SupervisorClient(self._files(vm_id).control_socket)

    def set_egress(self, vm_id: str, settings: egress_config.EgressConfig) -> None:
        """Give the VM these egress settings: at its next launch, and now if it runs."""
        self._get(vm_id)
        files = self._files(vm_id)
        egress_config.write(files.dir, settings)
        record = self.status_vm(vm_id)
        if record.state is VmState.RUNNING:
            with SupervisorClient(files.control_socket) as client:
                control_ops.egress_reload(client)

    def busy(self, vm_id: str) -> bool:
        """True while the VM's agent has requests in flight (a command, a transfer)."""
        record = self.store.get_vm(vm_id)
        if record is None or not self._alive(record):
            return False
        try:
            with SupervisorClient(self._files(vm_id).control_socket) as client:
                return int(control_ops.status(client).get("pending", 0)) > 0
        except PyroError:
            # Alive but not answering (a loaded host): count it busy, so that
            # a command in flight is never cut off for a slow answer.
            return True

    def reset_root_disk(self, vm_id: str) -> None:
        """Give a stopped VM a fresh root overlay on its environment build."""
        record = self.status_vm(vm_id)
        require_state(vm_id, record.state, (VmState.CREATED, VmState.STOPPED), "Stop it first.")
        _fresh_root(self._installed_for(record), self._files(vm_id))
        self.store.update_vm(vm_id, fresh_root=True)

    def stop_vm(self, vm_id: str) -> VmRecord:
        """Stop the VM, keeping its disk; stopping a stopped VM is fine."""
        record = self.status_vm(vm_id)
        backend.stop(self._files(vm_id), record.supervisor_pid)
        try:
            self.settle_disks(vm_id)
        except VMError as exc:  # the next start settles them, or refuses to start
            log.warning("%s: drives not renamed after the stop: %s", vm_id, exc)
        if record.state is VmState.RUNNING:
            self.store.update_vm(vm_id, state=VmState.STOPPED, supervisor_pid=None)
        return self._get(vm_id)

    def delete_vm(self, vm_id: str) -> dict[str, Any]:
        """Stop the VM and remove its record and every file it had."""
        self.discard_files(vm_id)
        self.store.delete_vm(vm_id)
        return {"vm_id": vm_id, "deleted": True}

    def discard_files(self, vm_id: str) -> None:
        """Stop the VM and remove its files, without writing to the state database.

        Deleting frees disk before it records anything: on a full disk that is
        what lets the record be written afterwards.
        """
        record = self._get(vm_id)
        files = self._files(vm_id)
        backend.stop(files, record.supervisor_pid)
        shutil.rmtree(files.dir, ignore_errors=True)

    def status_vm(self, vm_id: str) -> VmRecord:
        """The VM's record, reconciled with whether its supervisor really runs."""
        return self._reconcile(self._get(vm_id))

    def list_vms(self) -> list[VmRecord]:
        return [self._reconcile(record) for record in self.store.list_vms()]

    def reap_expired(self, now: float | None = None) -> list[str]:
        """Delete VMs whose TTL has passed and one-shot VMs whose owner is gone."""
        now = time.time() if now is None else now
        reaped: list[str] = []
        for record in self.store.list_vms():
            expired = record.expires_at is not None and record.expires_at <= now
            orphaned = (
                record.owner_bound
                and not self._alive(record)
                and (record.state is not VmState.CREATED or now - record.created_at > 600)
            )
            if expired or orphaned:
                with contextlib.suppress(PyroError):
                    self.delete_vm(record.vm_id)
                    reaped.append(record.vm_id)
        return reaped

    # -------------------------------------------------------------- one-shot

    def run(
        self,
        environment: str,
        command: str | Sequence[str],
        *,
        vcpu_count: int = config.DEFAULT_VCPU_COUNT,
        mem_mib: int = config.DEFAULT_MEM_MIB,
        timeout_seconds: float = config.DEFAULT_TIMEOUT_SECONDS,
        ttl_seconds: int | None = None,
        network: bool = False,
        env: dict[str, str] | None = None,
        progress: Progress = _quiet,
    ) -> RunResult:
        """Create a VM, run one command, delete the VM: nothing is left behind.

        The VM is bound to this process: if it dies, the VM stops and its
        disk is removed by the supervisor.
        """
        exec_args(command, timeout_seconds, env, None)
        if ttl_seconds is not None and (
            isinstance(ttl_seconds, bool) or not timeout_seconds < ttl_seconds <= 86400
        ):
            raise InvalidArgument(
                "ttl_seconds",
                f"must be more than timeout_seconds ({timeout_seconds:g}) and at most 86400",
            )
        started = time.monotonic()
        self.reap_expired()
        progress(f"phase=create environment={environment}")
        record = self.create_vm(
            environment,
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
            network=network,
            ttl_seconds=ttl_seconds,
            progress=progress,
            owner_bound=True,
        )
        try:
            record = self.start_vm(record.vm_id, progress=progress)
            with SupervisorClient(self._files(record.vm_id).control_socket) as owner:
                control_ops.own(owner)
                progress(f"phase=execute vm={record.vm_id}")
                result = self.exec_vm(
                    record.vm_id, command, timeout_seconds=timeout_seconds, env=env, client=owner
                )
        finally:
            progress("phase=delete")
            self.delete_vm(record.vm_id)
        return RunResult(
            environment=environment,
            accel=record.accel or "unknown",
            vm_id=record.vm_id,
            boot_ms=record.boot_ms or 0,
            boot_kind=record.boot_kind or "cold",
            boot_warning=record.boot_warning,
            total_ms=int((time.monotonic() - started) * 1000),
            result=result,
        )

    def pull_image(
        self,
        reference: str,
        *,
        name: str | None = None,
        insecure_registry: bool = False,
        disk_size_mib: int = images.DEFAULT_DISK_MIB,
        progress: Progress = _quiet,
        curated: bool = False,
    ) -> InstalledEnvironment:
        """Install an environment from an OCI image (``vm/image_builder.py``)."""
        return image_builder.pull_image(
            self.environments,
            vms_dir=self.paths.vms_dir,
            accel_name=self.accel_decision().accel,
            reference=reference,
            name=name,
            insecure_registry=insecure_registry,
            disk_size_mib=disk_size_mib,
            progress=progress,
            curated=curated,
        )

    def build_environment(
        self,
        name: str,
        *,
        file: Path,
        context: Path,
        build_args: dict[str, str],
        egress: egress_config.EgressConfig | None,
        no_cache: bool,
        step_timeout_seconds: int,
        progress: Progress = _quiet,
        setup: image_builder.GuestSetup | None = None,
        namespace: str = "",
    ) -> InstalledEnvironment:
        """Build an environment from a Dockerfile in a guest (``vm/env_build.py``);
        a ``FROM`` that is not installed is pulled first (into ``namespace``,
        where the caller's own environments live on pyro server)."""

        def pull(reference: str) -> InstalledEnvironment:
            name = namespace + images.parse_reference(reference).default_name
            return self.pull_image(reference, name=name, progress=progress)

        return env_build.build_environment(
            self.environments,
            vms_dir=self.paths.vms_dir,
            accel_name=self.accel_decision().accel,
            name=name,
            file=file,
            context=context,
            build_args=build_args,
            egress=egress,
            no_cache=no_cache,
            step_timeout_seconds=step_timeout_seconds,
            pull=pull,
            progress=progress,
            setup=setup,
            namespace=namespace,
        )

    def push_environment(
        self,
        name: str,
        reference: str,
        *,
        insecure_registry: bool = False,
        progress: Progress = _quiet,
    ) -> dict[str, Any]:
        """Write an installed environment to a registry or an OCI layout."""
        return image_builder.push_environment(
            self.environments,
            vms_dir=self.paths.vms_dir,
            accel_name=self.accel_decision().accel,
            name=name,
            target=reference,
            insecure_registry=insecure_registry,
            progress=progress,
        )

    # ----------------------------------------------------------------- accel

    def accel_decision(self, installed: InstalledEnvironment | None = None) -> accel.AccelDecision:
        """KVM or TCG, booting a probe guest under KVM once when only that can tell."""
        static = accel.static_decision()
        if static is not None or installed is None:
            return static or accel.AccelDecision("tcg", "KVM not yet probed", True, None)
        qemu = host_tools.require(host_tools.QEMU)["qemu-system-x86_64"]
        key = f"{installed.manifest['kernel']['version']}|{qemu_version(qemu)}"
        return accel.decide(
            self.paths.cache_dir / "kvm-probe.json", key, lambda: self._kvm_probe(installed)
        )

    def _kvm_probe(self, installed: InstalledEnvironment) -> str | None:
        files = VmFiles(self.paths.vms_dir / f"kvm-probe-{uuid.uuid4().hex[:8]}")
        files.dir.mkdir(parents=True)
        try:
            disks.create_overlay(installed.rootfs, files.root_disk)
            probe = VmRecord(
                vm_id="kvm-probe",
                environment=installed.name,
                state=VmState.CREATED,
                vcpu_count=1,
                mem_mib=256,
                network=False,
                owner_bound=False,
                build_dir=str(installed.build_dir),
                created_at=time.time(),
                expires_at=None,
            )
            report = backend.launch(
                files,
                self.machine_spec(probe, installed, files, "kvm"),
                KVM_PROBE_BOOT_SECONDS,
                owner_bound=False,
            )
            backend.stop(files, int(report["pid"]))
            return None
        except VMError as exc:
            return str(exc).splitlines()[0]
        finally:
            shutil.rmtree(files.dir, ignore_errors=True)

    # --------------------------------------------------------------- helpers

    def _get(self, vm_id: str) -> VmRecord:
        record = self.store.get_vm(names.check_vm_id(vm_id))
        if record is None:
            raise NotFound(f"no VM {vm_id!r}; list VMs with `pyro vm list`")
        return record

    def _files(self, vm_id: str) -> VmFiles:
        return VmFiles(self.paths.vms_dir / names.check_vm_id(vm_id))

    def _alive(self, record: VmRecord) -> bool:
        pid = record.supervisor_pid
        return pid is not None and backend.supervisor_alive(pid, self._files(record.vm_id))

    def _drives(self, record: VmRecord) -> list[Path]:
        """The VM's writable drives: its root disk, and its workspace's."""
        root = self._files(record.vm_id).root_disk
        return [root, Path(record.workspace_disk)] if record.workspace_disk else [root]

    def _reconcile(self, record: VmRecord) -> VmRecord:
        if record.state is not VmState.RUNNING or self._alive(record):
            return record
        try:
            self.settle_disks(record.vm_id)  # it may have died after a fork
        except VMError as exc:  # reads must work; the next start settles them or refuses
            log.warning("%s", exc)
        reason = "the VM's supervisor is gone"
        with contextlib.suppress(OSError, ValueError):
            exit_record = json.loads(self._files(record.vm_id).exit_record.read_text())
            reason = str(exit_record.get("reason", reason))[:4000]
        try:
            self.store.update_vm(
                record.vm_id, state=VmState.STOPPED, supervisor_pid=None, last_error=reason
            )
        except StoreError as exc:
            # Reads must work on a full disk (to find what to delete); the next
            # read that can write records the stop.
            log.warning("could not record that %s stopped: %s", record.vm_id, exc)
        return replace(record, state=VmState.STOPPED, supervisor_pid=None, last_error=reason)

    def _installed_for(self, record: VmRecord) -> InstalledEnvironment:
        build_dir = Path(record.build_dir)
        manifest_path = build_dir / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise NotFound(
                f"the environment build {build_dir} this VM was created from is gone "
                f"(pruned?); delete the VM with `pyro vm delete {record.vm_id}`"
            ) from exc
        installed = InstalledEnvironment(record.environment, build_dir, manifest)
        self.environments.ensure_initrd(installed)
        return installed

    def machine_spec(
        self, record: VmRecord, installed: InstalledEnvironment, files: VmFiles, accel_name: str
    ) -> MachineSpec:
        """The QEMU machine of ``record`` booted cold (warm starts and templates adjust it)."""
        qemu = host_tools.require(host_tools.QEMU)["qemu-system-x86_64"]
        return MachineSpec(
            qemu=qemu,
            accel=accel_name,
            vcpu_count=record.vcpu_count,
            mem_mib=record.mem_mib,
            kernel=installed.vmlinuz,
            initrd=installed.initrd,
            root_disk=files.root_disk,
            # Relative: QEMU runs in the VM directory (see the supervisor).
            agent_socket=Path(files.agent_socket.name),
            console_socket=Path(files.console_socket.name),
            qmp_socket=Path(files.qmp_socket.name),
            hostname="pyro",
            network=record.network,
            workspace_disk=Path(record.workspace_disk) if record.workspace_disk else None,
            baseline_disk=Path(record.baseline_disk) if record.baseline_disk else None,
            runtime_disk=installed.runtime,
            egress_command=egress_config.relay_command() if record.network else "",
            free_page_reporting=True,  # anonymous RAM (warm starts turn it off)
        )


def _image_settings(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """What the guest honours of an image environment's config; None for curated ones."""
    image = manifest.get("image")
    settings = image.get("settings") if isinstance(image, dict) else None
    if not isinstance(settings, dict):
        return None
    return {key: settings.get(key) for key in ("env", "user", "working_dir")}


def _link_base(ram: Path, files: VmFiles) -> Path:
    """The warm snapshot's RAM file, linked into the VM directory as ``memory.base``.

    The link keeps it for this VM's saved states (thinned against it) even if
    the snapshot is pruned. Where it cannot be linked (another filesystem), the
    VM maps the snapshot's file and its suspends save all of its memory.
    """
    files.memory_base.unlink(missing_ok=True)
    try:
        os.link(ram, files.memory_base)
    except OSError as exc:
        log.info("%s: RAM file not linked (%s); suspends save whole memory", files.dir, exc)
        return ram
    return files.memory_base


def _memory_layout(files: VmFiles) -> str:
    """How the running VM's memory is laid out, so how its saved memory resumes
    (see ``vm/suspend.py``): from the QEMU command line of its current run."""
    try:
        argv = " ".join(json.loads(files.spec.read_text()).get("argv", []))
    except (OSError, ValueError, AttributeError):
        return "plain"
    if f"mem-path={files.memory_base}," in argv:
        return "base"
    if "memory-backend-" in argv:  # a snapshot's RAM file it could not link, or anonymous
        return "anonymous"
    return "plain"


def _thin(vm_id: str, stream: Path, base: Path) -> str:
    """Thin a saved stream against ``base`` in place: ``base``, or ``anonymous`` if it
    stays whole (it resumes correctly either way)."""
    thinned = stream.with_name(stream.name + ".thin")
    try:
        result = thin.thin(stream, base, thinned)
    except (thin.ThinError, OSError) as exc:
        thinned.unlink(missing_ok=True)
        log.warning("%s: saved memory kept whole (%s)", vm_id, exc)
        return "anonymous"
    thinned.replace(stream)
    log.debug("%s: saved memory thinned: %s", vm_id, result)
    return "base"


def _check_room_for_memory(files: VmFiles, record: VmRecord) -> None:
    """Refuse to suspend when the saved memory may not fit (the VM then keeps running)."""
    need = record.mem_mib * 2**20
    with contextlib.suppress(OSError, ValueError):
        status = Path(f"/proc/{_qemu_pid(files)}/status").read_text()
        rss_kib = int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
        )
        need = min(need, rss_kib * 1024) + SUSPEND_MARGIN_BYTES
    stat = os.statvfs(files.dir)
    free = stat.f_bavail * stat.f_frsize
    if free < need:
        raise StoreError(
            f"not enough room to save {record.vm_id}'s memory (about {need // 2**20} MiB "
            f"needed, {free // 2**20} MiB free where PYRO_HOME lives); it keeps running. "
            "Free space there, or stop it with --discard-memory."
        )


def _qemu_pid(files: VmFiles) -> int:
    with SupervisorClient(files.control_socket) as client:
        return int(control_ops.status(client)["qemu_pid"])


def _fresh_root(installed: InstalledEnvironment, files: VmFiles) -> None:
    """Replace the VM's root overlay with an empty one on its environment (atomically)."""
    fresh = files.root_disk.with_name("root.qcow2.new")
    fresh.unlink(missing_ok=True)
    disks.create_overlay(installed.rootfs, fresh)
    disks.replace_top(fresh, files.root_disk)


def _undo_splits(files: VmFiles, splits: list[disks.Split]) -> None:
    """After a failed fork: drop the new tops the VM did not switch onto.

    Which ones it did is asked of the VM; if it cannot answer (it died), the
    files stay, and ``settle`` makes the new tops the drives' on the next start:
    empty on the old ones, they read the same either way.
    """
    try:
        with SupervisorClient(files.control_socket) as client:
            active = set(control_ops.drives(client).values())
    except PyroError as exc:
        log.warning("fork: could not ask which disks the VM writes to (%s)", exc)
        return
    for prepared in splits:
        if str(prepared.top) not in active:
            disks.unsplit(prepared)


def _check_range(field: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(field, f"must be a whole number from {low} to {high}, not {value!r}")
