"""The guest agent's operations, one function each: the only place an op is named.

Each function sends one request through a ``SupervisorClient`` (which adds
request ids, timeouts and error mapping) and returns the guest's reply. The
reply is untrusted: callers pass it through the checks of their domain
(``workspaces.replies.check_read``, ``vm.commands.exec_result``, ...), which
turn anything malformed into an ``AgentProtocolError``. A new guest operation is
one function here and one handler in the guest program.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

Reply = dict[str, Any]


class Client(Protocol):
    def agent(
        self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]: ...


class Supervisor(Protocol):
    """The VM's supervisor, which talks to the guest itself (``vm/supervisor.py``)."""

    async def agent_request(
        self, op: str, args: dict[str, Any], timeout: float
    ) -> dict[str, Any]: ...


# ------------------------------------------------------- from the supervisor


async def hello(supervisor: Supervisor, args: Mapping[str, Any], timeout: float) -> Reply:
    """The first request after a boot or restore: the clock, entropy, the mounts
    and egress settings; the guest answers with what it is."""
    return await supervisor.agent_request("hello", dict(args), timeout)


async def flush(supervisor: Supervisor, timeout: float, freeze: Sequence[str] = ()) -> Reply:
    """``sync`` sent by the supervisor before it saves or stops the guest; ``freeze``:
    filesystems to freeze after flushing (a stopping VM's /workspace)."""
    args: dict[str, Any] = {"freeze": list(freeze)} if freeze else {}
    return await supervisor.agent_request("sync", args, timeout)


# ----------------------------------------------------------- liveness, disks


def ping(client: Client, timeout: float = 10) -> Reply:
    return client.agent("ping", {}, timeout)


def workspace_check(client: Client) -> Reply:
    """Is /workspace writable? The guest mounts it again after write errors."""
    return client.agent("workspace_check", {}, 60)


def trim(client: Client) -> Reply:
    """Hand freed blocks of /workspace back to the host (fstrim)."""
    return client.agent("trim", {}, 120)


def freeze(client: Client, frozen: bool) -> Reply:
    """Freeze (or thaw) /workspace, for a consistent copy of its disk."""
    return client.agent("freeze", {"freeze": frozen}, 60)


# --------------------------------------------------------------- commands
#
# Any request may carry ``check_workspace: true``: the guest checks that
# /workspace takes writes (as ``workspace_check``) first, in the same round
# trip, and answers its outcome as ``workspace``; if /workspace stays
# read-only the request is not carried out and the reply is ``ran: false``.


def exec_command(client: Client, args: Mapping[str, Any], timeout: float) -> Reply:
    """Run a command: ``argv`` or ``shell``, ``cwd``, ``env``, ``secret_env``, limits."""
    return client.agent("exec", dict(args), timeout)


# ------------------------------------------------------------------ files


def file_list(client: Client, path: str, *, recursive: bool = False) -> Reply:
    return client.agent("file_list", {"path": path, "recursive": recursive}, 60)


def file_read(client: Client, path: str, max_bytes: int) -> Reply:
    return client.agent("file_read", {"path": path, "max_bytes": max_bytes}, 60)


def file_write(
    client: Client, path: str, content_base64: str, *, check_workspace: bool = False
) -> Reply:
    args = {"path": path, "content": content_base64, "check_workspace": check_workspace}
    return client.agent("file_write", args, 60)


def files_apply(
    client: Client, writes: Sequence[Any], deletes: Sequence[str], *, check_workspace: bool = False
) -> Reply:
    """Write and delete several files at once (a patch, checked beforehand)."""
    args = {"writes": list(writes), "deletes": list(deletes), "check_workspace": check_workspace}
    return client.agent("files_apply", args, 120)


def diff(client: Client, args: Mapping[str, Any]) -> Reply:
    """/workspace against its baseline: changes, and optionally a patch."""
    return client.agent("diff", dict(args), 300)


def list_dirs(client: Client, paths: Sequence[str]) -> Reply:
    """One level of entries of each directory (for walking ignore rules)."""
    return client.agent("list_dirs", {"paths": list(paths)}, 300)


# -------------------------------------------------------------- transfers


def staging_create(client: Client) -> Reply:
    return client.agent("staging_create", {}, 30)


def chunk_write(client: Client, staging: str, data_base64: str, timeout: float) -> Reply:
    return client.agent("chunk_write", {"staging": staging, "data": data_base64}, timeout)


