"""The file tools: sync push, list, read, write, patch, diff, export, disk."""

# No future annotations: the MCP SDK reads the signatures at run time.
from collections.abc import Callable
from typing import Annotated, Any, Literal

from mcp_types import CallToolResult
from pydantic import Field

from pyro_mcp.mcp import schemas
from pyro_mcp.mcp.tooling import (
    IncludeIgnored,
    MaxBytes,
    ToolContext,
    WorkspaceId,
    WorkspacePath,
    reply,
)
from pyro_mcp.workspaces.replies import shown


def tools(ctx: ToolContext) -> dict[str, Callable[..., Any]]:
    """The file tools, by name (core variants under ``CORE_VARIANT``)."""
    pyro = ctx.pyro
    policy = ctx.policy

    def workspace_sync_push(
        workspace_id: WorkspaceId,
        source_path: Annotated[
            str, Field(description="A directory or .tar/.tgz on the user's machine.")
        ],
        dest: Annotated[str, Field(description="Where to put it, relative to /workspace.")] = ".",
    ) -> Annotated[CallToolResult, schemas.SyncResult]:
        result = pyro.push_workspace_sync(
            workspace_id, policy.readable(source_path, "source_path"), dest=dest
        )
        return reply(f"pushed {result['files']} file(s) to /workspace/{result['dest']}", result)

    def workspace_file_list(
        workspace_id: WorkspaceId,
        path: WorkspacePath = ".",
        recursive: Annotated[
            bool, Field(description="Include everything below, not just direct entries.")
        ] = False,
    ) -> Annotated[CallToolResult, schemas.FileList]:
        listing = pyro.list_workspace_files(workspace_id, path, recursive=recursive)
        lines = [
            shown(e["path"]) + ("/" if e["artifact_type"] == "directory" else "")
            for e in listing["entries"]
        ]
        return reply("\n".join(lines) or "(empty)", listing)

    def workspace_file_read(
        workspace_id: WorkspaceId,
        path: WorkspacePath,
        max_bytes: MaxBytes = 65536,
    ) -> Annotated[CallToolResult, schemas.FileContent]:
        content = pyro.read_workspace_file(workspace_id, path, max_bytes=max_bytes)
        if content["binary"]:
            text = f"{content['path']} is a binary file of {content['size']} bytes (content_base64)"
        else:
            text = content["content"] + ("\n[truncated]" if content["truncated"] else "")
        return reply(text, content)

    def workspace_file_write(
        workspace_id: WorkspaceId,
        path: WorkspacePath,
        text: Annotated[str, Field(description="The complete new text of the file.")],
    ) -> Annotated[CallToolResult, schemas.FileWritten]:
        result = pyro.write_workspace_file(workspace_id, path, text)
        return reply(f"wrote {result['bytes_written']} bytes to {result['path']}", result)

    def workspace_patch_apply(
        workspace_id: WorkspaceId,
        patch: Annotated[str, Field(description="A unified diff (git diff / diff -u format).")],
    ) -> Annotated[CallToolResult, schemas.PatchResult]:
        result = pyro.apply_workspace_patch(workspace_id, patch)
        text = "\n".join(f"{f['status']}: {f['path']}" for f in result["files"])
        return reply(text, result)

    def workspace_diff(
        workspace_id: WorkspaceId,
        format: Annotated[
            Literal["changes", "patch"],
            Field(
                description="`patch`: binary files as Git binary patches, so the whole "
                "patch goes through `git apply`; `changes` marks them in one line."
            ),
        ] = "changes",
        include_ignored: IncludeIgnored = False,
    ) -> Annotated[CallToolResult, schemas.Diff]:
        diff = pyro.diff_workspace(workspace_id, include_ignored=include_ignored, format=format)
        text = diff["patch"] if diff["changed"] else "no changes\n"
        if diff["ignored_count"]:
            text += (
                f"({diff['ignored_count']} path(s) the project ignores left out; "
                "include_ignored: true shows them)\n"
            )
        return reply(text, diff)

    def workspace_export(
        workspace_id: WorkspaceId,
        path: WorkspacePath,
        output_path: Annotated[
            str,
            Field(
                description="A new path on the user's machine (never an existing file), inside "
                "the project or a directory the user allowed."
            ),
        ],
        include_ignored: IncludeIgnored = False,
    ) -> Annotated[CallToolResult, schemas.Exported]:
        target = policy.writable(output_path, "output_path")
        result = pyro.export_workspace(
            workspace_id, path, target, overwrite=False, include_ignored=include_ignored
        )
        text = f"exported {result['path']} to {result['output']}"
        if result["ignored_count"]:
            text += f" ({result['ignored_count']} ignored path(s) left out)"
        return reply(text, result)

    def workspace_disk_export(
        workspace_id: WorkspaceId,
        output_path: Annotated[str, Field(description="A new host path for the image.")],
    ) -> Annotated[CallToolResult, schemas.DiskImage]:
        target = policy.writable(output_path, "output_path")
        result = pyro.export_workspace_disk(workspace_id, target)
        return reply(f"wrote {result['output_path']}", result)

    def workspace_disk_list(
        workspace_id: WorkspaceId,
        path: WorkspacePath = ".",
        recursive: Annotated[bool, Field(description="Include everything below.")] = False,
    ) -> Annotated[CallToolResult, schemas.FileList]:
        listing = pyro.list_workspace_disk(workspace_id, path, recursive=recursive)
        lines = [shown(e["path"]) for e in listing["entries"]]
        return reply("\n".join(lines) or "(empty)", listing)

    def workspace_disk_read(
        workspace_id: WorkspaceId,
        path: WorkspacePath,
        max_bytes: MaxBytes = 65536,
    ) -> Annotated[CallToolResult, schemas.DiskFile]:
        content = pyro.read_workspace_disk(workspace_id, path, max_bytes=max_bytes)
        text = (
            content["content"]
            if not content["binary"]
            else f"binary file, {content['size_bytes']} bytes"
        )
        return reply(text, content)

    return {
        "workspace_sync_push": workspace_sync_push,
        "workspace_file_list": workspace_file_list,
        "workspace_file_read": workspace_file_read,
        "workspace_file_write": workspace_file_write,
        "workspace_patch_apply": workspace_patch_apply,
        "workspace_diff": workspace_diff,
        "workspace_export": workspace_export,
        "workspace_disk_export": workspace_disk_export,
        "workspace_disk_list": workspace_disk_list,
        "workspace_disk_read": workspace_disk_read,
    }
