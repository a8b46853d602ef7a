"""Long-running processes of the guest agent: services and PTY shells (stdlib only).

Services are named processes with typed readiness (file, tcp, http, command)
and logs kept under /run/pyro/services (outside /workspace, bounded).
Shells are real PTYs whose output goes into a bounded ring addressed by
monotonic byte cursors, so a reader can resume where it stopped and learn
when it fell behind.
"""

from __future__ import annotations

import base64
import fcntl
import os
import pty
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

try:
    from pyro_mcp.guest.fileops import RequestError, scoped
except ImportError:  # inside the guest
    from fileops import RequestError, scoped  # type: ignore[import-not-found,no-redef]

SERVICE_LOG_DIR = "/run/pyro/services"
SERVICE_LOG_MAX_BYTES = 2 * 1024 * 1024
MAX_SERVICES = 32
MAX_SHELLS = 16
SHELL_RING_BYTES = 1024 * 1024
SIGNALS = {
    "INT": signal.SIGINT,
    "TERM": signal.SIGTERM,
    "KILL": signal.SIGKILL,
    "HUP": signal.SIGHUP,
    "QUIT": signal.SIGQUIT,
}
_lock = threading.Lock()

# The agent's base environment for commands; set by the agent at import.
BASE_ENV: dict[str, str] = {}
# An image environment's config (the hello's ``image``): the user commands run
# as (uid, gid; None: root) and the directory they start in when they name none.
IMAGE_USER: tuple[int, int] | None = None
DEFAULT_CWD = "/root"


def apply_image(settings: dict[str, Any]) -> None:
    """Honour an image's config: its ``Env``, ``User`` and ``WorkingDir``."""
    global IMAGE_USER, DEFAULT_CWD
    env = settings.get("env") or {}
    if isinstance(env, dict):
        for key, value in env.items():
            if isinstance(key, str) and isinstance(value, str) and key and "=" not in key:
                BASE_ENV[key] = value
    user = settings.get("user")
    if isinstance(user, str) and user and user not in ("root", "0", "0:0"):
        uid, gid, name, home = _resolve_user(user)
        if uid != 0:
            IMAGE_USER = (uid, gid)
        BASE_ENV.update(HOME=home, USER=name, LOGNAME=name)
    workdir = settings.get("working_dir")
    if isinstance(workdir, str) and workdir.startswith("/") and os.path.isdir(workdir):
        DEFAULT_CWD = workdir
    elif not os.path.isdir(DEFAULT_CWD):
        DEFAULT_CWD = "/"


def _resolve_user(user: str, root: str = "/") -> tuple[int, int, str, str]:
    """``name``, ``uid``, ``name:group`` or ``uid:gid`` against the image's own
    /etc/passwd and /etc/group (those under ``root``): (uid, gid, name, home)."""
    who, _, group = user.partition(":")
    passwd = _table(os.path.join(root, "etc/passwd"))
    entry = next((row for row in passwd if who in (row[0], row[2])), None)
    if entry is None and not who.isdigit():
        raise RequestError("bad_user", f"the image's user {who!r} is not in its /etc/passwd")
    uid = int(entry[2]) if entry else int(who)
    gid = int(entry[3]) if entry and entry[3].isdigit() else 0
    if group:
        groups = _table(os.path.join(root, "etc/group"))
        found = next((row for row in groups if group in (row[0], row[2])), None)
        if found is None and not group.isdigit():
            raise RequestError("bad_user", f"the image's group {group!r} is not in its /etc/group")
        gid = int(found[2]) if found else int(group)
    name = entry[0] if entry else who
    home = entry[5] if entry and len(entry) > 5 and entry[5] else "/"
    return uid, gid, name, home


def _table(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n").split(":") for line in handle if line.count(":") >= 3]
    except OSError:
        return []


def own_workspace(root: str) -> None:
    """Give /workspace to the image's user (a fresh disk: everything on it)."""
    if IMAGE_USER is None:
        return
    uid, gid = IMAGE_USER
    os.chown(root, uid, gid)
    for current, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(current, name), uid, gid)


