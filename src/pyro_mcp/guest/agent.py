"""The pyro guest agent: the only program the host talks to inside the VM.

It runs as the last step of the guest's init, reads framed requests from the
``org.pyro.agent`` virtio-serial port and answers them. Requests carry ids so
several can be in flight; each runs on its own thread and replies when done.

Standard library only: this file and ``protocol.py`` are copied into the
guest's initramfs and run with the guest's ``python3``.

Operations (v1):
    hello   host nonce, clock, entropy, name, machine id and disks to mount in;
            agent facts out (after every boot and every warm restore)
    ping    liveness
    info    kernel, hostname, Python, OS release
    exec    argv or shell string, env, cwd, timeout, output bound
    sync    flush filesystems (before the host stops the VM)
    workspace_check
            is /workspace writable; if its filesystem stopped after write
            errors, mount it again (the host asks before commands that write)
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

try:
    from pyro_mcp.agent import protocol
    from pyro_mcp.guest import changes, fileops, processes
except ImportError:  # inside the guest, these files sit beside this one
    import changes  # type: ignore[import-not-found,no-redef]
    import fileops  # type: ignore[import-not-found,no-redef]
    import processes  # type: ignore[import-not-found,no-redef]
    import protocol  # type: ignore[import-not-found,no-redef]

RequestError = fileops.RequestError

AGENT_VERSION = "1"

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "SHELL": "/bin/sh",
    "LANG": "C.UTF-8",
}
processes.BASE_ENV = BASE_ENV  # one environment for commands, services and shells

# After the command exits, background children may keep its pipes open. Read
# what is already there, then stop instead of waiting for them.
DRAIN_AFTER_EXIT_SECONDS = 0.05


class Agent:
    """Serves requests arriving through ``read`` and answers through ``write``.

    ``read`` returns bytes, ``b""`` when the host is not connected (the agent
    then waits and tries again) and raises ``EOFError`` to stop serving.
    """

    def __init__(self, read: Callable[[], bytes], write: Callable[[bytes], None]) -> None:
        self._read = read
        self._write = write
        self._write_lock = threading.Lock()
        self._decoder = protocol.FrameDecoder()

    def send(self, message: dict[str, Any]) -> None:
        frame = protocol.encode_frame(message)
        with self._write_lock:
            self._write(frame)

    def serve(self) -> None:
        self.send({"event": "ready", "version": AGENT_VERSION})
        while True:
            try:
                data = self._read()
            except EOFError:
                return
            if not data:
                # Host side disconnected: the port reports EOF until it is back.
                time.sleep(0.05)
                continue
            for message in self._decoder.feed(data):
                threading.Thread(target=self._handle, args=(message,), daemon=True).start()

    def _handle(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        op = message.get("op")
        handler = OPERATIONS.get(op) if isinstance(op, str) else None
        try:
            if handler is None:
                raise RequestError("unknown_op", f"unknown operation {op!r}")
            args = message.get("args") or {}
            if not isinstance(args, dict):
                raise RequestError("bad_args", "args must be an object")
            result = _with_workspace_check(handler, args)
            reply: dict[str, Any] = {"id": request_id, "ok": True, "result": result}
        except RequestError as exc:
            reply = {
                "id": request_id,
                "ok": False,
                "error": {"kind": exc.kind, "message": str(exc)},
            }
        except Exception as exc:  # the agent must answer, never die on a request
            reply = {
                "id": request_id,
                "ok": False,
                "error": {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"},
            }
        with contextlib.suppress(OSError):
            self.send(reply)


def _with_workspace_check(
    handler: Callable[[dict[str, Any]], dict[str, Any]], args: dict[str, Any]
) -> dict[str, Any]:
    """``check_workspace`` on any request: the /workspace check comes first, in
    the same round trip, and its outcome is the reply's ``workspace``; a
    /workspace that stays read-only is answered ``ran: false``, the request
    itself not carried out."""
    if not args.get("check_workspace"):
        return handler(args)
    checked = op_workspace_check({})
    if checked["state"] == "read_only":
        return {"ran": False, "workspace": checked}
    return {**handler(args), "workspace": checked}


# ---------------------------------------------------------------- operations


def op_hello(args: dict[str, Any]) -> dict[str, Any]:
    """Make this boot (or this restore of a warm snapshot) its own; answer with facts.

    Every guest restored from one memory snapshot starts with the same clock,
    random generator state, hostname and machine id. The host's hello fixes
    each: the wall clock, fresh entropy credited and a forced reseed of the
    kernel's generator (writing to /dev/urandom alone mixes the pool but does
    not reseed it), the name and the machine id. Then it mounts /workspace and
    the baseline, which are never mounted in a snapshot. With ``egress``, it
    points the guest's clients at the egress proxy (see ``op_egress``).
    """
    time_ns = args.get("time_ns")
    if isinstance(time_ns, int) and _is_guest():
        with contextlib.suppress(OSError):
            time.clock_settime(time.CLOCK_REALTIME, time_ns / 1e9)
    entropy = args.get("entropy")
    if isinstance(entropy, str) and _is_guest():
        with contextlib.suppress(OSError, ValueError):
            _reseed(base64.b64decode(entropy))
    hostname = args.get("hostname")
    if isinstance(hostname, str) and _HOSTNAME.match(hostname) and _is_guest():
        socket.sethostname(hostname)
        _write_file("/run/pyro/hostname", hostname + "\n")  # /etc/hostname links here
    machine_id = args.get("machine_id")
    if isinstance(machine_id, str) and _MACHINE_ID.match(machine_id) and _is_guest():
        _write_file("/run/pyro/machine-id", machine_id + "\n")  # /etc/machine-id too
    mounts = args.get("mounts") or {}
    if not isinstance(mounts, dict):
        raise RequestError("bad_args", "mounts must be an object")
    mounted = []
    for name, (serial, target, options) in MOUNTS.items():
        if mounts.get(name) and _is_guest():
            if _mount_disk(serial, target, options) and name == "workspace":
                # From now on every change is on record; ``fresh``: the disk was
                # just made from the baseline, so the record is whole.
                changes.TRACKER.start(fresh=bool(args.get("fresh_workspace")))
            mounted.append(target)
    egress = args.get("egress")
    if isinstance(egress, dict) and _is_guest():
        op_egress(egress)  # in the hello: no round trip more on the boot path
    return {"nonce": args.get("nonce"), "mounted": mounted, **op_info({})}


_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")

# linux/random.h: RNDADDENTROPY _IOW('R', 0x03, int[2]); RNDRESEEDCRNG _IO('R', 0x07).
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
# linux/fs.h: BLKFLSBUF _IO(0x12, 97).
BLKFLSBUF = 0x1261

# What the hello may mount: the disk's virtio serial, where, and how.
MOUNTS = {
    "workspace": ("pyro-workspace", "/workspace", "rw,noatime,discard"),
    "baseline": ("pyro-baseline", "/run/pyro/baseline", "ro,noload"),
}
DISK_WAIT_SECONDS = 20.0


def _reseed(data: bytes) -> None:
    """Credit ``data`` as entropy and force the kernel's generator to reseed now."""

    if not data:
        return
    padded = data + b"\0" * (-len(data) % 4)
    request = struct.pack("ii", len(data) * 8, len(padded)) + padded
    fd = os.open("/dev/urandom", os.O_WRONLY)
    try:
        fcntl.ioctl(fd, RNDADDENTROPY, request)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)


