"""Frozen records shared by the service layer and the surfaces."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any

from pyro_mcp.errors import StateError


class VmState(enum.StrEnum):
    """The lifecycle of a VM. Transitions are checked by ``require_state``."""

    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"


def require_state(vm_id: str, state: VmState, allowed: tuple[VmState, ...], fix: str) -> None:
    """Raise ``StateError`` unless ``state`` is one of ``allowed``."""
    if state not in allowed:
        required = " or ".join(s.value for s in allowed)
        raise StateError(f"VM {vm_id}", state.value, required, fix)


@dataclass(frozen=True)
class VmRecord:
    """What the state store knows about one VM."""

    vm_id: str
    environment: str
    state: VmState
    vcpu_count: int
    mem_mib: int
    network: bool
    owner_bound: bool
    build_dir: str
    created_at: float
    expires_at: float | None
    accel: str | None = None
    started_at: float | None = None
    supervisor_pid: int | None = None
    boot_ms: int | None = None
    last_error: str | None = None
    workspace_disk: str | None = None
    baseline_disk: str | None = None
    # How the last start got to a ready agent: "warm" (restored from a warm
    # snapshot) or "cold" (booted); a warning when a warm start was possible
    # but could not be used (stale or damaged snapshot, failed restore).
    boot_kind: str | None = None
    boot_warning: str | None = None
    # True until the root disk has been booted: only a fresh root disk can
    # start warm (a restored guest expects the disk its snapshot was taken with).
    fresh_root: bool = True

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data


EXECUTION_MODE = "guest_virtio_serial"


@dataclass(frozen=True)
class ExecResult:
    """One command's outcome. ``pyro run --json`` and ``exec_vm`` share these fields."""

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int

    @property
    def truncated(self) -> bool:
        return self.stdout_truncated or self.stderr_truncated

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["truncated"] = self.truncated
        # pyro-mcp 4.5's field: how the command reached the guest ("guest_vsock"
        # there); here the agent's virtio-serial channel, and never the host.
        data["execution_mode"] = EXECUTION_MODE
        return data


@dataclass(frozen=True)
class RunResult:
    """A one-shot run: the command's result plus how the VM was made."""

    environment: str
    accel: str
    vm_id: str
    boot_ms: int
    total_ms: int
    result: ExecResult
    boot_kind: str = "cold"
    boot_warning: str | None = None

    @property
    def exit_code(self) -> int:
        return self.result.exit_code

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            **self.result.to_dict(),
            "accel": self.accel,
            "vm_id": self.vm_id,
            "boot_ms": self.boot_ms,
            "boot_kind": self.boot_kind,
            "boot_warning": self.boot_warning,
            "total_ms": self.total_ms,
        }
