"""Fork: one running workspace becomes several, processes included, each its own machine."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from benchmarks.fork_memory import qemu_memory_mib

from pyro_mcp import Pyro
from pyro_mcp.errors import InvalidArgument, NotFound, PyroError, StateError, VMError
from pyro_mcp.vm import disks, suspend
from tests.conftest import TEST_ENVIRONMENT
from tests.workspaces.test_snapshots_disk import fsck_clean


def test_forks_carry_the_running_state_and_then_go_their_own_way(pyro: Pyro) -> None:
    source = pyro.create_workspace(
        name="src", network_policy="egress+published-ports", secrets={"TOKEN": "s3cret-value"}
    )["workspace_id"]
    try:
        service = pyro.start_service(
            source,
            "web",
            "python3 -m http.server 8000",
            ready_http="http://127.0.0.1:8000/",
            published_ports=["8000"],
        )
        source_port = service["published_ports"][0]["host_port"]
        pyro.exec_workspace(source, "echo prepared > /workspace/state; echo t > /tmp/t")
        ids = pyro.exec_workspace(source, "cat /etc/machine-id; hostname")["stdout"]

        result = pyro.fork_workspace(source, name="try", count=2)
        assert result["workspace_id"] == source and result["pause_ms"] >= 0
        forks = result["forks"]
        assert [f["name"] for f in forks] == ["try-1", "try-2"]
        assert all(f["forked_from"] == source and f["boot_kind"] == "resumed" for f in forks)
        seen = set()
        for fork in forks:
            ws = fork["workspace_id"]
            out = pyro.exec_workspace(
                ws,
                "cat /workspace/state /tmp/t; cat /etc/machine-id; hostname; printenv TOKEN_VAR",
                secret_env=["TOKEN:TOKEN_VAR"],
            )
            lines = out["stdout"].split("\n")
            assert lines[:2] == ["prepared", "t"]
            assert "\n".join(lines[2:4]) + "\n" != ids  # its own machine id and hostname
            assert "s3cret-value" not in out["stdout"]  # its own copy of the secret, redacted
            seen.add(lines[2])
            # The service runs in the fork, published on a new host port.
            assert pyro.status_service(ws, "web")["state"] == "running"
            port = pyro.list_services(ws)["services"][0]["published_ports"][0]["host_port"]
            assert port != source_port
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as reply:
                assert reply.status == 200
            # The diff baseline is the source's seed baseline.
            assert [c["path"] for c in pyro.diff_workspace(ws)["changes"]] == ["state"]
        assert len(seen) == 2
        # Each goes its own way: nothing crosses.
        pyro.exec_workspace(forks[0]["workspace_id"], "echo mine > /workspace/state")
        assert pyro.exec_workspace(source, "cat /workspace/state")["stdout"] == "prepared\n"
        second = pyro.exec_workspace(forks[1]["workspace_id"], "cat /workspace/state")
        assert second["stdout"] == "prepared\n"
        assert pyro.exec_workspace(source, "echo ok")["stdout"] == "ok\n"  # source runs on
        assert "fork" in [e["kind"] for e in pyro.logs_workspace(source)["entries"]]
    finally:
        for workspace in pyro.list_workspaces()["workspaces"]:
            pyro.delete_workspace(workspace["workspace_id"])


def test_bad_forks_are_refused_and_leave_nothing(
    pyro: Pyro, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = pyro.create_workspace(name="src")["workspace_id"]
    other = pyro.create_workspace(name="taken")["workspace_id"]
    try:
        with pytest.raises(InvalidArgument, match="count: must be a whole number from 1 to 8"):
            pyro.fork_workspace(source, count=9)
        with pytest.raises(InvalidArgument, match="taken"):
            pyro.fork_workspace(source, name="taken")
        with pytest.raises(NotFound):
            pyro.fork_workspace("ws-doesnotexist")
        pyro.stop_workspace(source)
        with pytest.raises(StateError, match=r"suspended.*workspace start src"):
            pyro.fork_workspace(source)
        pyro.stop_workspace(source, discard_memory=True)
        with pytest.raises(StateError, match="stopped"):
            pyro.fork_workspace(source)
        assert sorted(w["name"] for w in pyro.list_workspaces()["workspaces"]) == ["src", "taken"]
        pyro.start_workspace(source)
        # Forks start side by side: the host's cap is checked for all of them first.
        monkeypatch.setenv("PYRO_MAX_RUNNING", "3")
        with pytest.raises(StateError, match="room for 2 more under its cap of 3"):
            pyro.fork_workspace(source, count=2)
        assert sorted(w["name"] for w in pyro.list_workspaces()["workspaces"]) == ["src", "taken"]
        leftovers = [p.name for p in pyro._workspaces.root.iterdir() if p.name.startswith(".fork")]
        assert leftovers == []
    finally:
        pyro.delete_workspace(source)
        pyro.delete_workspace(other)


def test_a_fork_that_fails_midway_leaves_the_source_running_on_its_own_disks(
    pyro: Pyro, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QEMU refuses the new top it is to switch onto (damaged here after it was
    made): the save is cancelled, the source runs on where it was, and no fork,
    layer or new top is left behind."""
    source = pyro.create_workspace(name="src")["workspace_id"]
    folder = pyro._workspaces.root / source
    vm_dir = pyro._workspaces.vms.paths.vms_dir / pyro.status_workspace(source)["vm_id"]
    real_split = disks.split

    def damaged(image: Path) -> disks.Split:
        prepared = real_split(image)
        if image.name == "workspace.qcow2":
            prepared.top.write_bytes(b"not an image")
        return prepared

    try:
        pyro.exec_workspace(source, "echo kept > /workspace/kept")
        monkeypatch.setattr(disks, "split", damaged)
        with pytest.raises(VMError, match=r"forking failed.*the workspace keeps running"):
            pyro.fork_workspace(source, name="never")
        monkeypatch.undo()
        assert [w["name"] for w in pyro.list_workspaces()["workspaces"]] == ["src"]
        left = [p.name for d in (folder, vm_dir) for p in d.glob("*.qcow2") if "-" in p.name]
        assert left == []
        assert pyro.exec_workspace(source, "cat kept; echo more > more")["exit_code"] == 0
        # And the next fork goes through.
        child = pyro.fork_workspace(source, name="child")["forks"][0]["workspace_id"]
        assert pyro.exec_workspace(child, "cat kept more")["stdout"] == "kept\nmore\n"
    finally:
        for workspace in pyro.list_workspaces()["workspaces"]:
            pyro.delete_workspace(workspace["workspace_id"])