def _write_file(path: str, text: str) -> None:
    with contextlib.suppress(OSError):
        with open(path + ".pyro-tmp", "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(path + ".pyro-tmp", path)


def _find_disk(serial: str) -> str:
    """The /dev path of the virtio disk with this serial (no udev in the guest)."""
    deadline = time.monotonic() + DISK_WAIT_SECONDS
    while True:
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir("/sys/block")):
                try:
                    with open(f"/sys/block/{name}/serial", encoding="utf-8") as handle:
                        if handle.read().strip() == serial:
                            return f"/dev/{name}"
                except OSError:
                    continue
        if time.monotonic() > deadline:
            raise RequestError("no_disk", f"no disk with serial {serial} in the guest")
        time.sleep(0.01)


def _mount_disk(serial: str, target: str, options: str) -> bool:
    """Mount the disk with this serial on ``target``; False if it already was."""
    device = _find_disk(serial)
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as handle:
        if any(line.split()[1] == target for line in handle if len(line.split()) > 1):
            return False  # already mounted (a second hello on the same boot)
    # A restored guest still caches blocks it read from the disk that was attached
    # when the snapshot was taken (the partition scan); drop them first.
    fd = os.open(device, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, BLKFLSBUF, 0)
    finally:
        os.close(fd)
    os.makedirs(target, exist_ok=True)
    words = options.split(",")
    flags = MS_NOATIME | (MS_RDONLY if "ro" in words else 0)
    data = ",".join(w for w in words if w in ("noload", "discard")).encode() or None
    if _libc().mount(device.encode(), target.encode(), b"ext4", flags, data) != 0:
        error = ctypes.get_errno()
        raise RequestError(
            "mount_failed", f"cannot mount {device} on {target}: {os.strerror(error)}"
        )
    return True