def _drop_to_image_user() -> None:
    """In a forked child: become the image's user."""
    if IMAGE_USER is not None:
        os.setgroups([])
        os.setgid(IMAGE_USER[1])
        os.setuid(IMAGE_USER[0])


SECRETS_DIR = "/run/pyro-secrets"


def _env(args: dict[str, Any]) -> dict[str, str]:
    env = dict(BASE_ENV)
    extra = args.get("env") or {}
    if not isinstance(extra, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
    ):
        raise RequestError("bad_args", "env must map names to strings")
    env.update(extra)
    env.update(secret_environment(args))
    return env


def secret_environment(args: dict[str, Any]) -> dict[str, str]:
    """``secret_env`` {ENV_VAR: SECRET_NAME} resolved from /run/pyro-secrets."""
    mapping = args.get("secret_env") or {}
    if not isinstance(mapping, dict):
        raise RequestError("bad_args", "secret_env must map variables to secret names")
    env = {}
    for variable, name in mapping.items():
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise RequestError("bad_args", "bad secret name")
        try:
            with open(os.path.join(SECRETS_DIR, name), "rb") as handle:
                env[str(variable)] = handle.read().decode("utf-8", errors="replace")
        except OSError as exc:
            raise RequestError("no_such", f"no secret {name!r} in this workspace") from exc
    return env


def op_secrets_put(args: dict[str, Any]) -> dict[str, Any]:
    """Materialize secrets on the tmpfs /run/pyro-secrets (0700, files 0600)."""
    values = args.get("secrets") or {}
    if not isinstance(values, dict):
        raise RequestError("bad_args", "secrets must map names to base64 values")
    os.makedirs(SECRETS_DIR, mode=0o700, exist_ok=True)
    os.chmod(SECRETS_DIR, 0o700)
    owner = IMAGE_USER or (0, 0)  # an image's user runs the commands: the secrets are its
    os.chown(SECRETS_DIR, *owner)
    for name, encoded in values.items():
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise RequestError("bad_args", "bad secret name")
        path = os.path.join(SECRETS_DIR, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            os.fchown(handle.fileno(), *owner)
            handle.write(base64.b64decode(str(encoded), validate=True))
    return {"names": sorted(values)}


def _argv(args: dict[str, Any]) -> list[str]:
    shell, argv = args.get("shell"), args.get("argv")
    if isinstance(shell, str) and shell:
        return ["/bin/sh", "-c", shell]
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        return argv
    raise RequestError("bad_args", "needs a non-empty argv list or a shell string")


def _cwd(args: dict[str, Any]) -> str:
    cwd = scoped(args.get("cwd") or ".")
    if not os.path.isdir(cwd):
        raise RequestError("bad_cwd", f"{cwd} is not a directory")
    return cwd


def spawn(
    argv: list[str], cwd: str, env: dict[str, str], *, merge_stderr: bool
) -> subprocess.Popen[bytes]:
    """Start a command in its own session (so its whole group can be killed)."""
    try:
        user: dict[str, Any] = {}
        if IMAGE_USER is not None:  # an image's User (otherwise vfork keeps spawns cheap)
            user = {"user": IMAGE_USER[0], "group": IMAGE_USER[1], "extra_groups": []}
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            start_new_session=True,
            **user,
        )
    except OSError as exc:
        raise RequestError("spawn_failed", f"cannot start {argv[0]!r}: {exc.strerror}") from exc


