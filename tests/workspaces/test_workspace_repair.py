"""A /workspace whose ext4 stopped after write errors comes back before the next write.

A full host disk can make the guest's journal fail; ext4 then refuses every
write, even the ``rm`` that would free space. The guest is made to stop its
filesystem the same way on purpose here (FS_IOC_SHUTDOWN without flushing the
log, or a read-only remount), so the test does not depend on where a write
error happens to land.
"""

from __future__ import annotations

import pytest

from pyro_mcp import Pyro
from pyro_mcp.errors import StateError

# linux/fs.h: FS_IOC_SHUTDOWN _IOR('X', 125, __u32); EXT4_GOING_FLAGS_NOLOGFLUSH = 2.
SHUT_DOWN = (
    "python3 -c \"import fcntl, os, struct; fd = os.open('/workspace', os.O_RDONLY); "
    "fcntl.ioctl(fd, 0x8004587D, struct.pack('I', 2))\""
)


@pytest.mark.parametrize("stop", [SHUT_DOWN, "mount -o remount,ro /workspace"])
def test_a_stopped_workspace_filesystem_is_mounted_again_with_its_files(
    pyro: Pyro, stop: str
) -> None:
    ws = pyro.create_workspace()["workspace_id"]
    try:
        pyro.write_workspace_file(ws, "kept.txt", "written before\n")
        pyro.exec_workspace(ws, "sync")
        stopped = pyro.exec_workspace(ws, f"{stop} && touch /workspace/x; echo rc=$?")
        assert "rc=1" in stopped["stdout"], stopped
        # The next write-bound call mounts it again first, and says so.
        after = pyro.exec_workspace(ws, "echo new > /workspace/new.txt && cat kept.txt new.txt")
        assert after["exit_code"] == 0, after
        assert after["stdout"] == "written before\nnew\n"
        assert "mounted it again" in after["warning"]
        # Then nothing more to say; file writes work too.
        quiet = pyro.exec_workspace(ws, "true")
        assert "warning" not in quiet
        pyro.write_workspace_file(ws, "later.txt", "ok\n")
        assert pyro.read_workspace_file(ws, "later.txt")["content"] == "ok\n"
    finally:
        pyro.delete_workspace(ws)


def test_a_stopped_filesystem_in_use_by_a_service_says_how_to_recover(pyro: Pyro) -> None:
    ws = pyro.create_workspace()["workspace_id"]
    try:
        pyro.start_service(ws, "holder", "sleep 600")  # its cwd is /workspace
        pyro.exec_workspace(ws, SHUT_DOWN)
        run = pyro.exec_workspace(ws, "ls /workspace; echo listed")
        assert "listed" in run["stdout"]
        assert "stop them" in run["warning"] and "pyro workspace stop" in run["warning"]
        with pytest.raises(StateError, match=r"read-only.*workspace start"):
            pyro.write_workspace_file(ws, "f.txt", "x")
        pyro.stop_service(ws, "holder")
        pyro.write_workspace_file(ws, "f.txt", "x")  # mounted again now
        assert pyro.read_workspace_file(ws, "f.txt")["content"] == "x"
    finally:
        pyro.delete_workspace(ws)