# sys/mount.h
MS_RDONLY = 1
MS_NOATIME = 1024


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    """libc, loaded once (in a warm snapshot, already loaded in every restored guest).

    mount(2) directly: spawning mount(8) costs a process start, which under
    TCG is a large share of a warm start.
    """
    return ctypes.CDLL(None, use_errno=True)


def op_ping(args: dict[str, Any]) -> dict[str, Any]:
    return {"pong": True}


def op_info(args: dict[str, Any]) -> dict[str, Any]:
    os_release = ""
    try:
        with open("/etc/os-release", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    os_release = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return {
        "agent_version": AGENT_VERSION,
        "kernel": platform.release(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "os": os_release,
    }


SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HOST_CA_COPY = "/usr/local/share/ca-certificates/pyro-host-bundle.crt"
CA_ENV = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
)


def op_trust_ca(args: dict[str, Any]) -> dict[str, Any]:
    """Add the host's CA bundle to the system trust store; point TLS clients at it."""
    bundle = _pem_arg(args, "bundle")
    _write_bytes(HOST_CA_COPY, bundle)
    return _rebuild_trust()


def _pem_arg(args: dict[str, Any], name: str) -> bytes:
    try:
        pem = base64.b64decode(str(args.get(name, "")), validate=True)
    except ValueError as exc:
        raise RequestError("bad_args", f"{name} is not base64") from exc
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise RequestError("bad_args", f"{name} holds no PEM certificate")
    return pem


def _write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".pyro-tmp", "wb") as handle:
        handle.write(data)
    os.replace(path + ".pyro-tmp", path)


def _rebuild_trust() -> dict[str, Any]:
    """The system bundle: the image's own, then the host's CAs, then the egress CA."""
    original = b""
    if os.path.exists(SYSTEM_CA_BUNDLE + ".pyro-orig"):
        with open(SYSTEM_CA_BUNDLE + ".pyro-orig", "rb") as handle:
            original = handle.read()
    elif os.path.exists(SYSTEM_CA_BUNDLE):
        with open(SYSTEM_CA_BUNDLE, "rb") as handle:
            original = handle.read()
        _write_bytes(SYSTEM_CA_BUNDLE + ".pyro-orig", original)
    parts = [original.rstrip(b"\n")]
    for path in (HOST_CA_COPY, EGRESS_CA_COPY):
        if os.path.exists(path):
            with open(path, "rb") as handle:
                parts.append(handle.read().rstrip(b"\n"))
    _write_bytes(SYSTEM_CA_BUNDLE, b"\n".join(parts) + b"\n")
    for name in CA_ENV:
        BASE_ENV[name] = SYSTEM_CA_BUNDLE
    return {"path": SYSTEM_CA_BUNDLE, "env": list(CA_ENV)}