def test_a_source_killed_during_its_fork_loses_nothing(pyro: Pyro) -> None:
    """QEMU killed while the fork saves its memory: a clear error (or, if the kill
    came after the save, a whole fork); the source starts again from its disks
    with every file, under its drives' own names."""
    source = pyro.create_workspace(name="src")["workspace_id"]
    folder = pyro._workspaces.root / source
    try:
        # 150 MB in the guest's page cache: the memory save takes a while.
        pyro.exec_workspace(
            source,
            "head -c 150000000 /dev/urandom > big; md5sum big > big.md5; sync",
            timeout_seconds=120,
        )
        supervisor = pyro.status_vm(pyro.status_workspace(source)["vm_id"])["supervisor_pid"]
        qemu = int(Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()[0])
        killer = threading.Timer(0.5, os.kill, (qemu, signal.SIGKILL))
        killer.start()
        try:
            forks = pyro.fork_workspace(source, name="child")["forks"]
        except PyroError as exc:
            assert "died while it was being forked" in str(exc), exc
            assert "start it again" in str(exc)
            forks = []
        finally:
            killer.join()
        assert sorted(w["name"] for w in pyro.list_workspaces()["workspaces"]) == sorted(
            ["src"] + [f["name"] for f in forks]
        )
        leftovers = [p.name for p in pyro._workspaces.root.iterdir() if p.name.startswith(".fork")]
        assert leftovers == []
        started = pyro.start_workspace(source)
        assert not started["resumed"]
        assert pyro.exec_workspace(source, "md5sum -c big.md5")["exit_code"] == 0
        assert not list(folder.glob("workspace.top-*"))
        for fork in forks:
            check = pyro.exec_workspace(fork["workspace_id"], "md5sum -c big.md5")
            assert check["exit_code"] == 0, check
    finally:
        for workspace in pyro.list_workspaces()["workspaces"]:
            pyro.delete_workspace(workspace["workspace_id"])


