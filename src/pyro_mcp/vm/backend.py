"""Starting and stopping a VM's supervisor process from any pyro process."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyro_mcp import host_tools
from pyro_mcp.agent.client import SupervisorClient
from pyro_mcp.errors import AgentError, PyroError, VMError
from pyro_mcp.vm import control_ops, merge
from pyro_mcp.vm.files import VmFiles
from pyro_mcp.vm.qemu import MachineSpec

# The supervisor itself needs this much on top of the guest's boot.
LAUNCH_MARGIN_SECONDS = 30.0
# Longer than the supervisor's own bounds for the guest's flush and QEMU's exit.
STOP_WAIT_SECONDS = 35.0


def launch(
    files: VmFiles,
    machine: MachineSpec,
    boot_timeout: float,
    owner_bound: bool,
    *,
    restore: Path | None = None,
    restore_shared: bool = True,
    restore_check: dict[str, int] | None = None,
    hello: dict[str, Any] | None = None,
    watch_pid: int | None = None,
) -> dict[str, Any]:
    """Start the supervisor for ``machine`` and wait until its agent is ready.

    The supervisor detaches (double fork, own session), so it outlives this
    process unless ``owner_bound`` ties it to an ``own`` connection, or
    ``watch_pid`` to a process that must stay alive.

    Args:
        restore: a warm snapshot's device state to load instead of booting
            (``machine`` must then be ``incoming``, with the snapshot's RAM file),
            or with ``restore_shared=False`` a suspended guest's whole state.
        restore_check: that state's ``bytes`` and ``crc32``, checked while it
            loads; the guest runs only if they match.
        hello: extra hello arguments for the agent (hostname, machine_id, mounts).

    Returns:
        The supervisor's report: ``pid``, ``qemu_pid``, ``boot_ms``, ``boot_kind``,
        ``info``.

    Raises:
        VMError: QEMU or the guest failed; the message has the console tail.
    """
    if not machine.memory_shared:
        merge.ensure()  # so that the memory this guest frees goes back to the host
    # A QEMU whose supervisor was killed dies with it (PDEATHSIG), but freeing
    # a big guest's memory takes a while, and it holds its disks' locks until
    # it is gone: a start right after would fail on them.
    _await_disks_released(machine.writable_disks, STOP_WAIT_SECONDS)
    spec = {
        "argv": machine.argv(),
        "boot_timeout": boot_timeout,
        "owner_bound": owner_bound,
        "restore": str(restore) if restore else None,
        "restore_shared": restore_shared,
        "restore_check": restore_check,
        "hello": hello or {},
        "watch_pid": watch_pid,
        "network": machine.network,
    }
    files.spec.write_text(json.dumps(spec))
    with files.supervisor_log.open("ab") as log:
        process = host_tools.popen(
            Path(sys.executable),
            ["-m", "pyro_mcp.vm.supervisor", "--detach", files.dir],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            close_fds=True,
        )
    assert process.stdout is not None
    try:
        # The launcher forks the supervisor off and exits at once. Popen.wait with
        # a timeout polls with growing sleeps; a pidfd wakes us when it exits.
        wait_for_exit(process.pid, 30)
        process.wait()
        ready, _, _ = select.select([process.stdout], [], [], boot_timeout + LAUNCH_MARGIN_SECONDS)
        line = process.stdout.readline() if ready else b""
    finally:
        process.stdout.close()
    try:
        if not line:
            log_tail = _tail(files.supervisor_log)
            raise VMError(
                "the VM supervisor did not report in time or died before reporting.\n"
                f"supervisor log: {log_tail or '(empty)'}\nRun `pyro doctor` to check this host."
            )
        try:
            report = json.loads(line)
        except ValueError as exc:
            raise VMError(f"the VM supervisor reported garbage: {line[:200]!r}") from exc
        if not report.get("ok"):
            raise VMError(str(report.get("error", "the VM failed to start")))
    except VMError:
        # A supervisor that failed is still taking QEMU down (or hung): nothing
        # of a failed start may outlive the call.
        _end_supervisors(files)
        raise
    return dict(report)


def _await_disks_released(disks: tuple[Path, ...], timeout: float) -> None:
    """Wait (bounded) until no process holds a lock on any of ``disks``.

    QEMU locks every image it has open (OFD locks); ``/proc/locks`` names the
    locked files by device and inode. A QEMU still exiting has already lost
    its command line, so the lock is the one trace of it left.
    """
    keys = set()
    for disk in disks:
        with contextlib.suppress(OSError):
            info = disk.stat()
            keys.add(f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}")
    deadline = time.monotonic() + timeout
    while keys and time.monotonic() < deadline:
        try:
            held = set(Path("/proc/locks").read_text().split())
        except OSError:
            return
        if not keys & held:
            return
        time.sleep(0.05)


def _end_supervisors(files: VmFiles) -> None:
    """Wait for this VM's supervisors to exit (a bounded while), then kill them."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and supervisor_alive(int(entry.name), files):
            pid = int(entry.name)
            if not wait_for_exit(pid, STOP_WAIT_SECONDS):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # QEMU dies with it (PDEATHSIG)
                wait_for_exit(pid, STOP_WAIT_SECONDS)


def stop(files: VmFiles, supervisor_pid: int | None) -> None:
    """Stop the VM gracefully (guest sync, QEMU quit); kill it if that fails.

    Idempotent: a VM that is already gone is fine.
    """
    if supervisor_pid is None or not supervisor_alive(supervisor_pid, files):
        return
    with contextlib.suppress(VMError, AgentError), SupervisorClient(files.control_socket) as client:
        control_ops.shutdown(client, timeout=STOP_WAIT_SECONDS)
    if not wait_for_exit(supervisor_pid, STOP_WAIT_SECONDS):
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor_pid, signal.SIGKILL)  # QEMU dies with it (PDEATHSIG)
        wait_for_exit(supervisor_pid, STOP_WAIT_SECONDS)


def supervisor_alive(pid: int, files: VmFiles) -> bool:
    """True when ``pid`` is the supervisor of this VM (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if status.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return b"pyro_mcp.vm.supervisor" in cmdline and str(files.dir).encode() in cmdline


def wait_for_exit(pid: int, timeout: float) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


def save_and_exit(
    files: VmFiles, pid: int, save: Callable[..., dict[str, Any]], path: Path, timeout: float
) -> None:
    """Have the supervisor ``pid`` save its guest to ``path`` with ``save``
    (``control_ops.save_template``: device state only; ``control_ops.suspend``:
    the whole guest) and wait
    until it is gone: QEMU quits after saving, and a template's RAM file must
    never be written again. If anything fails the VM is stopped.

    Raises:
        VMError: the save failed, or the supervisor did not exit after it.
    """
    try:
        with SupervisorClient(files.control_socket) as owner:
            control_ops.own(owner)
            save(owner, path, timeout=timeout)
            if not wait_for_exit(pid, STOP_WAIT_SECONDS):
                raise VMError("the template VM did not stop after saving")
    except PyroError:
        with contextlib.suppress(PyroError):
            stop(files, pid)
        raise