EGRESS_CA_COPY = "/usr/local/share/ca-certificates/pyro-egress-ca.crt"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
NO_PROXY = "localhost,127.0.0.1,::1"
CONNECT_HELPER = "/usr/local/bin/pyro-connect"
# ssh (and so git over ssh) reaches hosts through the proxy with CONNECT.
CONNECT_HELPER_SOURCE = r"""#!/usr/bin/python3
# pyro-connect HOST PORT: a byte pipe to HOST:PORT through pyro's egress proxy
# (ssh's ProxyCommand; the guest has no other way out).
import os, select, socket, sys

host, port = sys.argv[1], sys.argv[2]
proxy = os.environ.get("PYRO_EGRESS_PROXY", "http://10.0.2.100:3128")
address, _, proxy_port = proxy.rstrip("/").rpartition("/")[2].rpartition(":")
s = socket.create_connection((address, int(proxy_port)), timeout=30)
s.sendall(("CONNECT %s:%s HTTP/1.1\r\nHost: %s:%s\r\n\r\n" % (host, port, host, port)).encode())
head = b""
while b"\r\n\r\n" not in head and len(head) < 65536:
    data = s.recv(4096)
    if not data:
        break
    head += data
status, _, rest = head.partition(b"\r\n\r\n")
first = status.split(b"\r\n")[0]
if first.split(b" ")[1:2] != [b"200"]:
    sys.stderr.write("pyro-connect: " + first.decode(errors="replace") + "\n")
    sys.stderr.write(rest.decode(errors="replace"))
    sys.exit(1)
s.settimeout(None)
if rest:
    os.write(1, rest)
reading = True
while True:
    ready, _, _ = select.select([s, 0] if reading else [s], [], [])
    if s in ready:
        data = s.recv(65536)
        if not data:
            break
        os.write(1, data)
    if reading and 0 in ready:
        data = os.read(0, 65536)
        if data:
            s.sendall(data)
        else:
            reading = False
            s.shutdown(socket.SHUT_WR)
"""


