"""``Pyro``: the Python SDK. The CLI is a thin layer over these methods.

Every method returns plain JSON-ready data (dicts and lists) with the same
fields the CLI prints with ``--json``.

Stays one module on purpose (~850 lines): it is the public contract, one
method per SDK entry with the docstring users read, each a thin call into
the services below plus redaction. Split, the contract would be scattered
over files that each hold a slice of one class.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pyro_mcp import config, crossings, doctor
from pyro_mcp import prepare as prepare_ops
from pyro_mcp.crossings import (
    Crossing,
    DiskImagePath,
    EnvironmentName,
    FolderPath,
    HostServices,
    ImageReference,
    InsecureRegistry,
    InsidePath,
    NewEnvironmentName,
    PrivateEgress,
    ProjectPath,
    PushReference,
    ReadPath,
    WritePath,
)
from pyro_mcp.egress import config as egress_config
from pyro_mcp.environments import builder, images
from pyro_mcp.environments.catalog import CATALOG
from pyro_mcp.errors import InvalidArgument, PyroError
from pyro_mcp.transport import LocalTransport, Transport
from pyro_mcp.vm import env_build, warm_builder
from pyro_mcp.vm.service import VmService
from pyro_mcp.workspaces import boot as workspace_boot
from pyro_mcp.workspaces import egress as workspace_egress
from pyro_mcp.workspaces import secrets as secret_store
from pyro_mcp.workspaces.context import WorkspaceState
from pyro_mcp.workspaces.secrets import Redactor, SecretSpec
from pyro_mcp.workspaces.service import WorkspaceService

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _redacting(method: _Method) -> _Method:
    """Every value and error message of a workspace method, with its secrets redacted."""

    @functools.wraps(method)
    def wrapper(self: Pyro, workspace: str, *args: Any, **kwargs: Any) -> Any:
        redactor = self._workspaces.redactor(workspace)
        try:
            result = method(self, workspace, *args, **kwargs)
        except PyroError as exc:
            if redactor:
                exc.args = (redactor.redact_text(str(exc)),)
            raise
        return _redact_deep(result, redactor) if redactor else result

    return wrapper  # type: ignore[return-value]


def _redact_deep(value: Any, redactor: Redactor) -> Any:
    if isinstance(value, str):
        return redactor.redact_text(value)
    if isinstance(value, dict):
        return {key: _redact_deep(item, redactor) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_deep(item, redactor) for item in value]
    return value


class Pyro:
    """Disposable microVMs from Python.

    Example::

        from pyro_mcp import Pyro
        pyro = Pyro()
        result = pyro.run_in_vm(environment="debian:12", command="git --version")
        print(result["stdout"])

    Args:
        state_dir: where records and VM disks live (default ``PYRO_HOME`` or
            ``$XDG_DATA_HOME/pyro``).
        cache_dir: where environments are built (default ``PYRO_CACHE_DIR`` or
            ``$XDG_CACHE_HOME/pyro``).
        progress: receives one line per phase of long work (builds, boots).
        transport: where the engine runs: ``LocalTransport()`` (the default:
            QEMU guests on this machine) or ``RemoteTransport(url, token)``, a
            ``pyro server`` elsewhere. Every method works through both, with the
            same results and errors; seeds, sync sources, secret files and
            export outputs stay paths of the caller's machine.

    Remote example::

        from pyro_mcp import Pyro
        from pyro_mcp.transport import RemoteTransport
        pyro = Pyro(transport=RemoteTransport("https://kvm-box:8787", token))
    """

    def __init__(
        self,
        state_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        progress: Progress | None = None,
        *,
        transport: LocalTransport | Transport | None = None,
    ) -> None:
        remote = None if transport is None or isinstance(transport, LocalTransport) else transport
        if isinstance(transport, LocalTransport):
            state_dir = state_dir or transport.state_dir
            cache_dir = cache_dir or transport.cache_dir
        elif remote is not None and (state_dir or cache_dir):
            raise InvalidArgument(
                "transport",
                "state_dir and cache_dir are a local engine's; a remote one has its own",
            )
        defaults = config.default_paths()
        paths = config.Paths(
            state_dir=Path(state_dir).absolute() if state_dir else defaults.state_dir,
            cache_dir=Path(cache_dir).absolute() if cache_dir else defaults.cache_dir,
        )
        self._setup(paths, progress, remote)

    @classmethod
    def _over(cls, paths: config.Paths, progress: Progress | None = None) -> Pyro:
        """A local ``Pyro`` over ``paths`` as given (``pyro server``: warm store per principal)."""
        pyro = cls.__new__(cls)
        pyro._setup(paths, progress, None)
        return pyro

    def _setup(self, paths: config.Paths, progress: Progress | None, remote: Any) -> None:
        self.paths = paths
        self._progress = progress or _quiet
        self._remote: Transport | None = remote
        # Prefixed to the environments the engine names on its own (a project's):
        # pyro server gives each non-admin principal's engine its namespace.
        self._environment_namespace = ""
        if remote is not None:
            return  # the engine is the server's
        self._vms = VmService(self.paths)
        self._workspaces = WorkspaceService(self._vms)
        # Expired workspaces are reaped, and idle ones suspended, lazily: by
        # whichever pyro call comes next (and by `pyro mcp serve` on a timer).
        self._workspaces.reap_expired()
        self._workspaces.suspend_idle()

    # ------------------------------------------------------------- one-shot

    def run_in_vm(
        self,
        environment: EnvironmentName = config.DEFAULT_ENVIRONMENT,
        command: str | Sequence[str] = "",
        *,
        vcpu_count: int = config.DEFAULT_VCPU_COUNT,
        mem_mib: int = config.DEFAULT_MEM_MIB,
        timeout_seconds: float = config.DEFAULT_TIMEOUT_SECONDS,
        ttl_seconds: int | None = None,
        network: bool = False,
        env: dict[str, str] | None = None,
        allow_host_compat: bool = False,
    ) -> dict[str, Any]:
        """Boot a fresh VM, run one command, delete the VM.

        ``ttl_seconds`` bounds how long the VM may exist at all (it is deleted by
        the next pyro call after that, should this process die); it must exceed
        ``timeout_seconds``.

        Args:
            environment: a catalog name, e.g. ``debian:12``.
            command: a shell command string, or an argv list.
            timeout_seconds: the command is killed after this; ``timed_out`` is then true.
            network: give the guest user-mode NAT egress (default: no NIC at all).
            env: extra environment variables for the command.
            allow_host_compat: pyro-mcp 4.5's switch for running on the host when
                no guest can boot; pyro has no host mode, so only ``False`` is taken.

        Returns:
            ``environment``, ``exit_code``, ``stdout``, ``stderr``, ``timed_out``,
            ``truncated`` (plus per stream), ``duration_ms``, ``accel``, ``boot_ms``,
            ``total_ms``, ``vm_id``, ``execution_mode``, ``cleanup`` ``{deleted,
            reason, vm_id}``.

        Raises:
            NotFound: unknown environment.
            VMError: the guest failed to boot or died (message has the console tail).
        """
        _no_host_mode(allow_host_compat)
        result = self._vms.run(
            environment,
            command,
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
            timeout_seconds=timeout_seconds,
            ttl_seconds=ttl_seconds,
            network=network,
            env=env,
            progress=self._progress,
        ).to_dict()
        cleanup = {"deleted": True, "reason": "post_exec_cleanup", "vm_id": result["vm_id"]}
        return {**result, "cleanup": cleanup}

    # ------------------------------------------------------------------- VMs

    def create_vm(
        self,
        environment: EnvironmentName = config.DEFAULT_ENVIRONMENT,
        *,
        vcpu_count: int = config.DEFAULT_VCPU_COUNT,
        mem_mib: int = config.DEFAULT_MEM_MIB,
        network: bool = False,
        ttl_seconds: int | None = None,
        allow_host_compat: bool = False,
    ) -> dict[str, Any]:
        """Record a VM with its own disk overlay; ``start_vm`` boots it
        (``allow_host_compat``: as for ``run_in_vm``, only ``False``)."""
        _no_host_mode(allow_host_compat)
        self._vms.reap_expired()
        return self._vms.create_vm(
            environment,
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
            network=network,
            ttl_seconds=ttl_seconds,
            progress=self._progress,
        ).to_dict()

    def start_vm(self, vm_id: str) -> dict[str, Any]:
        """Boot a created or stopped VM and wait for its agent."""
        return self._vms.start_vm(vm_id, progress=self._progress).to_dict()

    def exec_vm(
        self,
        vm_id: str,
        command: str | Sequence[str],
        *,
        timeout_seconds: float = config.DEFAULT_TIMEOUT_SECONDS,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        keep_vm: bool = False,
    ) -> dict[str, Any]:
        """Run one command in a running VM, then delete the VM (pyro-mcp 4.5's
        contract), unless ``keep_vm`` keeps it for more commands.

        Returns:
            ``run_in_vm``'s command fields, ``vm_id`` and ``cleanup``
            ``{deleted, reason, vm_id}`` (reason ``post_exec_cleanup``, or
            ``keep_vm`` when kept). A call that raises (the VM is not running,
            it died) leaves the VM as it was.
        """
        result = self._vms.exec_vm(
            vm_id, command, timeout_seconds=timeout_seconds, env=env, cwd=cwd
        ).to_dict()
        result["vm_id"] = vm_id
        if keep_vm:
            result["cleanup"] = {"deleted": False, "reason": "keep_vm", "vm_id": vm_id}
        else:
            self._vms.delete_vm(vm_id)
            result["cleanup"] = {"deleted": True, "reason": "post_exec_cleanup", "vm_id": vm_id}
        return result

    def stop_vm(self, vm_id: str) -> dict[str, Any]:
        """Stop a VM; its disk is kept for ``start_vm``."""
        return self._vms.stop_vm(vm_id).to_dict()

    def delete_vm(self, vm_id: str) -> dict[str, Any]:
        """Stop a VM and remove everything it had."""
        return self._vms.delete_vm(vm_id)

    def status_vm(self, vm_id: str) -> dict[str, Any]:
        """A VM's record, reconciled with reality."""
        return self._vms.status_vm(vm_id).to_dict()

    def network_info_vm(self, vm_id: str) -> dict[str, Any]:
        """How the VM reaches the network: none, or only through the egress proxy."""
        record = self.status_vm(vm_id)
        if not record["network"]:
            return {"vm_id": vm_id, "network": False, "mode": "none", "note": "no NIC at all"}
        return {
            "vm_id": vm_id,
            "network": True,
            "mode": "egress proxy",
            "guest_ip": "10.0.2.15/24",
            "gateway": "10.0.2.2",
            "proxy": egress_config.PROXY_URL,
            "dns": "none (the proxy resolves names on the host)",
            "note": "the guest reaches only the egress proxy: HTTP(S) clients through "
            "HTTP(S)_PROXY, any public host (no host loopback or private addresses); "
            "nothing reaches the guest unless a port is published on 127.0.0.1",
        }

    def list_vms(self) -> list[dict[str, Any]]:
        """Every VM, newest first."""
        self._vms.reap_expired()
        return [record.to_dict() for record in self._vms.list_vms()]

    @_redacting
    def fork_workspace(
        self, workspace: str, *, name: str | None = None, count: int = 1
    ) -> dict[str, Any]:
        """Copy a running workspace as it is now, processes included, into ``count``
        new workspaces (named ``name``, or ``name-1``...``name-K``); the source pauses
        briefly and runs on. Returns ``forks`` (their statuses), ``pause_ms``, ``fork_ms``."""
        return self._workspaces.forks.fork(workspace, name=name, count=count)

    def suspend_idle_workspaces(self) -> dict[str, Any]:
        """Suspend running workspaces idle past their ``idle_suspend_seconds`` now
        (pyro also does this lazily on each new ``Pyro`` and on a timer in
        ``pyro mcp serve``)."""
        return {"suspended": self._workspaces.suspend_idle()}

    def reap_expired(self) -> dict[str, Any]:
        """Delete VMs past their TTL and one-shot VMs whose owner died."""
        return {"reaped": self._vms.reap_expired()}

    # ------------------------------------------------------------ workspaces

    def create_workspace(
        self,
        environment: EnvironmentName = config.DEFAULT_ENVIRONMENT,
        *,
        seed_path: ReadPath | None = None,
        project_path: ProjectPath | None = None,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        ttl_seconds: int | None = None,
        max_lifetime_seconds: int | None = None,
        idle_suspend_seconds: int | None = None,
        idle_suspend_published: bool = False,
        vcpu_count: int = config.DEFAULT_VCPU_COUNT,
        mem_mib: int = config.DEFAULT_MEM_MIB,
        network: bool = False,
        network_policy: str | None = None,
        host_ca: bool = True,
        secrets: Annotated[
            Mapping[str, SecretSpec] | Sequence[Mapping[str, Any]] | None, Crossing.SECRETS
        ] = None,
        secret_files: Annotated[Mapping[str, SecretSpec] | None, Crossing.SECRET_FILES] = None,
        allow_hosts: Sequence[str] | None = None,
        allow_package_index: bool = False,
        deny_hosts: Sequence[str] = (),
        allow_private_egress: PrivateEgress = False,
        allow_host_services: HostServices = False,
        origin: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """Create and boot a workspace; ``seed_path`` (a directory or .tar/.tgz) fills /workspace.

        ``project_path`` seeds it with the Git-tracked files of a checkout instead
        (as in the working tree; ignored and untracked files stay out). ``origin``
        overrides the reported ``origin_kind``/``origin_ref``.

        ``network_policy`` is ``off`` (no NIC, the default), ``egress`` (outbound
        through pyro's egress proxy; ``network=True`` means this) or
        ``egress+published-ports`` (services may also publish ports on the host's
        127.0.0.1). With egress, ``allow_hosts`` (``name``, ``*.name``, either with
        ``:port``) are the only hosts the guest reaches; without it any public
        host. ``allow_package_index`` adds the hosts of this host's package index
        settings (pip's index URLs, the ``PIP_``/``UV_`` index variables, npm's
        registry) to ``allow_hosts``. ``deny_hosts`` are refused first. The host's
        loopback, link-local and private networks are refused unless ``allow_private_egress``;
        ``host.pyro.internal:PORT`` reaches the host's 127.0.0.1:PORT only with
        ``allow_host_services`` (both are the operator's switches).

        ``secrets`` (NAME: value) and ``secret_files`` (NAME: host path) are stored
        0600 on the host, materialized under /run/pyro-secrets in the guest, mapped
        into commands with ``secret_env``, and redacted from every result. Given as
        ``{"value": ..., "hosts": [...]}`` (``{"path": ..., "hosts": [...]}``) the
        guest sees a placeholder instead, and the egress proxy puts the real value
        in place of it in requests to those hosts only. pyro-mcp 4.5's list form
        ``secrets=[{"name": N, "value": V}, {"name": N, "file_path": P}]`` (each
        may add ``"hosts"``) means the same.

        ``ttl_seconds`` is an idle timeout: every operation moves ``expires_at``
        forward; ``max_lifetime_seconds`` caps the total. After
        ``idle_suspend_seconds`` without a call (default 300; 0: never) the
        workspace is suspended, and the next call resumes it; one whose services
        publish ports is not, unless ``idle_suspend_published`` (its ports then
        stop answering until a call resumes it). With ``network``, the
        host's CA bundle is installed in the guest unless ``host_ca`` is False.

        Returns:
            The workspace status: ``workspace_id``, ``name``, ``labels``, ``state``,
            ``seed`` (kind, source, file_count, bytes), ``expires_at``...
        """
        if secrets is not None and not isinstance(secrets, Mapping):
            secrets, secret_files = secret_store.from_list(secrets, secret_files)
        return self._workspaces.create(
            environment,
            seed_path=seed_path,
            project_path=project_path,
            origin=origin,
            name=name,
            labels=labels,
            ttl_seconds=ttl_seconds,
            max_lifetime_seconds=max_lifetime_seconds,
            idle_suspend_seconds=idle_suspend_seconds,
            idle_suspend_published=idle_suspend_published,
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
            network=network,
            network_policy=network_policy,
            host_ca=host_ca,
            secrets=secrets,
            secret_files=secret_files,
            allow_hosts=allow_hosts,
            allow_package_index=allow_package_index,
            deny_hosts=deny_hosts,
            allow_private_egress=allow_private_egress,
            allow_host_services=allow_host_services,
            progress=self._progress,
        )

    def list_workspaces(self) -> dict[str, Any]:
        """``{count, workspaces}``: every workspace, most recently active first
        (expired ones are reaped), as pyro-mcp 4.5 returns them."""
        workspaces = self._workspaces.list_all()
        return {"count": len(workspaces), "workspaces": workspaces}

    @_redacting
    def status_workspace(self, workspace: str) -> dict[str, Any]:
        """A workspace's status by id or name."""
        return self._workspaces.status(workspace)

    @_redacting
    def update_workspace(
        self,
        workspace: str,
        *,
        name: str | None = None,
        clear_name: bool = False,
        labels: dict[str, str] | None = None,
        clear_labels: Sequence[str] = (),
        idle_suspend_seconds: int | None = None,
        idle_suspend_published: bool | None = None,
        allow_hosts: Sequence[str] = (),
        deny_hosts: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Rename (or drop the name), add or change labels, clear labels by key,
        change how long it may sit idle before it is suspended (0: never), or
        allow and deny egress hosts (effective at once, running or not)."""
        return self._workspaces.update(
            workspace,
            name=name,
            clear_name=clear_name,
            labels=labels,
            clear_labels=clear_labels,
            idle_suspend_seconds=idle_suspend_seconds,
            idle_suspend_published=idle_suspend_published,
            allow_hosts=allow_hosts,
            deny_hosts=deny_hosts,
        )

    @_redacting
    def exec_workspace(
        self,
        workspace: str,
        command: str | Sequence[str],
        *,
        timeout_seconds: float = config.DEFAULT_TIMEOUT_SECONDS,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        secret_env: Sequence[str] | Mapping[str, str] = (),
    ) -> dict[str, Any]:
        """Run a command in /workspace (``cwd`` is relative to it); same fields as ``run_in_vm``.

        ``secret_env`` entries ``NAME[:ENV_VAR]`` put a workspace secret in the
        command's environment (as ``NAME`` unless ``ENV_VAR`` is given); a mapping
        ``{ENV_VAR: SECRET_NAME}`` (pyro-mcp 4.5's form) means the same.
        """
        return self._workspaces.commands.run(
            workspace,
            command,
            timeout_seconds=timeout_seconds,
            cwd=cwd,
            env=env,
            secret_env=secret_env,
        )

    @_redacting
    def logs_workspace(self, workspace: str) -> dict[str, Any]:
        """The command journal: command, cwd, exit code, duration, start time, bounded output."""
        return self._workspaces.logs(workspace)

    @_redacting
    def push_workspace_sync(
        self, workspace: str, source: ReadPath, *, dest: str = "."
    ) -> dict[str, Any]:
        """Copy a host directory or .tar/.tgz into /workspace/<dest>; escaping links are skipped."""
        return self._workspaces.files.push(workspace, source, dest=dest)

    @_redacting
    def list_workspace_files(
        self, workspace: str, path: str = ".", *, recursive: bool = False
    ) -> dict[str, Any]:
        """Entries (path, type, size, mode, link_target) under a /workspace directory."""
        return self._workspaces.files.listing(workspace, path, recursive=recursive)

    @_redacting
    def read_workspace_file(
        self, workspace: str, path: str, *, max_bytes: int = 65536
    ) -> dict[str, Any]:
        """A file's text (``content``), or ``content_base64`` when it is binary; bounded."""
        return self._workspaces.files.read(workspace, path, max_bytes=max_bytes)

    @_redacting
    def write_workspace_file(self, workspace: str, path: str, text: str | bytes) -> dict[str, Any]:
        """Create or replace a file under /workspace with ``text`` (parents are created)."""
        return self._workspaces.files.write(workspace, path, text)

    @_redacting
    def apply_workspace_patch(self, workspace: str, patch: str) -> dict[str, Any]:
        """Apply a unified diff all or nothing.

        Raises:
            PatchConflict: a hunk does not match; nothing was changed.
        """
        return self._workspaces.files.apply_patch(workspace, patch)

    @_redacting
    def diff_workspace(
        self, workspace: str, *, include_ignored: bool = False, format: str = "changes"
    ) -> dict[str, Any]:
        """Changes against the create-time baseline: ``changes`` list and unified ``patch``.

        Seeded from a Git project, what its ignore rules ignore is left out
        (``ignored_count`` says how many paths) unless ``include_ignored``.
        ``format="patch"``: binary files as Git binary patches, so ``patch``
        goes through ``git apply`` whole.
        """
        return self._workspaces.files.diff(
            workspace, include_ignored=include_ignored, format=format
        )

    @_redacting
    def export_workspace(
        self,
        workspace: str,
        path: str,
        output_path: WritePath,
        *,
        overwrite: bool = False,
        include_ignored: bool = False,
    ) -> dict[str, Any]:
        """Copy a file or directory under /workspace to ``output_path`` on the host.

        A directory of a workspace seeded from a Git project leaves out what the
        project ignores (``ignored_count``) unless ``include_ignored``.
        """
        return self._workspaces.files.export(
            workspace, path, output_path, overwrite=overwrite, include_ignored=include_ignored
        )

    @_redacting
    def summarize_workspace(
        self, workspace: str, *, include_ignored: bool = False
    ) -> dict[str, Any]:
        """Commands, file operations and changed files since the last reset
        (without what a Git project ignores, unless ``include_ignored``)."""
        return self._workspaces.summary(workspace, include_ignored=include_ignored)

    @_redacting
    def reset_workspace(self, workspace: str, *, snapshot: str | None = None) -> dict[str, Any]:
        """Recreate the sandbox: fresh root disk, /workspace back to the baseline
        (or to ``snapshot``). Shells, services and installed packages are gone."""
        return self._workspaces.reset(workspace, snapshot=snapshot)

    @_redacting
    def export_workspace_disk(
        self, workspace: str, output_path: DiskImagePath, *, overwrite: bool = False
    ) -> dict[str, Any]:
        """Write a stopped workspace's /workspace as a raw ext4 image (no boot)."""
        return self._workspaces.disk.export(workspace, output_path, overwrite=overwrite)

    @_redacting
    def list_workspace_disk(
        self, workspace: str, path: str = ".", *, recursive: bool = False
    ) -> dict[str, Any]:
        """Entries of a stopped workspace's /workspace, read offline."""
        return self._workspaces.disk.list(workspace, path, recursive=recursive)

    @_redacting
    def read_workspace_disk(
        self, workspace: str, path: str, *, max_bytes: int = 65536
    ) -> dict[str, Any]:
        """A file of a stopped workspace's /workspace, read offline."""
        return self._workspaces.disk.read(workspace, path, max_bytes=max_bytes)

    @_redacting
    def create_snapshot(self, workspace: str, name: str) -> dict[str, Any]:
        """Capture /workspace consistently (even while running) as ``name``."""
        return self._workspaces.snapshots.create(workspace, name)

    @_redacting
    def list_snapshots(self, workspace: str) -> dict[str, Any]:
        """``baseline`` (reserved) and the named snapshots."""
        return self._workspaces.snapshots.list(workspace)

    @_redacting
    def delete_snapshot(self, workspace: str, name: str) -> dict[str, Any]:
        """Delete a named snapshot (``baseline`` cannot be deleted)."""
        return self._workspaces.snapshots.delete(workspace, name)

    # --------------------------------------------------------------- shells

    @_redacting
    def open_shell(
        self,
        workspace: str,
        *,
        cwd: str | None = None,
        cols: int = 120,
        rows: int = 40,
        env: dict[str, str] | None = None,
        secret_env: Sequence[str] | Mapping[str, str] = (),
    ) -> dict[str, Any]:
        """Open an interactive bash on a real PTY in the guest; returns ``shell_id``."""
        return self._workspaces.shells.open(
            workspace, cwd=cwd, cols=cols, rows=rows, env=env, secret_env=secret_env
        )

    @_redacting
    def write_shell(
        self, workspace: str, shell_id: str, input: str, *, newline: bool = True
    ) -> dict[str, Any]:
        """Type ``input`` into the shell (followed by Enter unless ``newline`` is False)."""
        return self._workspaces.shells.write(workspace, shell_id, input, newline=newline)

    @_redacting
    def read_shell(
        self,
        workspace: str,
        shell_id: str,
        *,
        cursor: int | None = None,
        plain: bool = False,
        wait_for_idle_ms: int | None = None,
        max_wait_ms: int = 10000,
        max_chars: int = 65536,
    ) -> dict[str, Any]:
        """Output from ``cursor`` on; ``next_cursor`` resumes. ``plain`` strips ANSI and
        applies CR/backspace; ``wait_for_idle_ms`` returns once output was quiet that long
        (at most ``max_wait_ms``). ``missed_bytes`` > 0 means the cursor fell out of the ring.
        """
        return self._workspaces.shells.read(
            workspace,
            shell_id,
            cursor=cursor,
            plain=plain,
            wait_for_idle_ms=wait_for_idle_ms,
            max_wait_ms=max_wait_ms,
            max_chars=max_chars,
        )

    @_redacting
    def signal_shell(self, workspace: str, shell_id: str, signal: str = "INT") -> dict[str, Any]:
        """Send INT, TERM, KILL, HUP or QUIT to the shell's foreground process."""
        return self._workspaces.shells.signal(workspace, shell_id, signal)

    @_redacting
    def close_shell(self, workspace: str, shell_id: str) -> dict[str, Any]:
        """End the shell and everything it started."""
        return self._workspaces.shells.close(workspace, shell_id)

    @_redacting
    def list_shells(self, workspace: str) -> dict[str, Any]:
        """The workspace's shells."""
        return self._workspaces.shells.list(workspace)

    # -------------------------------------------------------------- services

    @_redacting
    def start_service(
        self,
        workspace: str,
        service_name: str,
        command: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        ready_file: str | None = None,
        ready_tcp: str | None = None,
        ready_http: str | None = None,
        ready_command: str | None = None,
        ready_timeout_seconds: float = 60.0,
        ready_interval_ms: int = 200,
        published_ports: Sequence[str | Mapping[str, Any]] = (),
        secret_env: Sequence[str] | Mapping[str, str] = (),
        readiness: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Start a named long-running process and wait for its readiness check.

        The check is one of ``ready_file``/``ready_tcp``/``ready_http``/``ready_command``,
        or the same as pyro-mcp 4.5's ``readiness``: ``{"type": "file", "path": P}``,
        ``{"type": "tcp", "address": "HOST:PORT"}``, ``{"type": "http", "url": U}`` or
        ``{"type": "command", "command": C}``.

        Returns its status: ``state`` running, or failed (with ``reason``; the process
        is stopped) or exited (with ``exit_code``). ``published_ports`` entries
        ``[HOST_PORT:]GUEST_PORT`` (or ``{"guest_port": N, "host_port": M}``) forward
        127.0.0.1 host ports to the guest; the mapping is in the status's
        ``published_ports``.
        """
        return self._workspaces.services.start(
            workspace,
            service_name,
            command,
            cwd=cwd,
            env=env,
            ready_file=ready_file,
            ready_tcp=ready_tcp,
            ready_http=ready_http,
            ready_command=ready_command,
            ready_timeout_seconds=ready_timeout_seconds,
            ready_interval_ms=ready_interval_ms,
            published_ports=published_ports,
            secret_env=secret_env,
            readiness=readiness,
        )

    @_redacting
    def list_services(self, workspace: str) -> dict[str, Any]:
        """Every service of the workspace with its state and published ports."""
        return self._workspaces.services.list(workspace)

    @_redacting
    def status_service(self, workspace: str, service_name: str) -> dict[str, Any]:
        """One service's state, exit code, reason and published ports."""
        return self._workspaces.services.status(workspace, service_name)

    @_redacting
    def logs_service(
        self,
        workspace: str,
        service_name: str,
        *,
        tail_lines: int | None = 200,
        all: bool = False,
    ) -> dict[str, Any]:
        """The service's output (kept outside /workspace), the last ``tail_lines`` or all."""
        return self._workspaces.services.logs(
            workspace, service_name, tail_lines=tail_lines, all=all
        )

    @_redacting
    def stop_service(self, workspace: str, service_name: str) -> dict[str, Any]:
        """Stop the service (TERM, then KILL) and withdraw its published ports."""
        return self._workspaces.services.stop(workspace, service_name)

    @_redacting
    def stop_workspace(self, workspace: str, *, discard_memory: bool = False) -> dict[str, Any]:
        """Suspend the workspace: its memory is saved next to its disks, the VM process
        exits, and ``start_workspace`` resumes every process where it was (``suspended``,
        ``suspend_ms``, ``memory_bytes``). ``discard_memory``: stop it instead (the
        disks are kept; processes, services and shells end)."""
        return self._workspaces.stop(workspace, discard_memory=discard_memory)

    @_redacting
    def start_workspace(self, workspace: str) -> dict[str, Any]:
        """Resume a suspended workspace (``resumed: true``, ``resume_ms``), or boot a stopped
        one from its disks (``resumed: false``, with ``reason`` when saved memory could
        not be used)."""
        return self._workspaces.start(workspace)

    @_redacting
    def delete_workspace(self, workspace: str) -> dict[str, Any]:
        """Stop the workspace and remove its disks, record and journal."""
        return self._workspaces.delete(workspace)

    # ---------------------------------------------------------- environments

    def list_environments(self) -> list[dict[str, Any]]:
        """The catalog and the pulled environments, each with its installed state;
        pulled ones also with ``layer_disks``, ``layers_bytes``, ``shared_layers``,
        ``shared_bytes`` and ``shared_with`` (environments sharing its layer disks)."""
        environments = self._vms.environments
        return environments.describe(environments.list())

    def pull_environment(
        self,
        reference: ImageReference,
        *,
        name: NewEnvironmentName | None = None,
        force: bool = False,
        insecure_registry: InsecureRegistry = False,
        disk_size_mib: int | None = None,
        prepare: bool = False,
    ) -> dict[str, Any]:
        """Build a curated environment, or install one from an OCI image.

        ``reference`` is a curated name (``debian:12``: built, or verified and
        repaired), or an image: ``registry.example.org/team/node:22``,
        ``docker://...``, ``oci:PATH[:TAG]``, ``oci-archive:FILE`` or
        ``docker-archive:FILE``. An image is installed as ``name`` (default:
        from the reference, ``node:22``); its layers are fetched once and
        shared with other environments (docs/environments.md). A plain-HTTP
        registry is used only on a loopback address or with ``insecure_registry``.
        ``prepare``: then take its warm snapshots (``prepare(name)``: without and
        with a NIC), so its first workspace starts warm; `pyro env pull` does
        unless ``--no-prepare``. The result then has ``prepare``.
        """
        started = time.monotonic()
        if reference in CATALOG and name in (None, reference):
            self._pull_curated(reference, force)
            env_name = reference
        else:
            installed = self._vms.pull_image(
                reference,
                name=name,
                insecure_registry=insecure_registry,
                disk_size_mib=disk_size_mib or images.DEFAULT_DISK_MIB,
                progress=self._progress,
            )
            env_name = installed.name
        return self._installed(env_name, started, prepare)

    def _installed(self, name: str, started: float, prepare: bool) -> dict[str, Any]:
        """What pull, build and save answer: the inspection, after the warm
        snapshots when ``prepare``; the last progress line says which."""
        warm = None
        if prepare:
            self._progress(
                f"phase=prepare taking {name}'s warm snapshots (--no-prepare skips this)"
            )
            warm = prepare_ops.prepare(self._vms, name, network=True, progress=self._progress)
        info = self._vms.environments.inspect(name)
        info["seconds"] = round(time.monotonic() - started, 1)
        if warm is not None:
            info["prepare"] = warm
            self._progress(f"phase=ready {name} is installed and warm: workspaces restore it")
        else:
            self._progress(
                f"phase=ready {name} is installed (not prepared: its first workspace boots "
                f"cold; `pyro prepare {name}` makes it warm)"
            )
        return info

    def _pull_curated(self, name: str, force: bool) -> None:
        """From ``PYRO_ENVIRONMENT_REGISTRY`` when one is named and ``name`` is not
        installed yet; otherwise (or when that fails) built from Debian packages."""
        registry = config.environment_registry()
        environments = self._vms.environments
        installed = environments.status(name).installed
        if registry and (force or not installed):
            source = f"{registry}/{name}"
            try:
                self._vms.pull_image(source, name=name, curated=True, progress=self._progress)
                self._progress(f"phase=source {name} pulled from {source}, not built")
                return
            except images.ImageError as exc:
                self._progress(
                    f"phase=fallback {source} could not be pulled ({str(exc)[:200]}); "
                    f"building {name} from Debian packages instead"
                )
        elif not installed:
            self._progress(
                f"phase=source building {name} from Debian packages "
                "(PYRO_ENVIRONMENT_REGISTRY names no registry to pull it from)"
            )
        environments.pull(name, self._progress, force=force)

    def build_environment(
        self,
        name: NewEnvironmentName,
        *,
        file: InsidePath | None = None,
        context: FolderPath = ".",
        build_args: Mapping[str, str] | None = None,
        allow_hosts: Sequence[str] = (),
        allow_package_index: bool = False,
        no_cache: bool = False,
        step_timeout_seconds: int = env_build.STEP_TIMEOUT_SECONDS,
        prepare: bool = False,
    ) -> dict[str, Any]:
        """Build environment ``name`` from a Dockerfile (``file``, default
        ``CONTEXT/Dockerfile``) inside a guest; ``COPY``/``ADD`` read from
        ``context`` (``.dockerignore`` honoured, nothing outside it).

        ``FROM`` names any installed environment or any reference
        ``pull_environment`` takes (pulled first). ``RUN`` steps run in the
        guest; they reach the network only through the egress proxy, and only
        the hosts in ``allow_hosts`` (and with ``allow_package_index`` this
        host's package index settings: pip's and npm's, and apt's Debian
        mirror); with neither, no network. Each step's result
        is cached by its parent, instruction and inputs: a rebuild runs from
        the first step that changed (``no_cache``: all). A step running longer
        than ``step_timeout_seconds`` is stopped with its guest. Nothing is
        installed unless every step succeeds. ``prepare``: then take its warm
        snapshots, as ``pull_environment`` does.

        Returns:
            The environment inspection, with ``seconds``.
        """
        started = time.monotonic()
        context_path = Path(context).expanduser()
        file_path = Path(file).expanduser() if file else context_path / "Dockerfile"
        if not file_path.is_file():
            raise InvalidArgument("file", f"{file_path} is not a file; name it with --file")
        egress = None
        if allow_hosts or allow_package_index:
            hosts = list(allow_hosts)
            if allow_package_index:
                # A build's package index includes apt's: this host's Debian mirror.
                with contextlib.suppress(PyroError):
                    mirror = urlsplit(builder.debian_mirror()).hostname
                    if mirror and mirror not in hosts:
                        hosts.append(mirror)
            policy = workspace_egress.build_policy(
                network=True,
                allow_hosts=hosts,
                allow_package_index=allow_package_index,
                deny_hosts=(),
                allow_private_egress=False,
                allow_host_services=False,
                secret_hosts={},
                secret_names=[],
            )
            assert policy is not None
            egress = egress_config.EgressConfig(policy=policy)
        installed = self._vms.build_environment(
            name,
            file=file_path,
            context=context_path,
            build_args=dict(build_args or {}),
            egress=egress,
            no_cache=no_cache,
            step_timeout_seconds=step_timeout_seconds,
            progress=self._progress,
            setup=workspace_boot.build_guest_setup(),
            namespace=self._environment_namespace,
        )
        return self._installed(installed.name, started, prepare)

    def save_environment(
        self, workspace: str, name: NewEnvironmentName, *, prepare: bool = False
    ) -> dict[str, Any]:
        """Save the root filesystem of ``workspace`` as it is now (what it installed
        outside /workspace) as environment ``name``; /workspace is not part of it.
        A running workspace pauses only while its root disk moves onto a new top
        (``pause_ms``) and runs on; a stopped or suspended one stays as it is.

        ``prepare``: then take its warm snapshots, as ``pull_environment`` does.

        Returns:
            The environment inspection, with ``pause_ms`` and ``save_seconds``.
        """
        ctx = self._workspaces.ctx
        record = ctx.find(workspace)
        ctx.require(
            record,
            (WorkspaceState.RUNNING, WorkspaceState.SUSPENDED, WorkspaceState.STOPPED),
            "Wait until it has started, then save it.",
        )
        vm_id = str(record["vm_id"])
        source = f"workspace:{record['workspace_id']}"
        installed, saved = env_build.save_environment(
            self._vms.environments,
            name=name,
            environment=str(record["environment"]),
            source=source,
            save_root=lambda out, base: self._vms.save_root(vm_id, out, base),
            progress=self._progress,
        )
        ctx.journal(record, "env_save", {"name": installed.name, **saved})
        return {**self._installed(installed.name, time.monotonic(), prepare), **saved}

    def push_environment(
        self,
        name: EnvironmentName,
        reference: PushReference,
        *,
        insecure_registry: InsecureRegistry = False,
    ) -> dict[str, Any]:
        """Write installed environment ``name`` (curated or pulled) to ``reference``:
        a registry (``HOST/PATH:TAG``, ``docker://...``), ``oci:PATH[:TAG]`` or
        ``oci-archive:FILE``. ``pull_environment`` of it elsewhere gives the same
        manifest digest. A curated environment becomes a one-layer image of its
        root filesystem (packed in a guest, once per build)."""
        started = time.monotonic()
        result = self._vms.push_environment(
            name, reference, insecure_registry=insecure_registry, progress=self._progress
        )
        return {**result, "seconds": round(time.monotonic() - started, 1)}

    def inspect_environment(self, name: EnvironmentName) -> dict[str, Any]:
        """Catalog entry, status and build manifest of ``name``."""
        return self._vms.environments.inspect(name)

    def remove_environment(self, name: EnvironmentName, *, force: bool = False) -> dict[str, Any]:
        """Remove installed environment ``name``: its builds, its warm snapshots and
        the layer disks no other environment shares. A curated one can be pulled
        again afterwards.

        Args:
            force: delete the workspaces and VMs that use it first (each is named
                in a progress line); without it their existence is an error.

        Returns:
            ``name``, ``removed``, ``deleted_workspaces``, ``deleted_vms``,
            ``removed_paths`` and ``freed_bytes``.

        Raises:
            NotFound: it is not installed (the message lists what is).
            StateError: workspaces or VMs use it (named) and ``force`` is off.
        """
        from pyro_mcp.workspaces.environment_removal import remove_environment

        return remove_environment(self._workspaces, name, force=force, progress=self._progress)

    def prune_environments(self, *, all: bool = False) -> dict[str, Any]:
        """Remove interrupted and superseded builds, download caches, and warm
        snapshots nothing can use (stale, superseded or half-written), the
        building guest's included.

        Builds that existing VMs were created from are kept, and so are the
        current, valid warm snapshots.

        Args:
            all: also remove the installed builds and every warm snapshot.
        """
        usable = set() if all else prepare_ops.usable_snapshots(self._vms)
        warm = self._vms.warm.prune(usable)
        builders = warm_builder.prune(self.paths.cache_dir, everything=all)
        in_use = {Path(record.build_dir) for record in self._vms.store.list_vms()}
        result = self._vms.environments.prune(remove_installed=all, keep_builds=in_use)
        return {
            "removed": result["removed"] + warm["removed"] + builders["removed"],
            "freed_bytes": result["freed_bytes"] + warm["freed_bytes"] + builders["freed_bytes"],
        }

    def prepare(
        self,
        environment: EnvironmentName = config.DEFAULT_ENVIRONMENT,
        *,
        network: bool = True,
        force: bool = False,
    ) -> dict[str, Any]:
        """Build ``environment`` if needed and take its warm snapshots.

        Afterwards workspace create and reset, ``run_in_vm`` and VM starts
        restore the snapshot instead of booting (a fraction of a second instead
        of several). Run again while nothing changed, it returns at once with
        ``already_warm: true``.

        Args:
            network: also prepare guests with a NIC (workspaces with egress,
                ``network=True`` runs), as by default; ``False`` prepares only
                guests without one (a snapshot without a NIC cannot gain one).
            force: take new snapshots even when the current ones are valid.

        Returns:
            ``environment``, ``accel``, ``already_warm``, ``seconds`` and
            ``snapshots``: one per shape with ``network``, ``status``
            (``already warm`` or ``prepared``), ``path``, ``bytes``, ``proof``.
        """
        return prepare_ops.prepare(
            self._vms, environment, network=network, force=force, progress=self._progress
        )

    def prepare_project(
        self,
        project_path: FolderPath,
        *,
        allow_hosts: Sequence[str] = (),
        allow_package_index: bool = False,
        network: bool = True,
        force: bool = False,
    ) -> dict[str, Any]:
        """The environment ``project_path`` declares in ``.devcontainer/devcontainer.json``
        (``image``: pulled; ``build.dockerfile``: built in a guest, its ``RUN`` steps
        reaching ``allow_hosts`` and the package index as ``build_environment``'s),
        named after the project, and its warm snapshots. ``pyro mcp serve`` and
        ``pyro host connect`` started in the project then default to it.

        Returns:
            ``prepare``'s result with ``project``, ``devcontainer`` and ``environment``.

        Raises:
            InvalidArgument: the project has no devcontainer file, or it is not
                valid (the message names the file and the field).
        """
        from pyro_mcp.environments import devcontainer

        project = Path(project_path).expanduser().resolve()
        if not project.is_dir():
            raise InvalidArgument("project_path", f"{project} is not a folder")
        declared = devcontainer.read(project)
        if declared is None:
            raise InvalidArgument(
                "project_path",
                f"{project} has no {' or '.join(devcontainer.LOCATIONS)}; "
                "prepare an environment by name instead (pyro prepare NAME)",
            )
        name = self._environment_namespace + declared.environment_name
        self._progress(f"phase=project {declared.describe()} -> environment {name}")
        if declared.image:
            self.pull_environment(declared.image, name=name, force=force)
        else:
            assert declared.dockerfile is not None and declared.context is not None
            self.build_environment(
                name,
                file=declared.dockerfile,
                context=declared.context,
                build_args=dict(declared.args),
                allow_hosts=allow_hosts,
                allow_package_index=allow_package_index,
                no_cache=force,
            )
        result = self.prepare(name, network=network, force=force)
        return {
            **result,
            "project": str(project),
            "devcontainer": str(declared.path),
            "environment": name,
        }

    # ---------------------------------------------------------------- host

    def doctor(
        self,
        environment: EnvironmentName = config.DEFAULT_ENVIRONMENT,
        *,
        platform_only: bool = False,
    ) -> dict[str, Any]:
        """Whether this host can run guests, and what to do if not.

        ``daily_loop`` says whether workspaces of ``environment`` start
        ``warm``, ``cold`` (no snapshot yet) or ``stale`` (something changed
        since it was taken), and the command that fixes it. ``capacity``: how
        many workspaces run and are suspended, and ``room_for`` how many more
        this host can run. ``platform_only`` reports the host alone (no
        environments, no daily loop, no capacity).
        """
        report = doctor.diagnose(self.paths, platform_only=platform_only)
        if platform_only:
            return report
        report["daily_loop"] = doctor.daily_loop(self._vms, environment)
        report["capacity"] = doctor.capacity(self._vms)
        if report["daily_loop"]["status"] != "warm":
            report["warnings"].append(
                f"the daily loop for {environment} is {report['daily_loop']['status']}: "
                f"{report['daily_loop']['reason']}; run `{report['daily_loop']['fix']}`"
            )
        return report


def _routed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method``, sent through the transport when the engine is remote."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self: Pyro, *args: Any, **kwargs: Any) -> Any:
        if self._remote is None:
            return method(self, *args, **kwargs)
        arguments = dict(signature.bind(self, *args, **kwargs).arguments)
        del arguments["self"]
        return self._remote.call(name, arguments, self._progress)

    return wrapper


def routed_methods(cls: type | None = None) -> list[str]:
    """The SDK methods a remote transport carries (``pyro server`` serves these), of
    ``Pyro`` or a subclass of it."""
    cls = cls or Pyro
    return sorted(
        name for name in dir(cls) if getattr(getattr(cls, name, None), "__pyro_routed__", False)
    )


for _name, _member in list(vars(Pyro).items()):
    if _name.startswith("_") or not inspect.isfunction(_member):
        continue
    _wrapped = _routed(_name, _member)
    _wrapped.__pyro_routed__ = True  # type: ignore[attr-defined]
    setattr(Pyro, _name, _wrapped)
    crossings.register(_name, _member)


def _no_host_mode(allow_host_compat: Any) -> None:
    """pyro-mcp 4.5's ``allow_host_compat``: accepted as ``False``, the only mode pyro has."""
    if allow_host_compat is not False:
        raise InvalidArgument(
            "allow_host_compat",
            "pyro has no host mode: every command runs in a guest VM, so only False is "
            "accepted. Run `pyro doctor` if guests cannot boot here",
        )
