"""Offline disk tools for a stopped workspace: export, list, read without booting.

The workspace disk is read with ``qemu-img`` (to a sparse raw copy) and
``debugfs`` from e2fsprogs: no mount, no root, no guest. The disk holds only
/workspace, so runtime paths (/run/pyro-secrets, service logs) never appear.
The filesystem was written by the guest and is untrusted: names and sizes from
``debugfs`` are validated and bounded here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from pyro_mcp import host_tools
from pyro_mcp.errors import InvalidArgument, VMError
from pyro_mcp.workspaces import replies, transfer
from pyro_mcp.workspaces.context import WorkspaceContext, WorkspaceState
from pyro_mcp.workspaces.paths import resolve_workspace_path

MAX_ENTRIES = 10_000
_TYPES = {"04": "directory", "10": "file", "12": "symlink"}


class DiskOps:
    def __init__(self, ctx: WorkspaceContext) -> None:
        self.ctx = ctx

    def export(self, ref: str, output: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
        """Write /workspace as a raw ext4 image to ``output``."""
        workspace = self._stopped(ref)
        with transfer.placing(Path(output), overwrite) as target:
            partial = target.with_name(f".{target.name}.partial")
            try:
                self._convert(workspace, partial)
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
        return self.ctx.done(
            workspace,
            {
                "output_path": str(target),
                "bytes_written": target.stat().st_size,
                "disk_format": "raw ext4",
            },
        )

    def list(self, ref: str, path: str = ".", *, recursive: bool = False) -> dict[str, Any]:
        workspace = self._stopped(ref)
        top = _disk_path(path)
        entries: list[dict[str, Any]] = []
        truncated = False
        with self._image(workspace) as image:
            pending = [top]
            while pending:
                directory = pending.pop(0)
                for entry in _ls(image, directory):
                    if len(entries) >= MAX_ENTRIES:
                        truncated = True
                        break
                    entries.append(entry)
                    if recursive and entry["artifact_type"] == "directory":
                        pending.append("/" + replies.shown(entry["path"]))
                if truncated or not recursive:
                    break
        return self.ctx.done(
            workspace,
            {"path": replies.absolute(top), "entries": entries, "truncated": truncated},
        )

    def read(
        self, ref: str, path: str, *, max_bytes: int = replies.DEFAULT_READ_BYTES
    ) -> dict[str, Any]:
        if not 1 <= max_bytes <= replies.MAX_READ_BYTES:
            raise InvalidArgument("max_bytes", f"must be from 1 to {replies.MAX_READ_BYTES}")
        workspace = self._stopped(ref)
        target = _disk_path(path)
        with self._image(workspace) as image, tempfile.TemporaryDirectory() as tmp:
            kind = _stat_type(image, target)
            if kind != "regular":
                raise InvalidArgument(
                    "path", f"{target.lstrip('/')} is a {kind}, not a regular file"
                )
            out = Path(tmp) / "content"
            _debugfs(image, f"dump {target} {out}")
            size = out.stat().st_size
            with out.open("rb") as handle:
                data = handle.read(max_bytes)
        binary = b"\0" in data[:8192]
        return self.ctx.done(
            workspace,
            {
                "path": target.lstrip("/"),
                "size_bytes": size,
                "max_bytes": max_bytes,
                "binary": binary,
                "truncated": size > len(data),
                "content": None if binary else data.decode("utf-8", errors="replace"),
            },
        )

    def _stopped(self, ref: str) -> dict[str, Any]:
        workspace = self.ctx.find(ref)
        self.ctx.require(
            workspace,
            (WorkspaceState.STOPPED, WorkspaceState.SUSPENDED, WorkspaceState.CREATED),
            "Disk tools read the disk offline: run `pyro workspace stop {ref}` first, "
            "or use the file tools on the running workspace.",
        )
        return workspace

    def _convert(self, workspace: dict[str, Any], raw: Path) -> None:
        source = self.ctx.root / workspace["workspace_id"] / "workspace.qcow2"
        result = host_tools.run(
            host_tools.QEMU_IMG,
            ["convert", "-O", "raw", source, raw],
            capture_output=True,
        )
        if result.returncode != 0:
            raw.unlink(missing_ok=True)
            raise VMError(f"qemu-img could not read the workspace disk: {result.stderr.strip()}")
        # A suspended workspace's filesystem was never frozen: what it last wrote
        # may sit in its journal alone. Replaying that (in the copy) makes the
        # copy read as the guest saw it; debugfs itself never replays.
        replayed = host_tools.run(
            host_tools.E2FSCK, ["-E", "journal_only", "-y", raw], capture_output=True, timeout=300
        )
        if replayed.returncode not in (0, 1):
            raw.unlink(missing_ok=True)
            tail = " ".join((replayed.stdout + replayed.stderr).split())[-400:]
            raise VMError(f"the workspace disk's journal could not be replayed: {tail}")

    @contextmanager
    def _image(self, workspace: dict[str, Any]) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="pyro-disk-") as tmp:
            raw = Path(tmp) / "workspace.ext4"
            self._convert(workspace, raw)
            yield raw


def _disk_path(path: str) -> str:
    relative = resolve_workspace_path(path).relative_to("/workspace")
    text = "/" + str(relative) if str(relative) != "." else "/"
    if any(c in text for c in " \t\n\"'\\") or not text.isprintable():
        raise InvalidArgument(
            "path",
            "disk tools cannot name paths with spaces, quotes or control characters; "
            "start the workspace and use the file tools",
        )
    return text


def _debugfs(image: Path, command: str) -> str:
    result = host_tools.run(
        host_tools.DEBUGFS,
        ["-R", command, image],
        capture_output=True,
        errors="replace",
        timeout=120,
    )
    problem = [line for line in result.stderr.splitlines() if not line.startswith("debugfs ")]
    if problem:
        message = problem[-1].strip()
        if "not found" in message:
            raise InvalidArgument(
                "path", f"{command.split()[1].lstrip('/')} does not exist on the disk"
            )
        raise VMError(f"debugfs could not read the disk: {' | '.join(problem)[-600:]}")
    return result.stdout


def _ls(image: Path, directory: str) -> list[dict[str, Any]]:
    entries = []
    for line in _debugfs(image, f"ls -p {directory}").splitlines():
        fields = line.split("/")
        # "/inode/mode/uid/gid/name/size/": names cannot hold "/", so 8 fields.
        if len(fields) != 8 or not fields[2].isdigit():
            continue
        name, mode = fields[5], fields[2].zfill(6)
        if name in (".", "..") or not name or not name.isprintable():
            continue
        if directory == "/" and name == "lost+found":
            continue
        path = str(PurePosixPath(directory.lstrip("/")) / name)
        size = int(fields[6]) if fields[6].isdigit() else 0
        kind = _TYPES.get(mode[:2], "other")
        entries.append(replies.listing_entry(path, kind, size, int(mode[2:], 8)))
    return entries


def _stat_type(image: Path, path: str) -> str:
    for line in _debugfs(image, f"stat {path}").splitlines():
        if "Type:" in line:
            return line.split("Type:", 1)[1].split()[0]
    raise InvalidArgument("path", f"{path.lstrip('/')} does not exist on the disk")
