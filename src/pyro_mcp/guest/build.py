"""Running a Dockerfile's steps, in the guest that builds an environment
(standard library only).

That guest is the one that applies image layers (``layers.py``): it boots from
the runtime drive, the root filesystem being built is mounted at /workspace,
and what ``COPY`` brings from the build context sits on /run/pyro/baseline as
tar files the host made. A ``RUN`` step runs chrooted into /workspace, with
/proc, /sys and /dev mounted there for its duration, as the step's user, in
its working directory, with the environment the host sends (plus this
guest's egress proxy settings). Its output is kept in memory, bounded, and
read by the host as it comes (``build_poll``). When it exits, everything it
left running in its session is killed, as a container's end would.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import stat
import subprocess
import threading
import time
from typing import Any

try:
    from pyro_mcp.agent import protocol
    from pyro_mcp.guest import fileops, layers, network, processes
except ImportError:  # inside the guest, beside this file
    import fileops  # type: ignore[import-not-found,no-redef]
    import layers  # type: ignore[import-not-found,no-redef]
    import network  # type: ignore[import-not-found,no-redef]
    import processes  # type: ignore[import-not-found,no-redef]
    import protocol  # type: ignore[import-not-found,no-redef]

RequestError = fileops.RequestError

ROOT = layers.ROOT
MOUNTS = (("proc", "proc", "proc"), ("sysfs", "sys", "sysfs"), ("/dev", "dev", None))
PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy")
OUTPUT_LIMIT = 4 * 2**20  # kept per step; older output is dropped (the host streamed it)
POLL_CHUNK = 256 * 1024
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The CAs a step trusts when the host sent its own (``trust_ca``): the image's
# bundle and the host's. It lives on this guest's /dev, which is bind-mounted
# into the root being built, so steps read it and the image never holds it.
BUILD_CA = "/dev/.pyro-build-ca.pem"
IMAGE_CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"

_lock = threading.Lock()
_steps: dict[str, _Step] = {}


class _Step:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.output = bytearray()
        self.dropped = 0  # bytes let go from the front of ``output``
        self.exit_code: int | None = None
        self.done = threading.Event()


def _user(spec: Any) -> tuple[int, int, str]:
    """``USER`` (``name``, ``uid``, ``name:group``, ``uid:gid``) against the
    root being built: (uid, gid, home)."""
    if not spec:
        return 0, 0, "/root"
    if not isinstance(spec, str):
        raise RequestError("bad_args", "user must be a string")
    uid, gid, _name, home = processes._resolve_user(spec, ROOT)
    return uid, gid, home


MS_BIND, MS_REC, MNT_DETACH = 4096, 16384, 2


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def _mount_system() -> None:
    """/proc, /sys and /dev inside the root being built (the runtime has no mount(8))."""
    libc = _libc()
    for source, target, kind in MOUNTS:
        path = os.path.join(ROOT, target)
        os.makedirs(path, exist_ok=True)
        if os.path.ismount(path):
            continue
        flags = MS_BIND | MS_REC if kind is None else 0
        fstype = (kind or "").encode() or None
        if libc.mount(source.encode(), path.encode(), fstype, flags, None) != 0:
            error = ctypes.get_errno()
            raise RequestError("mount_failed", f"cannot mount {target}: {os.strerror(error)}")


def _unmount_system() -> None:
    libc = _libc()
    for _source, target, _kind in reversed(MOUNTS):
        path = os.path.join(ROOT, target)
        if os.path.ismount(path):
            libc.umount2(path.encode(), MNT_DETACH)


def op_build_run(args: dict[str, Any]) -> dict[str, Any]:
    """Start one ``RUN`` step: ``argv``, ``env`` (a name-to-value map), ``user``,
    ``workdir`` (absolute, inside the root; made when missing)."""
    argv = args.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise RequestError("bad_args", "argv must be a non-empty list of strings")
    env = args.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in v
        for k, v in env.items()
    ):
        raise RequestError("bad_args", "env must map names to strings")
    workdir = args.get("workdir") or "/"
    if not isinstance(workdir, str) or not workdir.startswith("/") or "\0" in workdir:
        raise RequestError("bad_args", "workdir must be an absolute path")
    uid, gid, home = _user(args.get("user"))
    full_env = {"PATH": DEFAULT_PATH, "HOME": home}
    carried = (*PROXY_NAMES, *protocol.PACKAGE_VARIABLES)
    full_env.update(
        {name: processes.BASE_ENV[name] for name in carried if name in processes.BASE_ENV}
    )
    if os.path.exists(network.HOST_CA_COPY):
        _write_build_ca()
        full_env.update({name: BUILD_CA for name in network.CA_ENV})
    full_env.update(env)  # the Dockerfile's own ENV and ARG win
    with _lock:
        if any(step.exit_code is None for step in _steps.values()):
            raise RequestError("busy", "a step is still running")
        _steps.clear()
    _mount_system()
    inside = layers._inside(workdir) if workdir != "/" else ROOT
    try:
        os.makedirs(inside, exist_ok=True)
    except OSError as exc:
        _unmount_system()
        raise RequestError("bad_workdir", f"WORKDIR {workdir} cannot be made: {exc}") from exc

    def enter() -> None:  # in the child, before exec
        os.chroot(ROOT)
        os.chdir(workdir)
        os.setgroups([gid] if uid else [])
        os.setgid(gid)
        os.setuid(uid)

    try:
        process = subprocess.Popen(
            argv,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=enter,  # chroot and the user's ids, in the child
        )
    except (OSError, subprocess.SubprocessError) as exc:
        _unmount_system()
        raise RequestError("spawn_failed", f"cannot start {argv[0]!r}: {exc}") from exc
    step = _Step(process)
    step_id = str(process.pid)
    with _lock:
        _steps[step_id] = step
    threading.Thread(target=_collect, args=(step,), daemon=True).start()
    return {"step": step_id}


def _write_build_ca() -> None:
    """The image's CA bundle (a regular file only: the image is not trusted to
    point this guest at its own files) followed by the host's."""
    parts = []
    image_bundle = os.path.join(ROOT, IMAGE_CA_BUNDLE)
    with contextlib.suppress(OSError):
        if stat.S_ISREG(os.lstat(image_bundle).st_mode):
            with open(image_bundle, "rb") as handle:
                parts.append(handle.read(8 * 2**20).rstrip(b"\n"))
    with open(network.HOST_CA_COPY, "rb") as handle:
        parts.append(handle.read().rstrip(b"\n"))
    with open(BUILD_CA, "wb") as handle:
        handle.write(b"\n".join(parts) + b"\n")
    os.chmod(BUILD_CA, 0o644)


