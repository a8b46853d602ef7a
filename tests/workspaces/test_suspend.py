"""Suspend and resume: a stopped workspace holds no host memory, and every process carries on."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from pyro_mcp import Pyro
from pyro_mcp.agent.client import SupervisorClient
from pyro_mcp.errors import InvalidArgument, PyroError, StoreError
from pyro_mcp.vm import suspend
from tests.conftest import leaked_processes


def vm_dir(pyro: Pyro, ws: str) -> Path:
    return pyro._workspaces.vms.paths.vms_dir / pyro.status_workspace(ws)["vm_id"]


def test_services_shells_and_tmp_survive_a_suspend(pyro: Pyro, state_dir: Path) -> None:
    ws = pyro.create_workspace(name="keep")["workspace_id"]
    try:
        pyro.start_service(ws, "ticker", "while true; do date +%s%N >> /tmp/ticks; sleep 1; done")
        shell = pyro.open_shell(ws)
        pyro.write_shell(ws, shell["shell_id"], "echo before-suspend")
        deadline = time.monotonic() + 60
        before = pyro.read_shell(ws, shell["shell_id"], wait_for_idle_ms=500)
        # The typed line, then its output (reads without a cursor start at 0).
        while before["output"].count("before-suspend") < 2 and time.monotonic() < deadline:
            before = pyro.read_shell(ws, shell["shell_id"], wait_for_idle_ms=500)
        pyro.exec_workspace(ws, "echo kept > /tmp/note; echo on-disk > /workspace/f")

        stopped = pyro.stop_workspace(ws)
        assert stopped["suspended"] and stopped["state"] == "suspended"
        assert stopped["memory_bytes"] > 0 and stopped["suspend_ms"] > 0
        assert pyro.status_workspace(ws)["state"] == "suspended"
        assert leaked_processes(state_dir) == []  # no VM process holds memory now
        assert [w["state"] for w in pyro.list_workspaces()["workspaces"]] == ["suspended"]

        started = pyro.start_workspace(ws)
        assert started["resumed"] and started["boot_kind"] == "resumed"
        assert started["resume_ms"] > 0 and "reason" not in started
        seen = pyro.exec_workspace(ws, "cat /tmp/note /workspace/f; wc -l < /tmp/ticks")
        assert seen["stdout"].startswith("kept\non-disk\n")
        ticks = int(seen["stdout"].split()[-1])
        assert pyro.status_service(ws, "ticker")["state"] == "running"
        time.sleep(2.5)
        later = int(pyro.exec_workspace(ws, "wc -l < /tmp/ticks")["stdout"])
        assert later > ticks  # the service kept running after the resume
        # The shell: same id, its scrollback and cursor carry on.
        pyro.write_shell(ws, shell["shell_id"], "echo after-resume")
        output, cursor = "", before["next_cursor"]
        deadline = time.monotonic() + 60
        while output.count("after-resume") < 2 and time.monotonic() < deadline:
            after = pyro.read_shell(ws, shell["shell_id"], cursor=cursor, wait_for_idle_ms=500)
            output, cursor = output + after["output"], after["next_cursor"]
        assert output.count("after-resume") >= 2 and "before-suspend" not in output, output
        whole = pyro.read_shell(ws, shell["shell_id"], cursor=0, wait_for_idle_ms=100)
        assert "before-suspend" in whole["output"] and "after-resume" in whole["output"]
        kinds = [e["kind"] for e in pyro.logs_workspace(ws)["entries"]]
        assert "suspend" in kinds and "resume" in kinds
    finally:
        pyro.delete_workspace(ws)


def test_a_warm_workspace_saves_only_what_differs_from_its_snapshot(pyro: Pyro) -> None:
    ws = pyro.create_workspace()["workspace_id"]
    try:
        base = vm_dir(pyro, ws) / suspend.BASE_NAME
        assert base.stat().st_nlink >= 2  # the warm snapshot's RAM file, linked, not copied
        pyro.exec_workspace(
            ws, "head -c 40000000 /dev/urandom > /tmp/blob; sha256sum /tmp/blob > /workspace/sum"
        )
        # 200 MB used and freed again: a warm guest zeroes what it frees (its
        # template booted with init_on_free), so its suspend leaves it out.
        pyro.exec_workspace(ws, "python3 -c \"x = b'x' * (200 << 20)\"")
        first = pyro.stop_workspace(ws)["memory_bytes"]
        assert 40e6 < first < 40e6 + 32 * 2**20  # the blob, and little else of 1 GiB
        for _ in range(2):  # a resumed guest maps the snapshot's file again: thin again
            assert pyro.start_workspace(ws)["resumed"]
            assert pyro.exec_workspace(ws, "sha256sum -c /workspace/sum")["exit_code"] == 0
            assert pyro.stop_workspace(ws)["memory_bytes"] < first + 16 * 2**20
        # Without the file it was saved against, it boots from its disks and says why.
        base.unlink()
        started = pyro.start_workspace(ws)
        assert not started["resumed"] and suspend.BASE_NAME in started["reason"]
        assert pyro.exec_workspace(ws, "test -e /tmp/blob || cat /workspace/sum")["exit_code"] == 0
        assert not base.exists()  # a cold-booted guest maps no snapshot file
    finally:
        pyro.delete_workspace(ws)


def test_a_call_on_a_suspended_workspace_resumes_it_and_concurrent_calls_wait(
    pyro: Pyro,
) -> None:
    ws = pyro.create_workspace()["workspace_id"]
    try:
        pyro.exec_workspace(ws, "echo 1 > /tmp/x")
        pyro.stop_workspace(ws)
        results: list[str] = []

        def call() -> None:
            results.append(pyro.exec_workspace(ws, "cat /tmp/x")["stdout"])

        threads = [threading.Thread(target=call) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert results == ["1\n"] * 3
        assert pyro.status_workspace(ws)["boot_kind"] == "resumed"
        assert pyro.list_workspace_files(ws)["entries"] == []  # file ops work too
    finally:
        pyro.delete_workspace(ws)


def test_discard_memory_stops_instead(pyro: Pyro) -> None:
    ws = pyro.create_workspace()["workspace_id"]
    try:
        pyro.exec_workspace(ws, "echo gone > /tmp/x; echo kept > /workspace/y")
        stopped = pyro.stop_workspace(ws, discard_memory=True)
        assert stopped["state"] == "stopped" and not stopped["suspended"]
        started = pyro.start_workspace(ws)
        assert not started["resumed"] and "reason" not in started
        out = pyro.exec_workspace(ws, "cat /workspace/y; test -e /tmp/x || echo no-tmp")
        assert out["stdout"] == "kept\nno-tmp\n"
        # A cold-booted guest's memory is saved whole, resumed or not before.
        for _ in range(2):
            assert pyro.stop_workspace(ws)["memory_bytes"] > 32 * 2**20
            started = pyro.start_workspace(ws)
            assert started["resumed"], started.get("reason")
    finally:
        pyro.delete_workspace(ws)


def test_a_corrupt_or_interrupted_saved_state_boots_from_the_disks(pyro: Pyro) -> None:
    ws = pyro.create_workspace()["workspace_id"]
    try:
        pyro.exec_workspace(ws, "echo kept > /workspace/y; sync")
        pyro.stop_workspace(ws)
        state, _ = suspend.paths(vm_dir(pyro, ws))
        with state.open("r+b") as handle:
            handle.seek(state.stat().st_size // 2)
            byte = handle.read(1)
            handle.seek(-1, 1)
            handle.write(bytes([byte[0] ^ 0xFF]))
        started = pyro.start_workspace(ws)
        assert not started["resumed"] and "corrupt" in started["reason"]
        assert pyro.exec_workspace(ws, "cat /workspace/y")["stdout"] == "kept\n"
        assert not state.exists()

        # A suspend killed half-way leaves a stream without its description.
        pyro.stop_workspace(ws, discard_memory=True)
        suspend.partial(vm_dir(pyro, ws)).write_bytes(b"QEVM half a stream")
        started = pyro.start_workspace(ws)
        assert not started["resumed"] and "interrupted" in started["reason"]
        assert pyro.exec_workspace(ws, "cat /workspace/y")["stdout"] == "kept\n"
    finally:
        pyro.delete_workspace(ws)


def test_a_published_port_answers_again_after_a_resume(pyro: Pyro) -> None:
    ws = pyro.create_workspace(network_policy="egress+published-ports", idle_suspend_seconds=1)[
        "workspace_id"
    ]
    try:
        service = pyro.start_service(
            ws,
            "web",
            "python3 -m http.server 8000",
            ready_http="http://127.0.0.1:8000/",
            published_ports=["8000"],
        )
        port = service["published_ports"][0]["host_port"]
        pyro.stop_workspace(ws)
        assert pyro.start_workspace(ws)["resumed"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as reply:
            assert reply.status == 200

        # Idle, it keeps running for its port; unless the user opts in.
        time.sleep(1.5)
        assert pyro.suspend_idle_workspaces()["suspended"] == []
        changed = pyro.update_workspace(ws, idle_suspend_published=True)
        assert changed["idle_suspend_published"] is True
        time.sleep(1.5)
        assert pyro.suspend_idle_workspaces()["suspended"] == [ws]
        with pytest.raises(OSError):  # the port does not answer while suspended
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        pyro.exec_workspace(ws, "true")  # the next call resumes it, port included
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as reply:
            assert reply.status == 200
    finally:
        pyro.delete_workspace(ws)


def test_no_room_for_the_memory_keeps_the_workspace_running(
    pyro: Pyro, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = pyro.create_workspace()["workspace_id"]
    try:
        monkeypatch.setattr("pyro_mcp.vm.service.SUSPEND_MARGIN_BYTES", 2**50)  # a disk this full
        with pytest.raises(StoreError, match=r"not enough room.*keeps running.*discard-memory"):
            pyro.stop_workspace(ws)
        assert pyro.status_workspace(ws)["state"] == "running"
        assert pyro.exec_workspace(ws, "echo alive")["stdout"] == "alive\n"
    finally:
        pyro.delete_workspace(ws)


@pytest.mark.parametrize("victim", ["qemu", "supervisor"])
def test_kill_9_during_a_suspend_loses_nothing(pyro: Pyro, victim: str) -> None:
    ws = pyro.create_workspace()["workspace_id"]
    try:
        pyro.exec_workspace(ws, "echo kept > /workspace/y; sync")
        vm = pyro._workspaces.vms.status_vm(pyro.status_workspace(ws)["vm_id"])
        with SupervisorClient(vm_dir(pyro, ws) / "ctl.sock") as client:
            pids = {"qemu": int(client.call("status")["qemu_pid"]), "supervisor": vm.supervisor_pid}
        outcome: list[object] = []

        def stop() -> None:
            try:
                outcome.append(pyro.stop_workspace(ws)["state"])
            except PyroError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=stop)
        thread.start()
        time.sleep(0.15)  # inside the save
        os.kill(int(pids[victim] or 0), signal.SIGKILL)
        thread.join(120)
        assert outcome and (
            outcome[0] in ("suspended", "stopped") or isinstance(outcome[0], PyroError)
        )
        assert pyro.status_workspace(ws)["state"] in ("running", "suspended", "stopped")
        if pyro.status_workspace(ws)["state"] != "running":
            pyro.start_workspace(ws)
        assert pyro.exec_workspace(ws, "cat /workspace/y")["stdout"] == "kept\n"
    finally:
        pyro.delete_workspace(ws)


def test_a_start_waits_for_a_dying_qemu_to_let_go_of_the_disks(pyro: Pyro) -> None:
    # A QEMU killed with its supervisor takes a while to exit and holds its
    # disks' locks until then (seen in CI right after a kill -9 mid-suspend).
    ws = pyro.create_workspace()["workspace_id"]
    try:
        pyro.exec_workspace(ws, "echo kept > /workspace/y; sync")
        root = vm_dir(pyro, ws) / "root.qcow2"
        pyro.stop_workspace(ws)
        holder = subprocess.Popen(
            [
                "qemu-system-x86_64",
                "-M",
                "microvm",
                "-nodefaults",
                "-nographic",
                "-S",
                "-drive",
                f"id=r,file={root},format=qcow2,if=none",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while str(root.stat().st_ino) not in Path("/proc/locks").read_text():
                assert time.monotonic() < deadline, "the stand-in QEMU never locked the disk"
                time.sleep(0.05)
            threading.Timer(2.0, holder.kill).start()
            pyro.start_workspace(ws)
        finally:
            holder.kill()
            holder.wait()
        assert pyro.exec_workspace(ws, "cat /workspace/y")["stdout"] == "kept\n"
    finally:
        pyro.delete_workspace(ws)


def test_an_idle_workspace_suspends_itself_and_the_next_call_resumes_it(pyro: Pyro) -> None:
    idle = pyro.create_workspace(name="idle", idle_suspend_seconds=1)["workspace_id"]
    never = pyro.create_workspace(name="never", idle_suspend_seconds=0)["workspace_id"]
    try:
        assert pyro.status_workspace(idle)["idle_suspend_seconds"] == 1
        pyro.exec_workspace(idle, "echo 1 > /tmp/x")
        time.sleep(1.5)
        assert pyro.suspend_idle_workspaces()["suspended"] == [idle]
        states = {w["name"]: w["state"] for w in pyro.list_workspaces()["workspaces"]}
        assert states == {"idle": "suspended", "never": "running"}
        # The chat's next call just works.
        assert pyro.exec_workspace(idle, "cat /tmp/x")["stdout"] == "1\n"
        entries = pyro.logs_workspace(idle)["entries"]
        assert any(e["kind"] == "suspend" and "idle" in e.get("reason", "") for e in entries)
        pyro.update_workspace(idle, idle_suspend_seconds=0)
        time.sleep(1.5)
        assert pyro.suspend_idle_workspaces()["suspended"] == []
    finally:
        pyro.delete_workspace(idle)
        pyro.delete_workspace(never)


def test_idle_suspend_seconds_is_checked(pyro: Pyro) -> None:
    with pytest.raises(InvalidArgument, match="idle_suspend_seconds"):
        pyro.create_workspace(idle_suspend_seconds=-1)
    assert pyro.list_workspaces()["workspaces"] == []