def op_egress(args: dict[str, Any]) -> dict[str, Any]:
    """Send every client through the host's egress proxy; trust the workspace's CA.

    The guest's network reaches only the proxy, so DNS points at nothing: a
    lookup fails at once rather than after resolver timeouts.
    """
    proxy = str(args.get("proxy", ""))
    if not proxy.startswith("http://") or any(c.isspace() for c in proxy) or '"' in proxy:
        raise RequestError("bad_args", "proxy must be an http:// URL")
    for name in PROXY_VARIABLES:
        BASE_ENV[name] = proxy
    BASE_ENV["no_proxy"] = BASE_ENV["NO_PROXY"] = NO_PROXY
    BASE_ENV["PYRO_EGRESS_PROXY"] = proxy
    # Node 24+ reads the proxy variables for fetch() when asked to.
    BASE_ENV["NODE_USE_ENV_PROXY"] = "1"
    _write_file(
        "/etc/apt/apt.conf.d/80pyro-egress",
        f'Acquire::http::Proxy "{proxy}";\nAcquire::https::Proxy "{proxy}";\n',
    )
    _write_file(
        "/etc/environment",
        "".join(
            f"{name}={BASE_ENV[name]}\n" for name in (*PROXY_VARIABLES, "no_proxy", "NO_PROXY")
        ),
    )
    _write_file("/etc/resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    os.makedirs(os.path.dirname(CONNECT_HELPER), exist_ok=True)
    _write_file(CONNECT_HELPER, CONNECT_HELPER_SOURCE)
    with contextlib.suppress(OSError):
        os.chmod(CONNECT_HELPER, 0o755)
    with contextlib.suppress(OSError):
        os.makedirs("/etc/ssh/ssh_config.d", exist_ok=True)
        _write_file(
            "/etc/ssh/ssh_config.d/pyro-egress.conf",
            f"Host *\n    ProxyCommand {CONNECT_HELPER} %h %p\n",
        )
    trusted = None
    if args.get("ca"):
        _write_bytes(EGRESS_CA_COPY, _pem_arg(args, "ca"))
        trusted = _rebuild_trust()["path"]
    return {"proxy": proxy, "trusted": trusted}


def op_package_index(args: dict[str, Any]) -> dict[str, Any]:
    """Use the host's package index settings: pip.conf, npm's registry, index variables."""
    written = []
    pip_conf = args.get("pip_conf")
    if isinstance(pip_conf, str) and pip_conf:
        _write_file("/etc/pip.conf", pip_conf)
        written.append("/etc/pip.conf")
    registry = args.get("npm_registry")
    if isinstance(registry, str) and registry and "\n" not in registry:
        _write_file("/root/.npmrc", f"registry={registry}\n")
        written.append("/root/.npmrc")
    env = args.get("env") or {}
    if not isinstance(env, dict):
        raise RequestError("bad_args", "env must map names to strings")
    for name, value in env.items():
        if name in protocol.PACKAGE_VARIABLES and isinstance(value, str) and "\n" not in value:
            BASE_ENV[name] = value
    return {"written": written, "env": sorted(n for n in env if n in protocol.PACKAGE_VARIABLES)}


# linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int)
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


def op_freeze(args: dict[str, Any]) -> dict[str, Any]:
    """Flush and freeze /workspace (writes block until thawed), or thaw it."""
    fd = os.open("/workspace", os.O_RDONLY)
    try:
        if args.get("freeze"):
            os.sync()
            fcntl.ioctl(fd, FIFREEZE, 0)
        else:
            with contextlib.suppress(OSError):  # not frozen
                fcntl.ioctl(fd, FITHAW, 0)
    finally:
        os.close(fd)
    return {"frozen": bool(args.get("freeze"))}


WORKSPACE = "/workspace"
# linux/fs.h: FITRIM _IOWR('X', 121, struct fstrim_range).
FITRIM = 0xC0185879


def op_workspace_check(args: dict[str, Any]) -> dict[str, Any]:
    """Is /workspace writable? If its ext4 stopped after write errors, mount it again.

    When the host's disk fills, the guest's writes fail with I/O errors. Most
    land on file data and are reported to the writer; when one lands on the
    journal, ext4 aborts it and turns the whole filesystem read-only, and no
    later write (not even ``rm``) works until it is mounted again, which
    replays the journal. The host asks before commands that write.
    """
    if not _is_guest() or not os.path.ismount(WORKSPACE):
        return {"state": "ok"}
    problem = _workspace_problem()
    if problem is None:
        return {"state": "ok"}
    try:
        _remount_workspace()
    except RequestError as exc:
        return {"state": "read_only", "message": f"{problem}; {exc}"}
    again = _workspace_problem()
    if again is not None:
        return {"state": "read_only", "message": f"{again} (after mounting it again)"}
    # Blocks written before the journal stopped may be free in ext4 now but
    # still held on the host's disk: discard every free block.
    _trim_workspace()
    return {"state": "repaired", "message": problem}


def op_trim(args: dict[str, Any]) -> dict[str, Any]:
    """Discard every free block of /workspace (the host asks when its disk is low)."""
    if not _is_guest() or not os.path.ismount(WORKSPACE):
        return {"trimmed": 0}
    return {"trimmed": _trim_workspace()}


def _trim_workspace() -> int:
    """FITRIM /workspace; the bytes the kernel discarded (0 if it could not)."""
    with contextlib.suppress(OSError):
        fd = os.open(WORKSPACE, os.O_RDONLY)
        try:
            result = fcntl.ioctl(fd, FITRIM, struct.pack("QQQ", 0, 2**64 - 1, 0))
        finally:
            os.close(fd)
        return int(struct.unpack("QQQ", result)[1])
    return 0


def _workspace_problem() -> str | None:
    """Why /workspace cannot take a write, or None; creates no visible file."""
    try:
        fd = os.open(WORKSPACE, os.O_TMPFILE | os.O_WRONLY, 0o600)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return "/workspace is read-only: its filesystem stopped after write errors"
        if exc.errno == errno.EIO:
            return "/workspace fails every write: its filesystem shut down after I/O errors"
        return None  # full (ENOSPC) or out of inodes: writable once room is made
    os.close(fd)
    return None


def _remount_workspace() -> None:
    """Unmount /workspace and mount it again (ext4 replays its journal on mount)."""
    changes.TRACKER.stop()  # the next diff walks everything and watches anew
    if _libc().umount2(WORKSPACE.encode(), 0) != 0:
        error = ctypes.get_errno()
        if error == errno.EBUSY:
            raise RequestError(
                "busy",
                "it cannot be mounted again while a service, shell or command still "
                "uses it: stop them, or stop and start the workspace",
            )
        raise RequestError("umount_failed", f"cannot unmount it: {os.strerror(error)}")
    serial, target, options = MOUNTS["workspace"]
    try:
        _mount_disk(serial, target, options)
    except RequestError as exc:
        # Keep the files readable (and the empty mount point hidden).
        with contextlib.suppress(RequestError):
            _mount_disk(serial, target, "ro,noload")
        raise RequestError(
            "mount_failed", f"{exc}; it is mounted read-only until there is room on the host"
        ) from exc


def op_sync(args: dict[str, Any]) -> dict[str, Any]:
    """Flush every filesystem; with ``freeze``, also freeze those mount points.

    The host asks for ``freeze: ["/workspace"]`` right before it stops the VM:
    a frozen ext4 has its journal flushed and is marked clean on disk, so the
    stopped workspace's disk is whole for offline tools and the next mount.
    """
    os.sync()
    frozen = []
    for path in args.get("freeze") or []:
        if isinstance(path, str) and os.path.ismount(path):
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.ioctl(fd, FIFREEZE, 0)
                frozen.append(path)
            except OSError:
                pass
            finally:
                os.close(fd)
    return {"frozen": frozen}


def op_exec(args: dict[str, Any]) -> dict[str, Any]:
    argv = _command_argv(args)
    env = dict(BASE_ENV)
    extra_env = args.get("env") or {}
    if not isinstance(extra_env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra_env.items()
    ):
        raise RequestError("bad_args", "env must map names to strings")
    env.update(extra_env)
    env.update(processes.secret_environment(args))
    cwd = args.get("cwd") or "/root"
    if not isinstance(cwd, str) or not os.path.isdir(cwd):
        raise RequestError("bad_cwd", f"working directory {cwd!r} does not exist in the guest")
    timeout = float(args.get("timeout_seconds") or 30)
    limit = int(args.get("max_output_bytes") or 1024 * 1024)

    argv = _without_shell(argv, env)
    started = time.monotonic()
    process = processes.spawn(argv, cwd, env, merge_stderr=False)
    streams = _collect_output(process, timeout, limit)
    duration_ms = int((time.monotonic() - started) * 1000)
    code = process.returncode
    exit_code = 128 - code if code is not None and code < 0 else code
    return {
        "exit_code": 124 if streams.timed_out else exit_code,
        "stdout": base64.b64encode(streams.kept[0]).decode("ascii"),
        "stderr": base64.b64encode(streams.kept[1]).decode("ascii"),
        "stdout_bytes": streams.total[0],
        "stderr_bytes": streams.total[1],
        "timed_out": streams.timed_out,
        "duration_ms": duration_ms,
    }


class _Output:
    def __init__(self) -> None:
        self.kept = [bytearray(), bytearray()]
        self.total = [0, 0]
        self.timed_out = False


def _collect_output(process: subprocess.Popen[bytes], timeout: float, limit: int) -> _Output:
    """Read both pipes until the process ends, keeping at most ``limit`` each."""
    out = _Output()
    deadline = time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    assert process.stdout is not None and process.stderr is not None
    selector.register(process.stdout, selectors.EVENT_READ, 0)
    selector.register(process.stderr, selectors.EVENT_READ, 1)
    exited_at: float | None = None
    while selector.get_map():
        now = time.monotonic()
        if exited_at is None and process.poll() is not None:
            exited_at = now
        if exited_at is not None:
            wait = exited_at + DRAIN_AFTER_EXIT_SECONDS - now
            if wait <= 0:
                break
        else:
            wait = min(deadline - now, 0.1)
            if wait <= 0:
                out.timed_out = True
                _kill_group(process)
                exited_at = time.monotonic()
                continue
        for key, _ in selector.select(wait):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            index = key.data
            out.total[index] += len(chunk)
            room = limit - len(out.kept[index])
            if room > 0:
                out.kept[index] += chunk[:room]
    selector.close()
    process.stdout.close()
    process.stderr.close()
    if process.poll() is None:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            out.timed_out = True
            _kill_group(process)
            process.wait()
    return out


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signal.SIGKILL)


