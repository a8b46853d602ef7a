"""``pyro workspace sync|file|patch|export``: files between the host and /workspace."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pyro_mcp.cli import client
from pyro_mcp.cli.render import print_json, print_listing
from pyro_mcp.errors import InvalidArgument

INCLUDE_IGNORED_HELP = (
    "also show what the project's .gitignore rules ignore (left out by default for a "
    "workspace seeded from a Git project)"
)


def register(sub: Any) -> None:
    sync = sub.add_parser("sync", help="copy host files into the workspace")
    sync_sub = sync.add_subparsers(dest="sync_command", metavar="ACTION", required=True)
    push = sync_sub.add_parser("push", help="copy a host directory or .tar/.tgz into /workspace")
    push.add_argument("workspace")
    push.add_argument("source")
    push.add_argument("--dest", default=".", help="a directory relative to /workspace")
    push.add_argument("--json", action="store_true")
    push.set_defaults(handler=handle_sync_push)

    file = sub.add_parser("file", help="list, read and write files under /workspace")
    file_sub = file.add_subparsers(dest="file_command", metavar="ACTION", required=True)
    file_list = file_sub.add_parser("list", help="entries of a directory")
    file_list.add_argument("workspace")
    file_list.add_argument("path", nargs="?", default=".")
    file_list.add_argument("--recursive", action="store_true")
    file_list.add_argument("--json", action="store_true")
    file_list.set_defaults(handler=handle_file_list)
    file_read = file_sub.add_parser("read", help="a file's text (binary files are reported)")
    file_read.add_argument("workspace")
    file_read.add_argument("path")
    file_read.add_argument("--max-bytes", type=int, default=65536)
    file_read.add_argument("--content-only", action="store_true", help="print only the content")
    file_read.add_argument("--json", action="store_true")
    file_read.set_defaults(handler=handle_file_read)
    file_write = file_sub.add_parser("write", help="create or replace a file")
    file_write.add_argument("workspace")
    file_write.add_argument("path")
    source = file_write.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the new content")
    source.add_argument("--text-file", help="a host file whose content to write")
    file_write.add_argument("--json", action="store_true")
    file_write.set_defaults(handler=handle_file_write)

    patch = sub.add_parser("patch", help="apply unified diffs")
    patch_sub = patch.add_subparsers(dest="patch_command", metavar="ACTION", required=True)
    apply = patch_sub.add_parser("apply", help="apply a unified diff, all or nothing")
    apply.add_argument("workspace")
    patch_source = apply.add_mutually_exclusive_group(required=True)
    patch_source.add_argument("--patch-file", help="a file holding the diff (- for stdin)")
    patch_source.add_argument("--patch", help="the diff text")
    apply.add_argument("--json", action="store_true")
    apply.set_defaults(handler=handle_patch_apply)

    export = sub.add_parser("export", help="copy a file or directory to the host")
    export.add_argument("workspace")
    export.add_argument("path", help="a path relative to /workspace")
    export.add_argument("--output", required=True, help="where to write it on the host")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output")
    export.add_argument("--include-ignored", action="store_true", help=INCLUDE_IGNORED_HELP)
    export.add_argument("--json", action="store_true")
    export.set_defaults(handler=handle_export)


def handle_sync_push(args: argparse.Namespace) -> int:
    result = client.pyro().push_workspace_sync(args.workspace, args.source, dest=args.dest)
    if args.json:
        print_json(result)
    else:
        print(
            f"pushed {result['files']} file(s), {result['bytes']} bytes "
            f"to /workspace/{result['dest']}"
        )
    return 0


def handle_file_list(args: argparse.Namespace) -> int:
    result = client.pyro().list_workspace_files(args.workspace, args.path, recursive=args.recursive)
    if args.json:
        print_json(result)
        return 0
    print_listing(result["entries"])
    if result["truncated"]:
        print("(listing truncated)", file=sys.stderr)
    return 0


def handle_file_read(args: argparse.Namespace) -> int:
    result = client.pyro().read_workspace_file(args.workspace, args.path, max_bytes=args.max_bytes)
    if args.json:
        print_json(result)
    elif result["binary"]:
        print(f"{result['path']}: binary file, {result['size']} bytes (use --json for base64)")
    elif args.content_only:
        sys.stdout.write(result["content"])
    else:
        note = " (truncated)" if result["truncated"] else ""
        print(f"# {result['path']}: {result['size']} bytes{note}")
        sys.stdout.write(result["content"])
    return 0


def handle_file_write(args: argparse.Namespace) -> int:
    if args.text_file is not None:
        content: str | bytes = read_host_file(args.text_file, "--text-file")
    else:
        content = args.text
    result = client.pyro().write_workspace_file(args.workspace, args.path, content)
    print_json(result) if args.json else print(
        f"wrote {result['bytes_written']} bytes to {result['path']}"
    )
    return 0


def handle_patch_apply(args: argparse.Namespace) -> int:
    if args.patch_file is not None:
        text = (
            sys.stdin.read()
            if args.patch_file == "-"
            else read_host_file(args.patch_file, "--patch-file").decode("utf-8", errors="replace")
        )
    else:
        text = args.patch
    result = client.pyro().apply_workspace_patch(args.workspace, text)
    if args.json:
        print_json(result)
    else:
        for entry in result["files"]:
            print(f"{entry['status']:<9} {entry['path']}")
    return 0


def handle_export(args: argparse.Namespace) -> int:
    result = client.pyro().export_workspace(
        args.workspace,
        args.path,
        args.output,
        overwrite=args.overwrite,
        include_ignored=args.include_ignored,
    )
    if args.json:
        print_json(result)
    else:
        left_out = result["ignored_count"]
        print(
            f"exported {result['artifact_type']} {result['path']} to {result['output']} "
            f"({result['files']} file(s)"
            + (
                f"; {left_out} ignored path(s) left out, --include-ignored keeps them)"
                if left_out
                else ")"
            )
        )
    return 0


def read_host_file(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise InvalidArgument(flag, f"cannot read {path}: {exc.strerror}") from exc
