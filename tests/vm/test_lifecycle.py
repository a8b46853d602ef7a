"""The lower-level VM lifecycle against real guests."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from pyro_mcp import NotFound, Pyro, StateError, VMError
from pyro_mcp.vm.backend import wait_for_exit

pytestmark = pytest.mark.vm


def test_create_start_exec_stop_start_delete(pyro: Pyro, state_dir: Path) -> None:
    vm = pyro.create_vm("debian:12")
    assert vm["state"] == "created"
    vm_id = vm["vm_id"]
    running = pyro.start_vm(vm_id)
    assert running["state"] == "running" and running["accel"] in ("tcg", "kvm")
    written = pyro.exec_vm(vm_id, "echo kept > /root/note && sync", keep_vm=True)
    assert written["exit_code"] == 0
    assert written["cleanup"] == {"deleted": False, "reason": "keep_vm", "vm_id": vm_id}
    assert pyro.exec_vm(vm_id, ["cat", "/root/note"], keep_vm=True)["stdout"] == "kept\n"
    assert pyro.exec_vm(vm_id, "pwd", cwd="/tmp", keep_vm=True)["stdout"] == "/tmp\n"
    greeted = pyro.exec_vm(vm_id, "echo $GREETING", env={"GREETING": "hi"}, keep_vm=True)
    assert greeted["stdout"] == "hi\n"

    assert pyro.stop_vm(vm_id)["state"] == "stopped"
    with pytest.raises(StateError, match="pyro vm start"):
        pyro.exec_vm(vm_id, "true")  # raised: the VM stays as it was
    pyro.start_vm(vm_id)
    assert pyro.exec_vm(vm_id, "cat /root/note", keep_vm=True)["stdout"] == "kept\n"
    assert pyro.status_vm(vm_id)["state"] == "running"
    with pytest.raises(StateError):
        pyro.start_vm(vm_id)

    # pyro-mcp 4.5's exec_vm: one command, then the VM is gone.
    last = pyro.exec_vm(vm_id, "cat /root/note")
    assert last["stdout"] == "kept\n"
    assert last["cleanup"] == {"deleted": True, "reason": "post_exec_cleanup", "vm_id": vm_id}
    assert not (state_dir / "vms" / vm_id).exists()
    with pytest.raises(NotFound, match="pyro vm list"):
        pyro.status_vm(vm_id)


def test_a_vm_killed_from_outside_shows_stopped_with_the_reason(pyro: Pyro) -> None:
    vm_id = pyro.create_vm()["vm_id"]
    pyro.start_vm(vm_id)
    qemu_pid = _qemu_pid(pyro, vm_id)
    os.kill(qemu_pid, signal.SIGKILL)
    assert wait_for_exit(qemu_pid, 10)
    # The VM dies under the call (VMError) or is already recorded as stopped.
    with pytest.raises((VMError, StateError)):
        pyro.exec_vm(vm_id, "true")
    status = pyro.status_vm(vm_id)
    assert status["state"] == "stopped"
    assert "QEMU exited" in status["last_error"]
    pyro.start_vm(vm_id)  # the disk survived; the VM recovers
    assert pyro.exec_vm(vm_id, "echo back")["stdout"] == "back\n"  # and then deleted


def test_expired_vms_are_reaped(pyro: Pyro, state_dir: Path) -> None:
    vm_id = pyro.create_vm(ttl_seconds=1)["vm_id"]
    keep_id = pyro.create_vm()["vm_id"]
    reaped = pyro._vms.reap_expired(now=pyro.status_vm(vm_id)["expires_at"] + 1)
    assert reaped == [vm_id]
    assert not (state_dir / "vms" / vm_id).exists()
    assert [v["vm_id"] for v in pyro.list_vms()] == [keep_id]


def test_bad_sizes_are_rejected_before_anything_is_created(pyro: Pyro, state_dir: Path) -> None:
    from pyro_mcp import InvalidArgument

    with pytest.raises(InvalidArgument, match="vcpu_count"):
        pyro.create_vm(vcpu_count=0)
    with pytest.raises(InvalidArgument, match="mem_mib"):
        pyro.create_vm(mem_mib=10)
    assert pyro.list_vms() == []


def _qemu_pid(pyro: Pyro, vm_id: str) -> int:
    supervisor = pyro.status_vm(vm_id)["supervisor_pid"]
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return int(children[0])


def test_a_vm_whose_directory_is_removed_stops_by_itself(pyro: Pyro, state_dir: Path) -> None:
    vm_id = pyro.create_vm()["vm_id"]
    supervisor = pyro.start_vm(vm_id)["supervisor_pid"]
    shutil.rmtree(state_dir / "vms" / vm_id)
    assert wait_for_exit(supervisor, 30)
    assert pyro.status_vm(vm_id)["state"] == "stopped"


def test_a_start_that_fails_leaves_no_process_behind(
    pyro: Pyro, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyro_mcp import config
    from tests.conftest import leaked_processes

    vm_id = pyro.create_vm()["vm_id"]
    monkeypatch.setenv("PYRO_WARM", "0")  # a cold boot, which waits for the agent
    monkeypatch.setattr(config, "BOOT_TIMEOUT_SECONDS", 0.5)  # no guest is ready that soon
    with pytest.raises(VMError, match="not ready within"):
        pyro.start_vm(vm_id)
    assert leaked_processes(state_dir) == []  # the supervisor took QEMU down before the error
    monkeypatch.undo()
    pyro.start_vm(vm_id)
    assert pyro.exec_vm(vm_id, "echo up")["stdout"] == "up\n"