# A shell command made only of plain words (no quoting, expansion, redirection,
# operators or assignments) means the same run without the shell: it saves a
# /bin/sh spawn (~9 ms under TCG) on the commands agents run most.
_PLAIN_COMMAND = re.compile(r"[A-Za-z0-9_./:,+@%-]+(?: +[A-Za-z0-9_./:,+@%=-]+)*")
# Builtins of dash whose binaries behave differently (echo -e, kill %1, ...).
_SHELL_BUILTINS = frozenset({"echo", "printf", "test", "[", "kill", "pwd", "time"})


def _without_shell(argv: list[str], env: dict[str, str]) -> list[str]:
    """``/bin/sh -c WORDS`` as WORDS when the shell adds nothing; else ``argv``."""
    if len(argv) != 3 or argv[:2] != ["/bin/sh", "-c"]:
        return argv
    command = argv[2].strip(" ")
    if not _PLAIN_COMMAND.fullmatch(command):
        return argv
    words = command.split()
    if words[0] in _SHELL_BUILTINS or "/" in words[0]:
        return argv  # a path is looked up in the command's cwd, not ours
    program = shutil.which(words[0], path=env.get("PATH"))
    return [program, *words[1:]] if program else argv


def _command_argv(args: dict[str, Any]) -> list[str]:
    argv = args.get("argv")
    shell = args.get("shell")
    if isinstance(shell, str) and shell:
        return ["/bin/sh", "-c", shell]
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        return argv
    raise RequestError("bad_args", "exec needs a non-empty argv list or a shell string")


