"""File operations in a workspace: list, read, write, patch, diff, push and export.

Paths are resolved under /workspace on the host before the guest sees them;
every guest reply goes through ``replies`` before it reaches a caller. A
write, a patch and a push are journalled; a diff costs what changed (the
guest keeps a record of it, see ``guest/changes.py``).
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

from pyro_mcp.agent import operations as guest
from pyro_mcp.agent.client import SupervisorClient
from pyro_mcp.errors import InvalidArgument
from pyro_mcp.workspaces import export, ignore, replies, transfer
from pyro_mcp.workspaces.context import WorkspaceContext
from pyro_mcp.workspaces.patch import apply_file_patch, parse_patch
from pyro_mcp.workspaces.paths import resolve_workspace_path, workspace_relative

DIFF_FORMATS = ("changes", "patch")


class FileOps:
    def __init__(self, ctx: WorkspaceContext) -> None:
        self.ctx = ctx

    def listing(self, ref: str, path: str = ".", *, recursive: bool = False) -> dict[str, Any]:
        workspace, guest_path = self.ctx.find(ref), str(resolve_workspace_path(path))
        with self.ctx.connect(workspace) as client:
            reply = guest.file_list(client, guest_path, recursive=recursive)
        return self.ctx.done(workspace, {**replies.check_listing(reply)})

    def read(
        self, ref: str, path: str, *, max_bytes: int = replies.DEFAULT_READ_BYTES
    ) -> dict[str, Any]:
        if isinstance(max_bytes, bool) or not 1 <= max_bytes <= replies.MAX_READ_BYTES:
            raise InvalidArgument("max_bytes", f"must be from 1 to {replies.MAX_READ_BYTES}")
        workspace, guest_path = self.ctx.find(ref), str(resolve_workspace_path(path))
        with self.ctx.connect(workspace) as client:
            reply = guest.file_read(client, guest_path, max_bytes)
        return self.ctx.done(workspace, {**replies.check_read(reply, max_bytes)})

    def write(self, ref: str, path: str, content: str | bytes) -> dict[str, Any]:
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        if len(data) > replies.MAX_READ_BYTES:
            raise InvalidArgument(
                "content", f"is larger than {replies.MAX_READ_BYTES} bytes; use sync push"
            )
        workspace, guest_path = self.ctx.find(ref), str(resolve_workspace_path(path))
        encoded = base64.b64encode(data).decode("ascii")
        with self.ctx.connect(workspace) as client:
            self.ctx.checked_write(
                client,
                workspace,
                lambda check: guest.file_write(client, guest_path, encoded, check_workspace=check),
            )
        relative = workspace_relative(guest_path)
        self.ctx.journal(workspace, "write", {"path": relative, "bytes": len(data)})
        return self.ctx.done(workspace, {"path": relative, "bytes_written": len(data)})

    def apply_patch(self, ref: str, patch: str) -> dict[str, Any]:
        """Apply a unified diff: every hunk is checked first, then all files change at once."""
        file_patches = parse_patch(patch)
        workspace = self.ctx.find(ref)
        writes, deletes, summary = [], [], []
        with self.ctx.connect(workspace) as client:
            for file_patch in file_patches:
                guest_path = str(resolve_workspace_path(file_patch.path))
                original = self.ctx.read_text(client, guest_path) if file_patch.old_path else None
                if file_patch.old_path is None and self.ctx.exists(client, guest_path):
                    original = self.ctx.read_text(client, guest_path)
                result = apply_file_patch(file_patch, original)
                relative = workspace_relative(guest_path)
                if result is None:
                    deletes.append(guest_path)
                    summary.append({"path": relative, "status": "deleted"})
                else:
                    encoded = base64.b64encode(result.encode("utf-8")).decode("ascii")
                    writes.append({"path": guest_path, "content": encoded})
                    status = "added" if file_patch.old_path is None else "modified"
                    summary.append({"path": relative, "status": status})
            self.ctx.checked_write(
                client,
                workspace,
                lambda check: guest.files_apply(client, writes, deletes, check_workspace=check),
            )
        self.ctx.journal(workspace, "patch", {"files": summary})
        return self.ctx.done(workspace, {"changed": True, "files": summary})

    def diff(
        self, ref: str, *, include_ignored: bool = False, format: str = "changes"
    ) -> dict[str, Any]:
        """Changes against the immutable create-time baseline.

        A workspace seeded from a Git project leaves out what the project's
        ignore rules ignore unless ``include_ignored``; ``ignored_count`` says
        how many paths were left out. ``format="patch"`` writes binary files as
        Git binary patches, so the whole ``patch`` goes through ``git apply``.
        """
        if format not in DIFF_FORMATS:
            raise InvalidArgument("format", f"use one of {', '.join(DIFF_FORMATS)}")
        workspace = self.ctx.find(ref)
        folder = self.ctx.root / workspace["workspace_id"]
        rules = None if include_ignored else ignore.IgnoreRules.load(folder)
        left_out: list[str] = []
        with self.ctx.connect(workspace) as client:
            if rules is not None:  # which changes the rules leave out, then the diff without them
                listing = replies.check_diff(guest.diff(client, {"patch": False, "collapse": True}))
                left_out = ignore.left_out(rules, listing["changes"])
            args = {"exclude": left_out, "git_binary": format == "patch"}
            reply = guest.diff(client, args)
        result = replies.check_diff(reply)
        return self.ctx.done(
            workspace, {**result, "format": format, "ignored_count": len(left_out)}
        )

    def _ignored(
        self, client: SupervisorClient, workspace: dict[str, Any], top: str, include: bool
    ) -> list[str]:
        """What the project's ignore rules leave out under ``top`` (nothing if ``include``)."""
        rules = (
            None if include else ignore.IgnoreRules.load(self.ctx.root / workspace["workspace_id"])
        )
        return [] if rules is None else ignore.ignored_under(client, rules, top)

    def push(self, ref: str, source: str | Path, *, dest: str = ".") -> dict[str, Any]:
        """Copy a host directory or archive into /workspace/<dest>."""
        workspace, guest_dest = self.ctx.find(ref), str(resolve_workspace_path(dest))
        with self.ctx.connect(workspace) as client:
            self.ctx.check_writable(client, workspace)
            info, _ = transfer.push_tree(client, Path(source), guest_dest)
        record = {
            "source": info.source,
            "dest": workspace_relative(guest_dest),
            "files": info.file_count,
            "bytes": info.bytes,
            "skipped_links": info.skipped_links,
        }
        self.ctx.journal(workspace, "sync", record)
        return self.ctx.done(workspace, {**record})

    def export(
        self,
        ref: str,
        path: str,
        output: str | Path,
        *,
        overwrite: bool = False,
        include_ignored: bool = False,
    ) -> dict[str, Any]:
        """Copy a file or directory under /workspace to ``output`` on the host.

        A directory from a workspace seeded from a Git project leaves out what
        the project's ignore rules ignore, unless ``include_ignored``.
        """
        workspace, guest_path = self.ctx.find(ref), str(resolve_workspace_path(path))
        with (
            transfer.placing(Path(output), overwrite) as target,  # before any guest work
            self.ctx.connect(workspace) as client,
            tempfile.TemporaryDirectory(prefix="pyro-export-") as tmp,
        ):
            top = workspace_relative(guest_path)
            left_out = self._ignored(client, workspace, top, include_ignored)
            # The unchanged part from the baseline on the host, the changes from the guest.
            baseline = self.ctx.root / workspace["workspace_id"] / "baseline.ext4"
            result = export.export_directory(client, baseline, top, target, left_out)
            if result is None:  # a file, or a directory only the guest can pack whole
                archive, kind = transfer.fetch_tree(client, guest_path, Path(tmp), exclude=left_out)
                result = transfer.extract_export(archive, kind, target, overwrite)
        # pyro-mcp 4.5 calls the kind `artifact_type` ("file" or "directory").
        result["artifact_type"] = result.pop("type")
        record = {"path": workspace_relative(guest_path), **result, "ignored_count": len(left_out)}
        self.ctx.journal(workspace, "export", record)
        return self.ctx.done(workspace, {**record})