def test_forks_share_their_parents_disk_state_and_outlive_it(pyro: Pyro) -> None:
    parent = pyro.create_workspace(name="big")["workspace_id"]
    root = pyro._workspaces.root
    try:
        pyro.exec_workspace(
            parent, "head -c 20000000 /dev/urandom > /workspace/data; md5sum data > sum; sync"
        )
        before = (root / parent / "workspace.qcow2").stat().st_ino
        child = pyro.fork_workspace(parent, name="child")["forks"][0]["workspace_id"]
        # Nothing is copied: the parent's own top image (its 20 MB) became a
        # read-only layer, linked into the child's folder, and each of them writes
        # on a small new image of its own.
        top = root / child / "workspace.qcow2"
        layer = root / child / "workspace.layer-1.qcow2"
        assert top.stat().st_size < 2 * 2**20 and layer.stat().st_size > 20 * 10**6
        assert layer.stat().st_ino == before and not layer.stat().st_mode & 0o222
        parent_top = disks.live_top(root / parent / "workspace.qcow2")
        assert parent_top.name == "workspace.top-1.qcow2"
        assert parent_top.stat().st_size < 2 * 2**20
        # Forked again (and again) while it runs on: each call gets its own layer.
        pyro.exec_workspace(parent, "echo after > after")
        for again in ("again-1", "again-2"):
            other = pyro.fork_workspace(parent, name=again)["forks"][0]["workspace_id"]
            assert pyro.exec_workspace(other, "cat after; md5sum -c sum")["exit_code"] == 0
            pyro.delete_workspace(other)
        assert pyro.exec_workspace(parent, "cat after")["stdout"] == "after\n"
        # Stopped, the parent's newest top takes the drive's name again; it
        # resumes on it, and so does a cold boot.
        pyro.stop_workspace(parent)
        names = sorted(p.name for p in (root / parent).glob("workspace.*"))
        assert names == [f"workspace.layer-{n}.qcow2" for n in (1, 2, 3)] + ["workspace.qcow2"]
        assert pyro.start_workspace(parent)["resumed"]
        assert pyro.exec_workspace(parent, "cat after; md5sum -c sum")["exit_code"] == 0
        grandchild = pyro.fork_workspace(child, name="grandchild")["forks"][0]["workspace_id"]
        assert (root / grandchild / "workspace.layer-2.qcow2").exists()
        assert (root / grandchild / "workspace.layer-1.qcow2").stat().st_ino == layer.stat().st_ino

        # Their memory was saved against the warm snapshot's RAM file, which
        # each links (so it outlives any of them, and a pruned snapshot).
        vms = pyro._workspaces.vms.paths.vms_dir
        bases = [
            vms / pyro.status_workspace(ws)["vm_id"] / suspend.BASE_NAME
            for ws in (parent, child, grandchild)
        ]
        assert len({base.stat().st_ino for base in bases}) == 1

        # Deleting the ancestors leaves the descendants whole.
        pyro.delete_workspace(parent)
        pyro.delete_workspace(child)
        check = pyro.exec_workspace(grandchild, "md5sum -c sum && echo more > more")
        assert check["exit_code"] == 0, check
        assert pyro.stop_workspace(grandchild)["memory_bytes"] < 32 * 2**20
        assert pyro.start_workspace(grandchild)["resumed"]
        pyro.create_snapshot(grandchild, "kept")
        pyro.stop_workspace(grandchild, discard_memory=True)  # and booted from its disks
        pyro.start_workspace(grandchild)
        assert pyro.exec_workspace(grandchild, "md5sum -c sum")["exit_code"] == 0
        pyro.reset_workspace(grandchild, snapshot="kept")
        assert pyro.exec_workspace(grandchild, "cat more")["stdout"] == "more\n"
        pyro.reset_workspace(grandchild)  # the baseline: the seed, nothing forked
        assert pyro.exec_workspace(grandchild, "test -e data || echo gone")["stdout"] == "gone\n"
    finally:
        for workspace in pyro.list_workspaces()["workspaces"]:
            pyro.delete_workspace(workspace["workspace_id"])