def _kill_group(pid: int, grace: float, reap: Callable[[], Any] | None = None) -> None:
    """TERM the process group, then KILL what is left after ``grace`` seconds.

    ``reap`` collects the group leader once it exits (our own child): a
    zombie still counts as a member, so without it the group would look
    alive for the whole grace period.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except OSError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if reap is not None:
                reap()
            try:
                os.killpg(pid, 0)
            except OSError:
                return
            time.sleep(0.02)


# ----------------------------------------------------------------- services


class Service:
    def __init__(self, name: str, process: subprocess.Popen[bytes], log_path: str) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path
        self.state = "starting"
        self.reason = ""
        self.started_at = time.time()
        self.ready_at: float | None = None

    def describe(self) -> dict[str, Any]:
        code = self.process.poll()
        if code is not None and self.state in ("starting", "ready"):
            self.state = "exited"
        return {
            "name": self.name,
            "state": self.state,
            "pid": self.process.pid,
            "exit_code": (128 - code if code < 0 else code) if code is not None else None,
            "reason": self.reason,
            "started_at": self.started_at,
            "ready_at": self.ready_at,
        }


SERVICES: dict[str, Service] = {}


def op_service_start(args: dict[str, Any]) -> dict[str, Any]:
    name = args.get("name")
    if not isinstance(name, str) or not name or "/" in name or len(name) > 64:
        raise RequestError("bad_args", "service name must be 1-64 characters without '/'")
    argv, cwd, env = _argv(args), _cwd(args), _env(args)
    with _lock:
        existing = SERVICES.get(name)
        if existing is not None and existing.describe()["state"] in ("starting", "ready"):
            raise RequestError(
                "service_exists", f"service {name!r} is already running; stop it first"
            )
        if len([s for s in SERVICES.values() if s.process.poll() is None]) >= MAX_SERVICES:
            raise RequestError("too_many", f"at most {MAX_SERVICES} services may run at once")
        os.makedirs(SERVICE_LOG_DIR, exist_ok=True)
        log_path = os.path.join(SERVICE_LOG_DIR, f"{name}.log")
        process = spawn(argv, cwd, env, merge_stderr=True)
        service = Service(name, process, log_path)
        SERVICES[name] = service
    open(log_path, "wb").close()
    threading.Thread(target=_pump_log, args=(service,), daemon=True).start()
    _await_ready(service, args.get("readiness") or {}, cwd, env)
    return service.describe()


def _pump_log(service: Service) -> None:
    """Copy the service's output to its log, keeping the newest part when it grows."""
    assert service.process.stdout is not None
    fd = service.process.stdout.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        with open(service.log_path, "ab") as log:
            log.write(chunk)
            size = log.tell()
        if size > SERVICE_LOG_MAX_BYTES:
            with open(service.log_path, "rb") as log:
                log.seek(size - SERVICE_LOG_MAX_BYTES // 2)
                tail = log.read()
            with open(service.log_path, "wb") as log:
                log.write(b"[older output dropped]\n" + tail)


def _await_ready(
    service: Service, readiness: dict[str, Any], cwd: str, env: dict[str, str]
) -> None:
    kind = readiness.get("type")
    if not kind:
        service.state = "ready"
        service.ready_at = time.time()
        return
    target = readiness.get("target")
    timeout = float(readiness.get("timeout_seconds") or 60)
    interval = max(0.05, float(readiness.get("interval_seconds") or 0.2))
    check = _CHECKS.get(str(kind))
    if check is None or not isinstance(target, str) or not target:
        _stop(service)
        raise RequestError(
            "bad_args", "readiness needs a type (file|tcp|http|command) and a target"
        )
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            service.state = "exited"
            service.reason = "exited before it was ready"
            return
        try:
            if check(target, cwd, env):
                service.state = "ready"
                service.ready_at = time.time()
                return
        except Exception as exc:  # a failing probe is information, not a crash
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(interval)
    _stop(service)
    service.state = "failed"
    service.reason = f"not ready after {timeout:g} s ({kind} {target})" + (
        f"; last check: {last_error}" if last_error else ""
    )


def _file_ready(target: str, cwd: str, env: dict[str, str]) -> bool:
    return os.path.exists(os.path.join(cwd, target))


def _tcp_ready(target: str, cwd: str, env: dict[str, str]) -> bool:
    host, _, port = target.rpartition(":")
    with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1):
        return True


def _http_ready(target: str, cwd: str, env: dict[str, str]) -> bool:
    with urllib.request.urlopen(target, timeout=2) as response:
        return 200 <= int(response.status) < 400