def _is_guest() -> bool:
    return os.environ.get("PYRO_GUEST") == "1"


OPERATIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "hello": op_hello,
    "ping": op_ping,
    "info": op_info,
    "sync": op_sync,
    "exec": op_exec,
    "trust_ca": op_trust_ca,
    "package_index": op_package_index,
    "freeze": op_freeze,
    "workspace_check": op_workspace_check,
    "trim": op_trim,
    **fileops.OPERATIONS,
    **processes.OPERATIONS,
}


# ---------------------------------------------------------------- guest entry


def find_port(name: str = protocol.AGENT_PORT_NAME) -> str:
    """The /dev path of the virtio-serial port called ``name`` (no udev here)."""
    base = "/sys/class/virtio-ports"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            entries = sorted(os.listdir(base))
        except OSError:
            entries = []
        for entry in entries:
            try:
                with open(os.path.join(base, entry, "name"), encoding="utf-8") as handle:
                    if handle.read().strip() == name:
                        return os.path.join("/dev", entry)
            except OSError:
                continue
        time.sleep(0.05)
    raise SystemExit(f"pyro-agent: no virtio port named {name}")


def _serve_port(path: str) -> None:
    fd = os.open(path, os.O_RDWR)

    def read() -> bytes:
        try:
            return os.read(fd, 65536)
        except OSError:
            return b""

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    Agent(read, write).serve()


def _reap_forever(agent_pid: int, respawn: Callable[[], int]) -> None:
    """PID 1 duty: reap every orphan; restart the agent if it ever dies."""
    while True:
        try:
            pid, _ = os.wait()
        except ChildProcessError:
            time.sleep(0.1)
            continue
        if pid == agent_pid:
            agent_pid = respawn()


def main() -> None:
    port = find_port()
    _libc()  # loaded before any warm snapshot is taken
    if os.getpid() != 1:
        _serve_port(port)
        return

    def spawn() -> int:
        pid = os.fork()
        if pid == 0:
            try:
                _serve_port(port)
            finally:
                os._exit(1)
        return pid

    _reap_forever(spawn(), spawn)


if __name__ == "__main__":
    main()
