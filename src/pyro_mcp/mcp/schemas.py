"""Output schemas of the MCP tools.

Each model names the fields a model can rely on; more may follow (``extra`` is
allowed, so adding a field never breaks a client). The same fields come back
from the SDK and the CLI's ``--json``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# Inputs (closed: an unknown key is an error the model sees).


class SecretWithHosts(BaseModel):
    """A secret whose real value only the named hosts receive (the guest sees a placeholder)."""

    model_config = ConfigDict(extra="forbid")
    value: str
    hosts: list[str]


class SecretFileWithHosts(BaseModel):
    """A file-backed secret whose real value only the named hosts receive."""

    model_config = ConfigDict(extra="forbid")
    path: str
    hosts: list[str]


class CommandResult(_Open):
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int


class RunResult(CommandResult):
    environment: str
    accel: str
    vm_id: str
    boot_ms: int
    boot_kind: str
    boot_warning: str | None = None


class ExecResult(CommandResult):
    workspace_id: str


class VmExecResult(CommandResult):
    vm_id: str


class Workspace(_Open):
    workspace_id: str
    name: str | None
    labels: dict[str, str]
    environment: str
    state: str
    origin_kind: str
    origin_ref: str
    seed: dict[str, Any]
    workspace_seed: dict[str, Any]
    created_at: float
    last_activity_at: float
    expires_at: float | None
    last_error: str | None
    command_count: int
    boot_ms: int | None = None
    boot_kind: str | None = None
    boot_warning: str | None = None


class WorkspaceList(_Open):
    count: int
    workspaces: list[Workspace]


class Journal(_Open):
    workspace_id: str
    count: int
    entries: list[dict[str, Any]]


class Summary(_Open):
    workspace_id: str
    state: str
    commands: list[dict[str, Any]]
    failed_commands: int
    operations: dict[str, list[dict[str, Any]]]
    changes: dict[str, Any]
    artifacts: dict[str, Any]
    snapshots: dict[str, Any]
    services: dict[str, Any]
    note: str | None


class SyncResult(_Open):
    workspace_id: str
    dest: str
    files: int
    bytes: int


class FileList(_Open):
    workspace_id: str
    path: str
    entries: list[dict[str, Any]]
    truncated: bool


class FileContent(_Open):
    workspace_id: str
    path: str
    size: int
    binary: bool
    truncated: bool
    content: str | None
    content_base64: str | None


class FileWritten(_Open):
    workspace_id: str
    path: str
    bytes_written: int


class PatchResult(_Open):
    workspace_id: str
    changed: bool
    files: list[dict[str, Any]]


class Diff(_Open):
    workspace_id: str
    changed: bool
    changes: list[dict[str, Any]]
    summary: dict[str, int]
    patch: str
    patch_truncated: bool
    format: str
    ignored_count: int


class Exported(_Open):
    workspace_id: str
    path: str
    output: str
    artifact_type: str
    files: int
    bytes: int
    ignored_count: int


class Forked(_Open):
    workspace_id: str
    forks: list[dict[str, Any]]
    pause_ms: int
    fork_ms: int


class Deleted(_Open):
    deleted: bool


class Vm(_Open):
    vm_id: str
    environment: str
    state: str
    accel: str | None
    last_error: str | None
    boot_ms: int | None = None
    boot_kind: str | None = None
    boot_warning: str | None = None


class VmList(_Open):
    vms: list[Vm]


class Shell(_Open):
    workspace_id: str
    shell_id: str


class ShellOutput(_Open):
    workspace_id: str
    shell_id: str
    output: str
    cursor: int
    next_cursor: int
    missed_bytes: int
    more: bool
    closed: bool
    exit_code: int | None


class Service(_Open):
    workspace_id: str
    name: str
    state: str
    exit_code: int | None
    reason: str
    published_ports: list[dict[str, Any]]


class ServiceList(_Open):
    workspace_id: str
    count: int
    running_count: int
    services: list[dict[str, Any]]


class ServiceLogs(_Open):
    workspace_id: str
    name: str
    stdout: str
    truncated: bool


class Snapshot(_Open):
    workspace_id: str
    name: str


class SnapshotList(_Open):
    workspace_id: str
    count: int
    snapshots: list[dict[str, Any]]


class DiskImage(_Open):
    workspace_id: str
    output_path: str
    bytes_written: int
    disk_format: str


class DiskFile(_Open):
    workspace_id: str
    path: str
    size_bytes: int
    max_bytes: int
    binary: bool
    truncated: bool
    content: str | None


class EnvironmentList(_Open):
    environments: list[dict[str, Any]]


class NetworkInfo(_Open):
    vm_id: str
    network: bool
    mode: str


class Reaped(_Open):
    reaped: list[str]