def _command_ready(target: str, cwd: str, env: dict[str, str]) -> bool:
    return (
        subprocess.run(
            ["/bin/sh", "-c", target],
            cwd=cwd,
            env=env,
            capture_output=True,
            timeout=30,
            check=False,
        ).returncode
        == 0
    )


_CHECKS = {"file": _file_ready, "tcp": _tcp_ready, "http": _http_ready, "command": _command_ready}


def _service(args: dict[str, Any]) -> Service:
    service = SERVICES.get(str(args.get("name")))
    if service is None:
        raise RequestError("no_such", f"no service {args.get('name')!r}; see service list")
    return service


def _stop(service: Service) -> None:
    if service.process.poll() is None:
        _kill_group(service.process.pid, 5.0, service.process.poll)
        service.process.wait()


def op_service_list(args: dict[str, Any]) -> dict[str, Any]:
    return {"services": [s.describe() for s in SERVICES.values()]}


def op_service_status(args: dict[str, Any]) -> dict[str, Any]:
    return _service(args).describe()


def op_service_stop(args: dict[str, Any]) -> dict[str, Any]:
    service = _service(args)
    _stop(service)
    if service.state in ("starting", "ready", "exited"):
        service.state = "stopped"
    return service.describe()


def op_service_logs(args: dict[str, Any]) -> dict[str, Any]:
    service = _service(args)
    max_bytes = int(args.get("max_bytes") or 256 * 1024)
    with open(service.log_path, "rb") as log:
        data = log.read()
    tail_lines = args.get("tail_lines")
    if isinstance(tail_lines, int) and tail_lines >= 0:
        data = b"".join(data.splitlines(keepends=True)[-tail_lines:]) if tail_lines else b""
    truncated = len(data) > max_bytes
    return {
        "name": service.name,
        "log": base64.b64encode(data[-max_bytes:]).decode("ascii"),
        "truncated": truncated,
    }


# ------------------------------------------------------------------- shells


class Shell:
    def __init__(self, shell_id: str, pid: int, fd: int) -> None:
        self.shell_id = shell_id
        self.pid = pid
        self.fd = fd
        self.ring = bytearray()
        self.start = 0  # cursor of ring[0]
        self.end = 0  # cursor after the last byte
        self.closed = False
        self.exit_code: int | None = None
        self.changed = threading.Condition()
        self.last_output = time.monotonic()

    def append(self, data: bytes) -> None:
        with self.changed:
            self.ring += data
            self.end += len(data)
            overflow = len(self.ring) - SHELL_RING_BYTES
            if overflow > 0:
                del self.ring[:overflow]
                self.start += overflow
            self.last_output = time.monotonic()
            self.changed.notify_all()

    def describe(self) -> dict[str, Any]:
        return {
            "shell_id": self.shell_id,
            "pid": self.pid,
            "closed": self.closed,
            "exit_code": self.exit_code,
            "cursor": self.end,
        }


SHELLS: dict[str, Shell] = {}


def op_shell_open(args: dict[str, Any]) -> dict[str, Any]:
    cwd, env = _cwd(args), _env(args)
    env.setdefault("TERM", "xterm-256color")
    cols, rows = int(args.get("cols") or 120), int(args.get("rows") or 40)
    with _lock:
        if len([s for s in SHELLS.values() if not s.closed]) >= MAX_SHELLS:
            raise RequestError("too_many", f"at most {MAX_SHELLS} shells may be open at once")
        pid, fd = pty.fork()
        if pid == 0:  # the child: a login-less interactive bash in the workspace
            try:
                _drop_to_image_user()
                os.chdir(cwd)
                if os.path.exists("/bin/bash"):
                    os.execve("/bin/bash", ["bash", "-i"], env)
                os.execve("/bin/sh", ["sh", "-i"], env)  # an image without bash
            finally:
                os._exit(127)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        shell = Shell(uuid.uuid4().hex[:12], pid, fd)
        SHELLS[shell.shell_id] = shell
    threading.Thread(target=_pump_shell, args=(shell,), daemon=True).start()
    return shell.describe()