def _collect(step: _Step) -> None:
    assert step.process.stdout is not None
    while True:
        chunk = os.read(step.process.stdout.fileno(), 65536)
        if not chunk:
            break
        with _lock:
            step.output += chunk
            excess = len(step.output) - OUTPUT_LIMIT
            if excess > 0:
                del step.output[:excess]
                step.dropped += excess
    code = step.process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(step.process.pid, signal.SIGKILL)  # what it left running
    _kill_chrooted()
    _unmount_system()
    os.sync()
    with _lock:
        step.exit_code = code if code >= 0 else 128 - code
    step.done.set()


def _kill_chrooted() -> None:
    """Every process whose root is the one being built (daemons a step started)."""
    for _ in range(3):
        found = False
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/root") == ROOT:
                    found = True
                    os.kill(int(pid), signal.SIGKILL)
        if not found:
            return
        time.sleep(0.1)


def op_build_poll(args: dict[str, Any]) -> dict[str, Any]:
    """Output of the step from ``offset`` (bytes since it started), and its exit
    code once it ended; waits up to ``wait_ms`` for something new."""
    step_id, offset = str(args.get("step")), args.get("offset", 0)
    if not isinstance(offset, int) or offset < 0:
        raise RequestError("bad_args", "offset must be a non-negative integer")
    wait = min(max(int(args.get("wait_ms") or 0), 0), 10_000) / 1000
    with _lock:
        step = _steps.get(step_id)
    if step is None:
        raise RequestError("no_such", f"no step {step_id}")
    deadline = time.monotonic() + wait
    while True:
        with _lock:
            end = step.dropped + len(step.output)
            if offset < end or step.exit_code is not None or time.monotonic() >= deadline:
                start = max(offset, step.dropped)
                data = bytes(step.output[start - step.dropped : start - step.dropped + POLL_CHUNK])
                code = step.exit_code if start + len(data) >= end else None
                return {
                    "output": data.decode("utf-8", "replace"),
                    "skipped": start - offset,
                    "next": start + len(data),
                    "exit_code": code,
                }
        step.done.wait(0.1)


def op_build_copy(args: dict[str, Any]) -> dict[str, Any]:
    """Extract a ``COPY``'s tar (on the baseline drive, named ``blob``) into the
    root; its member names are already where they go, owners as ``--chown`` said."""
    entries = args.get("entries") or []
    apply: dict[str, Any] = {"blob": args.get("blob"), "entries": entries}
    single = args.get("file_dest")  # one file copied to a path: into it if it is a directory
    name = str(args.get("file_name") or "")
    if (
        isinstance(single, str)
        and single
        and len(entries) == 1
        and name
        and not any(char in name for char in "/|&\\\n")
        and os.path.isdir(layers._inside(single))
        and not os.path.islink(layers._inside(single))
    ):
        inside = f"{single.rstrip('/')}/{name}"
        escaped = re.sub(r"([][.*^$\\|])", r"\\\1", single)
        apply["transform"] = f"s|^{escaped}$|{inside}|"
        apply["entries"] = entries = [[inside, False]]
    result = layers.op_layer_apply(apply)
    chown = args.get("chown")
    if chown:
        uid, gid, _home = _user(chown)
        for entry in entries:
            path = layers._inside(entry[0])
            if os.path.lexists(path):
                os.lchown(path, uid, gid)
    os.sync()
    return result


OPERATIONS = {
    "build_run": op_build_run,
    "build_poll": op_build_poll,
    "build_copy": op_build_copy,
}
