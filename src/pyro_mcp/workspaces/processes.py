"""Services and shells of a workspace, on the host side.

The guest agent supervises the processes; this layer validates arguments,
publishes service ports on the host (127.0.0.1 only, through QEMU's user-mode
networking), records them, checks every reply, and renders shell output.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from pyro_mcp import names
from pyro_mcp.agent import operations as guest
from pyro_mcp.errors import AgentProtocolError, InvalidArgument, PyroError
from pyro_mcp.vm import control_ops
from pyro_mcp.workspaces.context import WorkspaceContext
from pyro_mcp.workspaces.paths import resolve_workspace_path
from pyro_mcp.workspaces.terminal import render_plain

POLICIES = ("off", "egress", "egress+published-ports")
READINESS = ("file", "tcp", "http", "command")
SIGNALS = ("INT", "TERM", "KILL", "HUP", "QUIT")
MAX_SHELL_READ = 1024 * 1024
MAX_SERVICE_LOG = 1024 * 1024
_SHELL_ID = re.compile(r"^[0-9a-f]{12}$")
# As the guest reports them; a service whose readiness check passed is "ready"
# there and "running" to callers (pyro-mcp 4.5's name).
SERVICE_STATES = frozenset({"starting", "ready", "failed", "exited", "stopped"})
LIVE_STATES = ("starting", "running")


# pyro-mcp 4.5's readiness={"type": ..., KEY: target}: the key each type takes.
READINESS_KEYS = {"file": "path", "tcp": "address", "http": "url", "command": "command"}


def parse_readiness(spec: Any) -> tuple[str, str]:
    """pyro-mcp 4.5's ``readiness`` mapping as (type, target).

    Raises:
        InvalidArgument: not one of the four accepted forms.
    """
    forms = ", ".join(f'{{"type": "{kind}", "{key}": ...}}' for kind, key in READINESS_KEYS.items())
    if not isinstance(spec, Mapping):
        raise InvalidArgument("readiness", f"{spec!r:.100} is not a mapping; give one of {forms}")
    kind = spec.get("type")
    key = READINESS_KEYS.get(kind) if isinstance(kind, str) else None
    target = spec.get(key) if key else None
    if key is None or set(spec) != {"type", key} or not isinstance(target, str) or not target:
        raise InvalidArgument(
            "readiness",
            f"{dict(spec)!r:.200} is not a readiness check; give one of {forms} "
            "(or ready_file/ready_tcp/ready_http/ready_command)",
        )
    return str(kind), target


def parse_publish(spec: Any) -> tuple[int | None, int]:
    """``[HOST_PORT:]GUEST_PORT``, or pyro-mcp 4.5's ``{"guest_port": N,
    "host_port": M}`` (``host_port`` optional), as (host port or None, guest port)."""
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"guest_port", "host_port"}
        guest, host_value = spec.get("guest_port"), spec.get("host_port")
        if (
            unknown
            or not _port_number(guest)
            or not (host_value is None or _port_number(host_value))
        ):
            raise InvalidArgument(
                "published_ports",
                f"{dict(spec)!r}: give '[HOST_PORT:]GUEST_PORT' or "
                '{"guest_port": 8080, "host_port": 18080} (host_port optional), ports 1-65535',
            )
        assert isinstance(guest, int)
        return (int(host_value) if host_value is not None else None), guest
    if not isinstance(spec, str | int) or isinstance(spec, bool):
        raise InvalidArgument(
            "published_ports",
            f'{spec!r}: give \'[HOST_PORT:]GUEST_PORT\' or {{"guest_port": N, "host_port": M}}',
        )
    host, _, guest_part = str(spec).rpartition(":")
    try:
        guest_port = int(guest_part)
        host_port = int(host) if host else None
    except ValueError:
        raise InvalidArgument(
            "published_ports", f"{spec!r} is not [HOST_PORT:]GUEST_PORT"
        ) from None
    for port in (guest_port, host_port):
        if port is not None and not 1 <= port <= 65535:
            raise InvalidArgument("published_ports", f"{spec!r}: ports are 1-65535")
    return host_port, guest_port


def _port_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def free_host_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def host_port_available(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ServiceOps:
    """``service start|list|status|logs|stop`` of a workspace."""

    def __init__(self, ctx: WorkspaceContext) -> None:
        self.ctx = ctx

    def start(
        self,
        ref: str,
        name: str,
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
        """Start a named service and wait until its readiness check passes (or fails)."""
        names.check_name("service_name", name)
        if isinstance(ready_interval_ms, bool) or not 10 <= ready_interval_ms <= 60_000:
            raise InvalidArgument("ready_interval_ms", "must be from 10 to 60000")
        checks = {
            "file": ready_file,
            "tcp": ready_tcp,
            "http": ready_http,
            "command": ready_command,
        }
        chosen = {kind: target for kind, target in checks.items() if target}
        if readiness is not None:
            if chosen:
                raise InvalidArgument(
                    "readiness", "give readiness= or one of ready_file/tcp/http/command, not both"
                )
            chosen = dict([parse_readiness(readiness)])
        if len(chosen) > 1:
            raise InvalidArgument("readiness", "give at most one of ready_file/tcp/http/command")
        if not 0 < ready_timeout_seconds <= 3600:
            raise InvalidArgument("ready_timeout_seconds", "must be more than 0 and at most 3600")
        ports = [parse_publish(spec) for spec in published_ports]
        workspace = self.ctx.find(ref)
        if ports and workspace.get("network_policy") != "egress+published-ports":
            raise InvalidArgument(
                "published_ports",
                "this workspace cannot publish ports; create it with "
                "--network-policy egress+published-ports",
            )
        for host_port, _ in ports:
            if host_port is not None and not host_port_available(host_port):
                raise InvalidArgument(
                    "published_ports", f"port {host_port} is already in use on the host"
                )
        args: dict[str, Any] = {
            "name": name,
            "cwd": self._cwd(cwd),
            "env": env or {},
            "secret_env": self.ctx.secret_env(workspace, secret_env, "service"),
        }
        args.update({"shell": command} if isinstance(command, str) else {"argv": list(command)})
        if chosen:
            ((kind, target),) = chosen.items()
            args["readiness"] = {
                "type": kind,
                "target": target,
                "timeout_seconds": ready_timeout_seconds,
                "interval_seconds": ready_interval_ms / 1000,
            }
        with self.ctx.connect(workspace) as client:
            self.ctx.check_writable(client, workspace)
            status = _check_service(guest.service_start(client, args, ready_timeout_seconds + 30))
            published: list[dict[str, Any]] = []
            if status["state"] == "running":
                try:
                    for host_port, guest_port in ports:
                        chosen_port = host_port or free_host_port()
                        control_ops.add_port(client, chosen_port, guest_port)
                        published.append(
                            {
                                "host": "127.0.0.1",
                                "host_port": chosen_port,
                                "guest_port": guest_port,
                            }
                        )
                        self.ctx.store.add_published_port(
                            workspace["workspace_id"], name, chosen_port, guest_port
                        )
                except PyroError as exc:
                    self._release(client, workspace["workspace_id"], name)
                    guest.service_stop(client, name, 30)
                    raise InvalidArgument(
                        "publish", f"could not publish the port on the host: {exc}"
                    ) from exc
        self.ctx.journal(
            workspace, "service", {"name": name, "action": "start", "state": status["state"]}
        )
        return self.ctx.done(workspace, {**status, "published_ports": published})

    def list(self, ref: str) -> dict[str, Any]:
        workspace = self.ctx.find(ref)
        with self.ctx.connect(workspace) as client:
            reply = guest.service_list(client)
        services = reply.get("services")
        if not isinstance(services, list) or len(services) > 64:
            raise AgentProtocolError("the guest sent a malformed service list")
        listed = [self._with_ports(workspace, _check_service(s)) for s in services]
        running = sum(s["state"] in LIVE_STATES for s in listed)
        return self.ctx.done(
            workspace, {"count": len(listed), "running_count": running, "services": listed}
        )

    def status(self, ref: str, name: str) -> dict[str, Any]:
        workspace = self.ctx.find(ref)
        with self.ctx.connect(workspace) as client:
            status = _check_service(
                guest.service_status(client, names.check_name("service_name", name))
            )
        return self.ctx.done(workspace, self._with_ports(workspace, status))

    def logs(
        self, ref: str, name: str, *, tail_lines: int | None = 200, all: bool = False
    ) -> dict[str, Any]:
        workspace = self.ctx.find(ref)
        args: dict[str, Any] = {
            "name": names.check_name("service_name", name),
            "max_bytes": MAX_SERVICE_LOG,
        }
        if not all and tail_lines is not None:
            if tail_lines < 0:
                raise InvalidArgument("tail_lines", "must not be negative")
            args["tail_lines"] = tail_lines
        with self.ctx.connect(workspace) as client:
            reply = guest.service_logs(client, args)
        redact = self.ctx.redactor(workspace["workspace_id"])
        log = redact.redact_bytes(_decode(reply.get("log"), MAX_SERVICE_LOG))
        return self.ctx.done(
            workspace,
            {
                "name": name,
                "stdout": log.decode("utf-8", errors="replace"),
                "truncated": bool(reply.get("truncated")),
            },
        )

    def stop(self, ref: str, name: str) -> dict[str, Any]:
        workspace = self.ctx.find(ref)
        with self.ctx.connect(workspace) as client:
            status = _check_service(
                guest.service_stop(client, names.check_name("service_name", name))
            )
            self._release(client, workspace["workspace_id"], name)
        self.ctx.journal(
            workspace, "service", {"name": name, "action": "stop", "state": status["state"]}
        )
        return self.ctx.done(workspace, {**status, "published_ports": []})

    def counts(self, workspace: dict[str, Any]) -> dict[str, int]:
        """Running and total services, for status; zero when the VM is not running."""
        try:
            with self.ctx.vms.connect(workspace["vm_id"], "") as client:
                services = guest.service_list(client, 10).get("services") or []
        except PyroError:
            return {"running": 0, "total": 0}
        running = sum(
            1 for s in services if isinstance(s, dict) and s.get("state") in ("starting", "ready")
        )
        return {"running": running, "total": len(services)}

    def _release(self, client: Any, workspace_id: str, name: str) -> None:
        for row in self.ctx.store.published_ports(workspace_id, name):
            with contextlib.suppress(PyroError):
                control_ops.remove_port(client, row["host_port"])
        self.ctx.store.delete_published_ports(workspace_id, name)

    def _with_ports(self, workspace: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        ports = [
            {"host": "127.0.0.1", "host_port": r["host_port"], "guest_port": r["guest_port"]}
            for r in self.ctx.store.published_ports(workspace["workspace_id"], status["name"])
        ]
        return {**status, "published_ports": ports}

    @staticmethod
    def _cwd(cwd: str | None) -> str:
        return str(resolve_workspace_path(cwd or "."))


class ShellOps:
    """``shell open|write|read|signal|close|list`` of a workspace."""

    def __init__(self, ctx: WorkspaceContext) -> None:
        self.ctx = ctx

    def open(
        self,
        ref: str,
        *,
        cwd: str | None = None,
        cols: int = 120,
        rows: int = 40,
        env: dict[str, str] | None = None,
        secret_env: Sequence[str] | Mapping[str, str] = (),
    ) -> dict[str, Any]:
        if not (10 <= cols <= 1000 and 2 <= rows <= 500):
            raise InvalidArgument("cols", "cols must be 10-1000 and rows 2-500")
        workspace = self.ctx.find(ref)
        args = {
            "cwd": ServiceOps._cwd(cwd),
            "cols": cols,
            "rows": rows,
            "env": env or {},
            "secret_env": self.ctx.secret_env(workspace, secret_env, "shell"),
        }
        with self.ctx.connect(workspace) as client:
            reply = guest.shell_open(client, args)
        return self.ctx.done(workspace, _check_shell(reply))

    def write(self, ref: str, shell_id: str, text: str, *, newline: bool = True) -> dict[str, Any]:
        workspace = self.ctx.find(ref)
        with self.ctx.connect(workspace) as client:
            reply = guest.shell_write(client, _shell_id(shell_id), text, newline=newline)
        return self.ctx.done(workspace, {"shell_id": shell_id, "bytes": int(reply.get("bytes", 0))})

    def read(
        self,
        ref: str,
        shell_id: str,
        *,
        cursor: int | None = None,
        plain: bool = False,
        wait_for_idle_ms: int | None = None,
        max_wait_ms: int = 10000,
        max_chars: int = 65536,
    ) -> dict[str, Any]:
        """Output since ``cursor`` (default: all still kept); ``plain`` renders it for reading."""
        if not 1 <= max_chars <= MAX_SHELL_READ or not 0 <= max_wait_ms <= 120000:
            raise InvalidArgument(
                "max_chars", "max_chars must be 1-1048576 and max_wait_ms 0-120000"
            )
        workspace = self.ctx.find(ref)
        args: dict[str, Any] = {
            "shell_id": _shell_id(shell_id),
            "cursor": cursor,
            "max_bytes": max_chars,
            "wait_for_idle_ms": wait_for_idle_ms or 0,
            "max_wait_ms": max_wait_ms,
        }
        with self.ctx.connect(workspace) as client:
            reply = guest.shell_read(client, args, max_wait_ms / 1000 + 30)
        data = _decode(reply.get("output"), MAX_SHELL_READ)
        numbers = {}
        for field in ("cursor", "next_cursor", "missed_bytes"):
            value = reply.get(field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise AgentProtocolError(f"shell read field {field} must be a non-negative integer")
            numbers[field] = value
        redact = self.ctx.redactor(workspace["workspace_id"])
        if redact and not reply.get("closed"):
            # A secret split across two reads: keep back a tail that could begin
            # one; the next read starts there and sees the whole value.
            held = redact.held_back(data)
            if held:
                data = data[: len(data) - held]
                numbers["next_cursor"] -= held
        raw = redact.redact_bytes(data).decode("utf-8", errors="replace")
        return self.ctx.done(
            workspace,
            {
                "shell_id": shell_id,
                "output": render_plain(raw) if plain else raw,
                "plain": plain,
                **numbers,
                "more": bool(reply.get("more")),
                "closed": bool(reply.get("closed")),
                "exit_code": reply.get("exit_code")
                if isinstance(reply.get("exit_code"), int)
                else None,
            },
        )

    def signal(self, ref: str, shell_id: str, signal: str = "INT") -> dict[str, Any]:
        name = str(signal).upper().removeprefix("SIG")
        if name not in SIGNALS:
            raise InvalidArgument("signal", f"must be one of {', '.join(SIGNALS)}")
        workspace = self.ctx.find(ref)
        with self.ctx.connect(workspace) as client:
            guest.shell_signal(client, _shell_id(shell_id), name)
        return self.ctx.done(workspace, {"shell_id": shell_id, "signal": name})

    def close(self, ref: str, shell_id: str) -> dict[str, Any]:
        workspace = self.ctx.find(ref)
        with self.ctx.connect(workspace) as client:
            guest.shell_close(client, _shell_id(shell_id))
        return self.ctx.done(workspace, {"shell_id": shell_id, "closed": True})

    def list(self, ref: str) -> dict[str, Any]:
        workspace = self.ctx.find(ref)
        with self.ctx.connect(workspace) as client:
            shells = guest.shell_list(client).get("shells")
        if not isinstance(shells, list) or len(shells) > 64:
            raise AgentProtocolError("the guest sent a malformed shell list")
        return self.ctx.done(workspace, {"shells": [_check_shell(s) for s in shells]})


def _shell_id(value: str) -> str:
    if not isinstance(value, str) or not _SHELL_ID.match(value):
        raise InvalidArgument(
            "shell_id", f"{names.shown(value)} is not a shell id (see shell list)"
        )
    return value


def _decode(value: Any, limit: int) -> bytes:
    if not isinstance(value, str) or len(value) > limit * 4 // 3 + 8:
        raise AgentProtocolError("the guest sent output that is not bounded base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AgentProtocolError("the guest sent output that is not base64") from exc


def _check_service(reply: Any) -> dict[str, Any]:
    if not isinstance(reply, dict) or reply.get("state") not in SERVICE_STATES:
        raise AgentProtocolError("the guest sent a malformed service status")
    code = reply.get("exit_code")
    return {
        "name": str(reply.get("name", ""))[:64],
        "state": "running" if reply["state"] == "ready" else reply["state"],
        "pid": reply.get("pid") if isinstance(reply.get("pid"), int) else None,
        "exit_code": code if isinstance(code, int) and not isinstance(code, bool) else None,
        "reason": str(reply.get("reason") or "")[:2000],
        "started_at": reply.get("started_at")
        if isinstance(reply.get("started_at"), float)
        else None,
        "ready_at": reply.get("ready_at") if isinstance(reply.get("ready_at"), float) else None,
    }


def _check_shell(reply: Any) -> dict[str, Any]:
    if not isinstance(reply, dict) or not _SHELL_ID.match(str(reply.get("shell_id", ""))):
        raise AgentProtocolError("the guest sent a malformed shell record")
    return {
        "shell_id": reply["shell_id"],
        "closed": bool(reply.get("closed")),
        "exit_code": reply.get("exit_code") if isinstance(reply.get("exit_code"), int) else None,
        "cursor": reply.get("cursor") if isinstance(reply.get("cursor"), int) else 0,
    }


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise InvalidArgument("network_policy", f"{policy!r} is not one of {', '.join(POLICIES)}")
    return policy