def chunk_read(client: Client, staging: str, offset: int, length: int, timeout: float) -> Reply:
    args = {"staging": staging, "offset": offset, "length": length}
    return client.agent("chunk_read", args, timeout)


def unpack(client: Client, staging: str, dest: str, timeout: float) -> Reply:
    return client.agent("unpack", {"staging": staging, "dest": dest}, timeout)


def pack(
    client: Client,
    path: str,
    exclude: Sequence[str],
    timeout: float,
    *,
    members: Sequence[str] | None = None,
    trees: Sequence[str] | None = None,
) -> Reply:
    """Tar ``path`` into a staging file, less ``exclude``; with ``members`` and
    ``trees`` (relative to ``path``), only those entries (a tree with all below it)."""
    args: dict[str, Any] = {"path": path, "exclude": list(exclude)}
    if members is not None or trees is not None:
        args |= {"members": list(members or ()), "trees": list(trees or ())}
    return client.agent("pack", args, timeout)


def staging_remove(client: Client, staging: str) -> Reply:
    return client.agent("staging_remove", {"staging": staging}, 30)


def layer_apply(client: Client, args: Mapping[str, Any]) -> Reply:
    """Apply one image layer to /workspace (the image-building guest only)."""
    return client.agent("layer_apply", dict(args), 3600)


def build_run(client: Client, args: Mapping[str, Any]) -> Reply:
    """Start a Dockerfile RUN step chrooted into /workspace (the building guest only)."""
    return client.agent("build_run", dict(args), 60)


def build_poll(client: Client, step: str, offset: int, wait_ms: int) -> Reply:
    """A RUN step's output from ``offset``, and its exit code once it ended."""
    return client.agent("build_poll", {"step": step, "offset": offset, "wait_ms": wait_ms}, 30)


def build_copy(client: Client, args: Mapping[str, Any]) -> Reply:
    """Extract a COPY/ADD step's tar into /workspace (the building guest only)."""
    return client.agent("build_copy", dict(args), 600)


def sync(client: Client) -> Reply:
    """Flush the guest's page cache to its disks (before one of them is split)."""
    return client.agent("sync", {}, 60)


# ---------------------------------------------------------------- per boot


def secrets_put(client: Client, secrets_base64: Mapping[str, str]) -> Reply:
    """Materialize secrets under /run/pyro-secrets (tmpfs)."""
    return client.agent("secrets_put", {"secrets": dict(secrets_base64)}, 60)


def package_index(client: Client, args: Mapping[str, Any]) -> Reply:
    """The host's package index settings for the guest's pip and npm."""
    return client.agent("package_index", dict(args), 60)


def trust_ca(client: Client, bundle_base64: str) -> Reply:
    return client.agent("trust_ca", {"bundle": bundle_base64}, 60)


# ---------------------------------------------------------------- services


def service_start(client: Client, args: Mapping[str, Any], timeout: float) -> Reply:
    return client.agent("service_start", dict(args), timeout)


def service_stop(client: Client, name: str, timeout: float = 60) -> Reply:
    return client.agent("service_stop", {"name": name}, timeout)


def service_status(client: Client, name: str) -> Reply:
    return client.agent("service_status", {"name": name}, 30)


def service_logs(client: Client, args: Mapping[str, Any]) -> Reply:
    return client.agent("service_logs", dict(args), 30)


def service_list(client: Client, timeout: float = 30) -> Reply:
    return client.agent("service_list", {}, timeout)


# ------------------------------------------------------------------ shells


def shell_open(client: Client, args: Mapping[str, Any]) -> Reply:
    return client.agent("shell_open", dict(args), 30)


def shell_write(client: Client, shell_id: str, text: str, *, newline: bool) -> Reply:
    return client.agent(
        "shell_write", {"shell_id": shell_id, "input": text, "newline": newline}, 30
    )


def shell_read(client: Client, args: Mapping[str, Any], timeout: float) -> Reply:
    return client.agent("shell_read", dict(args), timeout)


def shell_signal(client: Client, shell_id: str, signal: str) -> Reply:
    return client.agent("shell_signal", {"shell_id": shell_id, "signal": signal}, 30)


def shell_close(client: Client, shell_id: str) -> Reply:
    return client.agent("shell_close", {"shell_id": shell_id}, 30)


def shell_list(client: Client) -> Reply:
    return client.agent("shell_list", {}, 30)
