"""Moving trees between host and guest as tar archives, in bounded chunks.

Host to guest (``sync push``): the source is staged with the seed rules
(links escaping the source are not followed), packed, and sent in chunks.

Guest to host (``export``): the guest packs, the host reads at most
``MAX_EXPORT_BYTES`` and checks every member before extracting: no absolute
names, no ``..``, no links leaving the output, no devices or fifos. Nothing is
written to the named output until the whole archive has passed, and nothing
is ever written through an existing symlink.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from pyro_mcp.agent import operations as guest
from pyro_mcp.agent.client import SupervisorClient
from pyro_mcp.errors import AgentProtocolError, InvalidArgument
from pyro_mcp.workspaces.seed import SeedInfo, stage_seed, staging_area

CHUNK_BYTES = 4 * 1024 * 1024
MAX_EXPORT_BYTES = 2 * 1024 * 1024 * 1024
MAX_EXPORT_MEMBERS = 200_000
TRANSFER_TIMEOUT = 120.0


def push_tree(client: SupervisorClient, source: Path, dest: str) -> tuple[SeedInfo, dict[str, Any]]:
    """Copy a host directory or archive into ``dest`` (a /workspace path)."""
    with (
        tempfile.TemporaryDirectory(prefix="pyro-push-") as tmp,
        staging_area(Path(tmp) / "tree") as staging,
    ):
        info = stage_seed(source, staging)
        archive = Path(tmp) / "push.tar"
        with tarfile.open(archive, "w") as tar:
            for child in sorted(staging.iterdir()):
                tar.add(child, arcname=child.name)
        remote = str(guest.staging_create(client)["staging"])
        try:
            with archive.open("rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    data = base64.b64encode(chunk).decode("ascii")
                    guest.chunk_write(client, remote, data, TRANSFER_TIMEOUT)
            unpacked = guest.unpack(client, remote, dest, TRANSFER_TIMEOUT)
        finally:
            with contextlib.suppress(Exception):
                guest.staging_remove(client, remote)
    return info, unpacked


def fetch_tree(
    client: SupervisorClient,
    path: str,
    work: Path,
    *,
    exclude: Sequence[str] = (),
    members: Sequence[str] | None = None,
    trees: Sequence[str] | None = None,
) -> tuple[Path, str]:
    """Have the guest pack ``path``; return the local archive and its kind (file|directory).

    ``exclude`` names paths relative to /workspace left out with all below them;
    ``members`` and ``trees`` (relative to ``path``) pack only those entries.
    """
    packed = guest.pack(client, path, exclude, TRANSFER_TIMEOUT, members=members, trees=trees)
    remote, kind = packed.get("staging"), packed.get("kind")
    if not isinstance(remote, str) or kind not in ("file", "directory"):
        raise AgentProtocolError("the guest answered pack without a staging file and kind")
    archive = work / "export.tar"
    received = 0
    try:
        with archive.open("wb") as handle:
            while True:
                reply = guest.chunk_read(client, remote, received, CHUNK_BYTES, TRANSFER_TIMEOUT)
                try:
                    data = base64.b64decode(str(reply.get("data", "")), validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise AgentProtocolError("the guest sent a chunk that is not base64") from exc
                if not data:
                    break
                if len(data) > CHUNK_BYTES:
                    raise AgentProtocolError("the guest sent a chunk larger than asked for")
                received += len(data)
                if received > MAX_EXPORT_BYTES:
                    raise InvalidArgument(
                        "path", f"the export is larger than {MAX_EXPORT_BYTES // 2**30} GiB"
                    )
                handle.write(data)
    finally:
        with contextlib.suppress(Exception):
            guest.staging_remove(client, remote)
    return archive, str(kind)


def extract_export(archive: Path, kind: str, output: Path, overwrite: bool) -> dict[str, Any]:
    """Check every member, then place the export at ``output``.

    Raises:
        InvalidArgument: the output exists (without ``overwrite``) or is a symlink.
        AgentProtocolError: the archive breaks the rules above.
    """
    output = check_output(output, overwrite)
    try:
        with tarfile.open(archive, "r:") as tar:
            members = tar.getmembers()
            total = check_members(members)
            if kind == "file":
                files = [m for m in members if m.isfile()]
                if len(members) != 1 or len(files) != 1:
                    raise AgentProtocolError("a file export must hold exactly one regular file")
            with tempfile.TemporaryDirectory(prefix=".pyro-export-", dir=output.parent) as tmp:
                # Extracted beside the output and renamed into place: never copied
                # again (a second file create for every file of a large export).
                tree = Path(tmp) / "tree"
                tree.mkdir()  # the default mode, not the temporary directory's private one
                tar.extractall(tree, members=members, filter="data")
                replace_output(tree / members[0].name if kind == "file" else tree, output)
    except tarfile.TarError as exc:
        raise AgentProtocolError(f"the guest sent an unreadable archive: {exc}") from exc
    return {
        "output": str(output),
        "type": kind,
        "files": sum(m.isfile() for m in members),
        "bytes": total,
    }


def check_output(output: Path, overwrite: bool) -> Path:
    """``output`` made absolute, if pyro may write there (its missing parent
    directories are made by ``placing``).

    Raises:
        InvalidArgument: it is a symlink, exists without ``overwrite``, or the
            nearest existing parent is not a directory.
    """
    output = output.expanduser().absolute()
    if output.is_symlink():
        raise InvalidArgument("output", f"{output} is a symlink; pyro never writes through one")
    if output.exists() and not overwrite:
        raise InvalidArgument(
            "output", f"{output} exists; pass --overwrite (overwrite=True) to replace it"
        )
    parent = output.parent
    while not parent.exists() and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir():
        raise InvalidArgument("output", f"{parent} is not a directory: {output} cannot be made")
    return output


@contextlib.contextmanager
def placing(output: Path, overwrite: bool) -> Iterator[Path]:
    """``check_output``, then the output's missing parent directories made (as
    pyro-mcp 4.5 makes them); if the block fails, the ones made here go again.

    Raises:
        InvalidArgument: as ``check_output``, or a directory cannot be made.
    """
    output = check_output(output, overwrite)
    missing = []
    parent = output.parent
    while not parent.exists() and not parent.is_symlink():
        missing.append(parent)
        parent = parent.parent
    made: list[Path] = []

    def unmake() -> None:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()

    try:
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except OSError as exc:
                raise InvalidArgument("output", f"cannot make {folder}: {exc.strerror}") from exc
            made.append(folder)
        yield output
    except BaseException:
        unmake()
        raise


def check_members(members: list[tarfile.TarInfo]) -> int:
    if len(members) > MAX_EXPORT_MEMBERS:
        raise AgentProtocolError(f"the export has more than {MAX_EXPORT_MEMBERS} entries")
    total = 0
    for member in members:
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts or not member.name:
            raise AgentProtocolError(f"archive member {member.name!r} points outside the output")
        if member.isdev() or member.isfifo():
            raise AgentProtocolError(f"archive member {member.name!r} is a device or fifo")
        if member.issym() or member.islnk():
            target = PurePosixPath(member.linkname)
            joined = (name.parent if member.issym() else PurePosixPath()) / target
            if target.is_absolute() or not stays_inside(joined):
                raise AgentProtocolError(
                    f"archive link {member.name!r} -> {member.linkname!r} leaves the output"
                )
        total += max(member.size, 0)
        if total > MAX_EXPORT_BYTES:
            raise AgentProtocolError("the export is larger than allowed")
    return total


def stays_inside(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else 0 if part in (".", "") else 1
        if depth < 0:
            return False
    return True


def replace_output(produced: Path, output: Path) -> None:
    """Move ``produced`` to ``output``, replacing what is there (never following a link)."""
    if output.exists() and (output.is_dir() or produced.is_dir()):
        # os.replace cannot swap a directory with a file or a non-empty directory.
        old = output.with_name(f".{output.name}.pyro-old")
        os.replace(output, old)
        os.replace(produced, output)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        os.replace(produced, output)
