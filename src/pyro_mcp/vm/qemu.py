"""The QEMU ``microvm`` command line for one guest."""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyro_mcp import config, host_tools
from pyro_mcp.agent.protocol import AGENT_PORT_NAME
from pyro_mcp.egress import EGRESS_GUEST_ADDRESS, EGRESS_GUEST_PORT
from pyro_mcp.errors import HostSetupError


@dataclass(frozen=True)
class MachineSpec:
    """Everything QEMU needs to boot one guest."""

    qemu: Path
    accel: str
    vcpu_count: int
    mem_mib: int
    kernel: Path
    initrd: Path
    root_disk: Path
    agent_socket: Path
    console_socket: Path
    qmp_socket: Path
    hostname: str
    network: bool
    workspace_disk: Path | None = None
    baseline_disk: Path | None = None
    # An image environment's runtime drive (environments/runtime.py), read-only:
    # the guest's init runs the agent from it.
    runtime_disk: Path | None = None
    # Guest RAM in a file: a warm template writes it (shared), warm VMs map it
    # privately (copy-on-write), so the clean pages of one snapshot are shared
    # by every VM restored from it.
    memory_file: Path | None = None
    memory_shared: bool = False
    # Guest RAM as an anonymous backend with the same id as the file one: a
    # suspended warm-started guest resumes into it (its RAM block is "ram").
    memory_anonymous: bool = False
    # Start paused, waiting for a warm snapshot's device state over QMP.
    incoming: bool = False
    # The guest kernel zeroes the memory it frees (init_on_free=1). Set for warm
    # templates only: every guest restored from one inherits it, so the memory
    # a guest used and freed is zero, and a suspend leaves it out (vm/thin.py).
    # A cold boot would zero all of RAM as the kernel first frees it.
    zero_freed_memory: bool = False
    # A virtio balloon that only takes free page reports: the guest hands the
    # memory it frees back and QEMU drops it. Only for anonymous guest RAM (a
    # cold boot): QEMU 7.2 drops a page of file-backed RAM by punching a hole
    # in the file, which for a warm guest is the snapshot every guest maps.
    free_page_reporting: bool = False
    # With a NIC: what QEMU runs for each guest connection to the egress proxy.
    # The guest reaches nothing else (restrict=on).
    egress_command: str = ""

    @property
    def writable_disks(self) -> tuple[Path, ...]:
        """The images this guest opens for writing (QEMU locks them)."""
        return (self.root_disk,) + ((self.workspace_disk,) if self.workspace_disk else ())

    def argv(self) -> list[str]:
        append = f"console=ttyS0 quiet panic=-1 reboot=t rw pyro.hostname={self.hostname}"
        if self.accel == "tcg":
            append += tcg_clock_arguments()
        if self.zero_freed_memory:
            append += " init_on_free=1"
        if self.network:
            append += " pyro.net=1"
        if self.runtime_disk is not None:
            append += " pyro.runtime=1"
        machine = f"microvm,accel={self.accel}"
        # Guest RAM is offered to the host's same-page merging unless merging is
        # switched off (PYRO_MEMORY_MERGE=off; `pyro server` with more than one
        # principal): merged pages let one guest time another's memory.
        merge = "on" if config.memory_merge_enabled() else "off"
        memory: list[str] = []
        if self.memory_file is not None:
            machine += ",memory-backend=ram"
            memory = [
                "-object",
                f"memory-backend-file,id=ram,size={self.mem_mib}M,mem-path={self.memory_file},"
                f"share={'on' if self.memory_shared else 'off'},merge={merge}",
            ]
        elif self.memory_anonymous:
            machine += ",memory-backend=ram"
            memory = ["-object", f"memory-backend-ram,id=ram,size={self.mem_mib}M,merge={merge}"]
        else:
            machine += f",mem-merge={merge}"
        argv = [
            str(self.qemu),
            "-M",
            machine,
            *memory,
            "-m",
            str(self.mem_mib),
            "-smp",
            str(self.vcpu_count),
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            # The console goes to the supervisor, which keeps a bounded log:
            # a guest printing without end must not fill the host's disk.
            "-chardev",
            f"socket,id=console,path={self.console_socket}",
            "-serial",
            "chardev:console",
            "-kernel",
            str(self.kernel),
            "-initrd",
            str(self.initrd),
            "-append",
            append,
            "-drive",
            # A full host disk is an I/O error in the guest, not a paused VM
            # (QEMU's default) that leaves every command hanging past its timeout.
            f"id=root,file={self.root_disk},format=qcow2,if=none,werror=report,rerror=report",
            "-device",
            "virtio-blk-device,drive=root",
            "-device",
            "virtio-serial-device",
            # The supervisor listens and QEMU connects at start-up: no polling
            # for a socket file to appear.
            "-chardev",
            f"socket,id=agent,path={self.agent_socket}",
            "-device",
            f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}",
            # QMP, for runtime changes: published ports (hostfwd), pausing.
            "-chardev",
            f"socket,id=qmp,path={self.qmp_socket}",
            "-mon",
            "chardev=qmp,mode=control",
        ]
        if self.workspace_disk is not None:
            argv += [
                "-drive",
                # discard: files deleted in /workspace give their space back.
                f"id=ws,file={self.workspace_disk},format=qcow2,if=none,"
                "werror=report,rerror=report,discard=unmap",
                "-device",
                "virtio-blk-device,drive=ws,serial=pyro-workspace",
            ]
        if self.baseline_disk is not None:
            argv += [
                "-drive",
                f"id=base,file={self.baseline_disk},format=raw,if=none,readonly=on",
                "-device",
                "virtio-blk-device,drive=base,serial=pyro-baseline",
            ]
        if self.runtime_disk is not None:
            argv += [
                "-drive",
                f"id=rt,file={self.runtime_disk},format=raw,if=none,readonly=on",
                "-device",
                "virtio-blk-device,drive=rt,serial=pyro-runtime",
            ]
        if self.accel == "kvm":
            argv += ["-cpu", "host"]
        if self.network:
            netdev = "user,id=n0,restrict=on"
            if self.egress_command:
                netdev += (
                    f",guestfwd=tcp:{EGRESS_GUEST_ADDRESS}:{EGRESS_GUEST_PORT}"
                    f"-cmd:{self.egress_command}"
                )
            argv += ["-netdev", netdev, "-device", "virtio-net-device,netdev=n0"]
        if self.free_page_reporting:
            assert self.memory_file is None, "free page reporting would punch the RAM file"
            argv += ["-device", "virtio-balloon-device,free-page-reporting=on"]
        if self.incoming:
            argv += ["-incoming", "defer"]
        return argv


def tcg_clock_arguments(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """Kernel arguments that make guest timekeeping reliable under TCG.

    Under TCG the guest reads the host's TSC. Its early calibration against the
    emulated PIT fails when the host is busy (seen here: the guest then hangs
    before init), and the clocksource watchdog later marks the TSC unstable.
    Giving the kernel the host's frequency skips both.
    """
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("cpu MHz"):
                khz = int(float(line.split(":", 1)[1]) * 1000)
                return f" tsc_early_khz={khz} tsc=reliable"
    except (OSError, ValueError):
        pass
    return " tsc=reliable"


def qemu_version(qemu: Path) -> str:
    """``7.2.22`` from ``qemu-system-x86_64 --version``; ``unknown`` on failure."""
    try:
        result = host_tools.run(qemu, ["--version"], capture_output=True, timeout=10)
    except (HostSetupError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(r"version\s+(\S+)", result.stdout)
    return match.group(1) if match else "unknown"


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL when the process that started it dies."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