def _pump_shell(shell: Shell) -> None:
    while True:
        try:
            data = os.read(shell.fd, 65536)
        except OSError:
            data = b""
        if not data:
            break
        shell.append(data)
    try:
        _, status = os.waitpid(shell.pid, 0)
        shell.exit_code = os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        pass
    with shell.changed:
        shell.closed = True
        shell.changed.notify_all()


def _shell(args: dict[str, Any]) -> Shell:
    shell = SHELLS.get(str(args.get("shell_id")))
    if shell is None:
        raise RequestError("no_such", f"no shell {args.get('shell_id')!r}; see shell list")
    return shell


def op_shell_write(args: dict[str, Any]) -> dict[str, Any]:
    shell = _shell(args)
    if shell.closed:
        raise RequestError("shell_closed", f"shell {shell.shell_id} is closed")
    data = str(args.get("input", "")).encode("utf-8")
    if args.get("newline", True):
        data += b"\n"
    os.write(shell.fd, data)
    return {"shell_id": shell.shell_id, "bytes": len(data)}


def op_shell_read(args: dict[str, Any]) -> dict[str, Any]:
    """Output from ``cursor``; with wait_for_idle_ms, once output was quiet that long."""
    shell = _shell(args)
    idle = float(args.get("wait_for_idle_ms") or 0) / 1000
    max_wait = float(args.get("max_wait_ms") or 10000) / 1000
    max_bytes = int(args.get("max_bytes") or 64 * 1024)
    deadline = time.monotonic() + max_wait
    if idle:
        with shell.changed:
            while not shell.closed:
                quiet_for = time.monotonic() - shell.last_output
                left = deadline - time.monotonic()
                if quiet_for >= idle or left <= 0:
                    break
                shell.changed.wait(min(idle - quiet_for, left))
    with shell.changed:
        cursor = args.get("cursor")
        cursor = shell.start if cursor is None else int(cursor)
        missed = max(0, shell.start - cursor)
        cursor = min(max(cursor, shell.start), shell.end)
        offset = cursor - shell.start
        data = bytes(shell.ring[offset : offset + max_bytes])
        next_cursor = cursor + len(data)
        return {
            "shell_id": shell.shell_id,
            "output": base64.b64encode(data).decode("ascii"),
            "cursor": cursor,
            "next_cursor": next_cursor,
            "missed_bytes": missed,
            "more": next_cursor < shell.end,
            "closed": shell.closed and next_cursor >= shell.end,
            "exit_code": shell.exit_code,
        }


def op_shell_signal(args: dict[str, Any]) -> dict[str, Any]:
    shell = _shell(args)
    name = str(args.get("signal", "INT")).upper().removeprefix("SIG")
    if name not in SIGNALS:
        raise RequestError("bad_args", f"signal must be one of {', '.join(SIGNALS)}")
    if shell.closed:
        raise RequestError("shell_closed", f"shell {shell.shell_id} is closed")
    # Deliver to the foreground process group of the terminal, like a keypress would.
    try:
        group = os.tcgetpgrp(shell.fd)
    except OSError:
        group = shell.pid
    os.killpg(group, SIGNALS[name])
    return {"shell_id": shell.shell_id, "signal": name}


def op_shell_close(args: dict[str, Any]) -> dict[str, Any]:
    shell = _shell(args)
    if not shell.closed:
        _kill_group(shell.pid, 2.0)
        os.close(shell.fd)
    SHELLS.pop(shell.shell_id, None)
    return {"shell_id": shell.shell_id, "closed": True}


def op_shell_list(args: dict[str, Any]) -> dict[str, Any]:
    return {"shells": [s.describe() for s in SHELLS.values()]}


OPERATIONS = {
    "secrets_put": op_secrets_put,
    "service_start": op_service_start,
    "service_list": op_service_list,
    "service_status": op_service_status,
    "service_stop": op_service_stop,
    "service_logs": op_service_logs,
    "shell_open": op_shell_open,
    "shell_write": op_shell_write,
    "shell_read": op_shell_read,
    "shell_signal": op_shell_signal,
    "shell_close": op_shell_close,
    "shell_list": op_shell_list,
}