# Appends numbered lines, each with its number's checksum, and rewrites a file
# in place, without pause: a fork lands in the middle of these writes.
WRITER = (
    "i=0; while true; do i=$((i+1)); "
    'echo "$i $(echo $i | md5sum | cut -c1-32)" >> /workspace/log; '
    "dd if=/dev/urandom of=/workspace/churn bs=64k count=8 conv=notrunc status=none; done"
)
CHECK_LOG = (
    "sync; echo 3 > /proc/sys/vm/drop_caches; md5sum -c blob.md5 >/dev/null || echo BAD blob; "
    "n=0; while read i h; do n=$((n+1)); "
    '[ "$i" = "$n" ] && [ "$(echo $i | md5sum | cut -c1-32)" = "$h" ] || echo BAD line $n; '
    "done < log; echo lines $n"
)


def test_a_fork_taken_while_the_source_writes_has_whole_disks(pyro: Pyro, tmp_path: Path) -> None:
    """The source's images become the fork's layers during the pause, while it is
    in the middle of writing: the fork's disks match its memory, so its files
    read back whole from the disk and its filesystem checks clean; the source's
    too, on its new images."""
    source = pyro.create_workspace(name="busy")["workspace_id"]
    root = pyro._workspaces.root
    try:
        pyro.exec_workspace(
            source, "head -c 30000000 /dev/urandom > blob; md5sum blob > blob.md5; sync"
        )
        pyro.start_service(source, "writer", WRITER)
        time.sleep(2)
        forked = pyro.fork_workspace(source, name="busy-child")
        child = forked["forks"][0]["workspace_id"]
        for ws in (child, source):
            if ws == source or pyro.status_workspace(ws)["boot_kind"] == "resumed":
                pyro.stop_service(ws, "writer")
            else:  # a fork that could not resume says so, and has the disks all the same
                assert "booted from its disks" in forked["forks"][0]["warning"]
            seen = pyro.exec_workspace(ws, CHECK_LOG, timeout_seconds=120)["stdout"]
            assert "BAD" not in seen and int(seen.split()[-1]) > 0, seen
            pyro.stop_workspace(ws, discard_memory=True)  # its /workspace frozen clean
            assert fsck_clean(root / ws / "workspace.qcow2", tmp_path)
    finally:
        for workspace in pyro.list_workspaces()["workspaces"]:
            pyro.delete_workspace(workspace["workspace_id"])


def test_a_fork_or_a_suspend_leaves_the_source_about_as_small_as_before(
    private_pyro: Pyro,
) -> None:
    """Saving memory reads every snapshot page; those the guest never wrote go back.

    The kernel pages out only what no other process maps, and a page cache
    folio of the RAM file can be larger than a page: the guests of another
    test restored from the same snapshot would keep some of them mapped here.
    This test's guest maps a snapshot of its own.
    """
    pyro = private_pyro
    pyro.prepare(TEST_ENVIRONMENT, network=False)
    source = pyro.create_workspace()
    assert source["boot_kind"] == "warm"
    ws = source["workspace_id"]
    pyro.exec_workspace(ws, "echo kept > /workspace/kept")
    before = qemu_memory_mib(pyro, ws)
    fork = pyro.fork_workspace(ws)["forks"][0]["workspace_id"]
    after = qemu_memory_mib(pyro, ws)
    assert after["Rss"] <= 1.5 * before["Rss"] + 32, (before, after)
    assert after["Private_Clean"] <= before["Private_Clean"] + 64, (before, after)
    # The pages it gave back are read from the snapshot again when needed.
    done = pyro.exec_workspace(ws, "cat /workspace/kept; python3 -c 'print(6*7)'")
    assert done["stdout"] == "kept\n42\n"
    pyro.delete_workspace(fork)

    pyro.stop_workspace(ws)
    pyro.start_workspace(ws)
    resumed = qemu_memory_mib(pyro, ws)
    assert resumed["Rss"] <= 1.5 * before["Rss"] + 32, (before, resumed)
    pyro.delete_workspace(ws)
