"""The pyro guest agent: the only program the host talks to inside the VM.

It runs as the last step of the guest's init, reads framed requests from the
``org.pyro.agent`` virtio-serial port and answers them. Requests carry ids so
several can be in flight; each runs on its own thread and replies when done.

Standard library only: this file, its siblings and ``protocol.py`` are
copied into the guest's initramfs and run with the guest's ``python3``. The
operations live by noun: ``identity`` (hello, ping, info), ``disks`` (mounts,
the /workspace check, trim, freeze, sync), ``network`` (CAs, egress, package
index), ``commands`` (exec), ``fileops`` (files, transfers, diff),
``changes`` (what changed since the baseline), ``processes`` (shells,
services); this module serves them over the virtio-serial port.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

try:
    from pyro_mcp.agent import protocol
    from pyro_mcp.guest import (
        build,
        commands,
        diff,
        disks,
        fileops,
        identity,
        layers,
        network,
        processes,
        system,
    )
except ImportError:  # inside the guest, these files sit beside this one
    import build  # type: ignore[import-not-found,no-redef]
    import commands  # type: ignore[import-not-found,no-redef]
    import diff  # type: ignore[import-not-found,no-redef]
    import disks  # type: ignore[import-not-found,no-redef]
    import fileops  # type: ignore[import-not-found,no-redef]
    import identity  # type: ignore[import-not-found,no-redef]
    import layers  # type: ignore[import-not-found,no-redef]
    import network  # type: ignore[import-not-found,no-redef]
    import processes  # type: ignore[import-not-found,no-redef]
    import protocol  # type: ignore[import-not-found,no-redef]
    import system  # type: ignore[import-not-found,no-redef]

RequestError = fileops.RequestError
AGENT_VERSION = identity.AGENT_VERSION
BASE_ENV = commands.BASE_ENV


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
    checked = disks.op_workspace_check({})
    if checked["state"] == "read_only":
        return {"ran": False, "workspace": checked}
    return {**handler(args), "workspace": checked}


OPERATIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "hello": identity.op_hello,
    "ping": identity.op_ping,
    "info": identity.op_info,
    "sync": disks.op_sync,
    "exec": commands.op_exec,
    "trust_ca": network.op_trust_ca,
    "package_index": network.op_package_index,
    "freeze": disks.op_freeze,
    "workspace_check": disks.op_workspace_check,
    "trim": disks.op_trim,
    **fileops.OPERATIONS,
    **diff.OPERATIONS,
    **processes.OPERATIONS,
    **layers.OPERATIONS,
    **build.OPERATIONS,
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
    system.libc()  # loaded before any warm snapshot is taken
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
