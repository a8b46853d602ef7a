"""The files of one VM directory: sockets, logs, disks, the supervisor's spec."""

from __future__ import annotations

import os
from pathlib import Path

CONSOLE_TAIL_BYTES = 4000


class VmFiles:
    """The files of one VM directory."""

    def __init__(self, vm_dir: Path) -> None:
        self.dir = vm_dir
        self.spec = vm_dir / "supervisor.json"
        self.agent_socket = vm_dir / "agent.sock"
        self.console_socket = vm_dir / "console.sock"
        self.qmp_socket = vm_dir / "qmp.sock"
        self.control_socket = vm_dir / "ctl.sock"
        self.console_log = vm_dir / "console.log"
        self.qemu_log = vm_dir / "qemu.log"
        self.supervisor_log = vm_dir / "supervisor.log"
        self.exit_record = vm_dir / "exit.json"
        self.root_disk = vm_dir / "root.qcow2"
        self.egress_socket = vm_dir / "egress.sock"
        # A warm snapshot's RAM file the guest maps copy-on-write (see vm/suspend.py).
        self.memory_base = vm_dir / "memory.base"

    def sockets(self) -> tuple[Path, ...]:
        return (
            self.agent_socket,
            self.console_socket,
            self.qmp_socket,
            self.control_socket,
            self.egress_socket,
        )


def console_tail(files: VmFiles, limit: int = CONSOLE_TAIL_BYTES) -> str:
    """The last ``limit`` bytes the guest printed on its console."""
    try:
        with files.console_log.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
