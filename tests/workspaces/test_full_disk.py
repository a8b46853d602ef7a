"""A full host disk under PYRO_HOME: an I/O error in the guest, clear errors on the host, no loss.

Runs on a small tmpfs mounted as PYRO_HOME (root only).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp import Pyro
from pyro_mcp.errors import StoreError
from tests.conftest import leaked_processes
from tests.workspaces.test_workspace_repair import SHUT_DOWN

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def small_home(
    tmp_path: Path, cache_dir: Path, warm_environment: dict[str, Any]
) -> Iterator[tuple[Path, Pyro]]:
    """A 200 MB tmpfs as PYRO_HOME and an SDK on it; everything removed afterwards."""
    home = tmp_path / "small-home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(home)], check=True)
    pyro = Pyro(state_dir=home / "state", cache_dir=cache_dir)
    try:
        yield home, pyro
    finally:
        for workspace in pyro.list_workspaces()["workspaces"]:
            pyro.delete_workspace(workspace["workspace_id"])
        leaked = leaked_processes(home)
        subprocess.run(["umount", "-l", str(home)], check=False)
    assert leaked == []


def free_mib(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize // 2**20


def test_a_full_host_disk_is_an_io_error_in_the_guest_and_the_workspace_recovers(
    small_home: tuple[Path, Pyro],
) -> None:
    home, pyro = small_home
    created = pyro.create_workspace()
    assert "MiB free on the filesystem of PYRO_HOME" in created["warning"]
    assert any("PYRO_HOME" in w for w in pyro.doctor()["warnings"])
    ws = created["workspace_id"]

    # The guest writes more than the host has: its fsync fails promptly with an
    # I/O error (QEMU reports it instead of pausing the VM).
    filled = pyro.exec_workspace(
        ws,
        "dd if=/dev/urandom of=/workspace/big bs=1M count=300 conv=fsync; echo rc=$?",
        timeout_seconds=60,
    )
    assert not filled["timed_out"] and "rc=1" in filled["stdout"]
    # An I/O error on the data, or (when it hit the journal) the filesystem stopped.
    assert any(e in filled["stderr"] for e in ("Input/output error", "Read-only file system"))
    assert free_mib(home) < 5
    # pyro's own records cannot be written: the error names PYRO_HOME and what to do.
    with pytest.raises(StoreError, match=r"PYRO_HOME, .*small-home.*is full.*delete"):
        pyro.create_snapshot(ws, "full")
    assert not (home / "state" / "workspaces" / ws / "snapshots" / "full.partial").exists()

    # Deleting in the guest gives the space back to the host (discard). In some
    # runs the guest's ext4 saw the I/O errors in its journal and turned itself
    # read-only; then the next call mounts /workspace again (replaying the
    # journal) and says so, and the delete goes through.
    # In one fresh-clone run under load the first delete went through (exit 0, no
    # read-only filesystem) and the host still had under 100 MiB: the blocks came
    # back only with a later call's trim. Not explained yet (see the #35 note);
    # the workspace must recover within a few calls either way.
    freed = pyro.exec_workspace(ws, "rm -f /workspace/big; sync", timeout_seconds=60)
    tries = [freed]
    for _ in range(3):
        if free_mib(home) > 100:
            break
        freed = pyro.exec_workspace(ws, "rm -f /workspace/big; sync", timeout_seconds=60)
        tries.append(freed)
    assert free_mib(home) > 100, tries
    after = pyro.exec_workspace(ws, "echo ok > /workspace/ok && cat /workspace/ok")
    assert after["stdout"] == "ok\n", after
    assert pyro.read_workspace_file(ws, "ok")["content"] == "ok\n"
    assert [e["kind"] for e in pyro.logs_workspace(ws)["entries"]][-1] == "exec"


def test_deleting_a_workspace_on_a_full_disk_frees_it_first(
    small_home: tuple[Path, Pyro],
) -> None:
    home, pyro = small_home
    ws = pyro.create_workspace(name="filler")["workspace_id"]
    pyro.exec_workspace(
        ws, "dd if=/dev/zero of=/workspace/big bs=1M count=300; sync", timeout_seconds=60
    )
    assert free_mib(home) < 5
    pyro.delete_workspace(ws)  # files first, then the records
    assert pyro.list_workspaces()["workspaces"] == []
    assert free_mib(home) > 150


def test_a_workspace_stopped_by_a_full_disk_is_mounted_again_so_rm_can_free_it(
    small_home: tuple[Path, Pyro],
) -> None:
    """The rare outcome above, forced: the journal gave up while the host was full."""
    home, pyro = small_home
    ws = pyro.create_workspace()["workspace_id"]
    pyro.exec_workspace(
        ws, "dd if=/dev/urandom of=/workspace/big bs=1M count=300 conv=fsync", timeout_seconds=60
    )
    assert free_mib(home) < 5
    pyro.exec_workspace(ws, SHUT_DOWN)
    freed = pyro.exec_workspace(ws, "rm -f /workspace/big; sync", timeout_seconds=60)
    assert "mounted it again" in freed["warning"], freed
    assert free_mib(home) > 100, freed
    after = pyro.exec_workspace(ws, "echo ok > /workspace/ok && cat /workspace/ok")
    assert after["stdout"] == "ok\n" and "warning" not in after, after
