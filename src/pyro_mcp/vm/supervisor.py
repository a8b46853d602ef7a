"""The supervisor: one process per running VM.

It owns QEMU (as a child that dies with it), holds the only connection to the
guest agent, keeps a bounded console log, and serves any number of local
clients (CLI calls, SDK objects, MCP servers) over ``ctl.sock``. Clients send
framed requests; the supervisor forwards agent operations with its own ids and
routes the replies back, so concurrent callers never see each other's frames.

Started by ``launch()`` as ``python -m pyro_mcp.vm.supervisor VM_DIR``. It
reports one JSON line on stdout once the agent is ready (or why boot failed)
and then runs detached until asked to stop, QEMU exits, or, for an
owner-bound VM (``pyro run``), its owner's connection closes.

Two ways to a ready agent: a cold boot (QEMU boots the kernel; the agent
announces itself), or a warm restore (QEMU starts with ``-incoming defer``, the
device state of a warm snapshot is loaded over QMP while guest memory comes
from the snapshot's RAM file, and the agent, already running, answers the
hello). Either way the hello makes the guest its own (clock, entropy, name,
machine id) and mounts its disks. ``save_template`` turns a freshly booted
guest into a warm snapshot: it saves the device state and the VM never runs
again.

Its parts with a life of their own live beside it: the QMP monitor
(``qmp.py``), the console log (``console.py``) and the control socket
(``control.py``). What is left stays one module on purpose (~800 lines): boot,
warm restore, suspend, fork and template saving are one state machine over
the same QEMU process, agent connection and pending requests, and splitting
it would hand that shared state around instead of keeping it in one place.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pyro_mcp import host_tools
from pyro_mcp.agent import operations as guest
from pyro_mcp.agent.protocol import FrameDecoder, encode_frame
from pyro_mcp.errors import PyroError, VMError
from pyro_mcp.vm import reclaim
from pyro_mcp.vm.console import ConsoleLog, crash_summary
from pyro_mcp.vm.control import ControlServer, Handler
from pyro_mcp.vm.files import VmFiles, console_tail
from pyro_mcp.vm.qemu import die_with_parent
from pyro_mcp.vm.qmp import Monitor

HELLO_TIMEOUT_SECONDS = 30.0
# Polling QMP while an incoming migration loads (it takes ~10 ms).
RESTORE_POLL_SECONDS = 0.005
STOP_GRACE_SECONDS = 5.0
# Saving a suspended guest's memory: no bandwidth cap, and a bound for the whole save.
SUSPEND_BANDWIDTH = 64 * 1024**3
SUSPEND_TIMEOUT_SECONDS = 120.0
# Egress connections journalled per VM run (see _journal_writer).
EGRESS_JOURNAL_LIMIT = 5000
# How long a stopping VM's guest may take to flush its filesystems.
SYNC_GRACE_SECONDS = 20.0
OWNER_CONNECT_TIMEOUT_SECONDS = 60.0
OWNER_GONE = "the owning process went away"
NO_OWNER = "no owner connected"
OWNER_GONE_REASONS = (OWNER_GONE, NO_OWNER)
STARTER_GONE = "the process that started it"
# How often the supervisor checks that its VM directory still exists: if it
# was removed (by hand, or with a whole state directory), nobody can reach or
# delete this VM any more, so it stops instead of running forever.
DIRECTORY_CHECK_SECONDS = 5.0
BOOT_WATCH_SECONDS = 0.5


class Supervisor:
    def __init__(self, files: VmFiles, spec: dict[str, Any]) -> None:
        self.files = files
        self.argv: list[str] = spec["argv"]
        self.boot_timeout: float = float(spec["boot_timeout"])
        self.owner_bound: bool = bool(spec.get("owner_bound"))
        # A warm restore: the device state file to load instead of booting.
        self.restore: str | None = spec.get("restore")
        # True for a warm snapshot (RAM in a shared file, only devices in the
        # stream); False for a suspended VM (its whole RAM is in the stream).
        self.restore_shared: bool = bool(spec.get("restore_shared", True))
        # For a suspended state: its expected size and CRC-32, checked during the load.
        self.restore_check: dict[str, int] | None = spec.get("restore_check")
        # Extra hello arguments: hostname, machine_id, mounts.
        self.hello: dict[str, Any] = dict(spec.get("hello") or {})
        # Stop when this process is gone (a `pyro prepare` that was killed).
        self.watch_pid: int | None = spec.get("watch_pid")
        # A VM with a NIC runs its egress proxy here (see pyro_mcp.egress).
        self.network: bool = bool(spec.get("network"))
        self.egress: Any = None
        self.egress_ca: bytes | None = None
        self.egress_listener: socket.socket | None = None
        self.saved = False
        self.agent_connected: asyncio.Future[None] | None = None
        self.qemu: asyncio.subprocess.Process | None = None
        self.agent_writer: asyncio.StreamWriter | None = None
        self.agent_ready: asyncio.Future[dict[str, Any]] | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.stopping = asyncio.Event()
        self.stop_reason = "stopped"
        self.dead_message: str | None = None
        self.info: dict[str, Any] = {}
        self.boot_ms = 0
        self.owner_seen = False
        self.monitor = Monitor()
        self.console = ConsoleLog(files)

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.agent_ready = loop.create_future()
        self.agent_connected = loop.create_future()
        self.monitor.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, f"supervisor got signal {sig.name}")
        started = time.monotonic()
        # Unix socket paths are limited to 108 bytes and a VM directory can be
        # deeper than that: bind relative names from inside it. QEMU inherits
        # this working directory, so its -chardev paths are relative too.
        os.chdir(self.files.dir)
        for path in self.files.sockets():
            path.unlink(missing_ok=True)
        agent_server = await asyncio.start_unix_server(self._on_agent, self.files.agent_socket.name)
        console_server = await asyncio.start_unix_server(
            self.console.on_connect, self.files.console_socket.name
        )
        qmp_server = await asyncio.start_unix_server(
            self.monitor.on_connect, self.files.qmp_socket.name
        )
        try:
            try:
                if self.network:
                    # Bound now, so no guest connection is lost; served once the
                    # proxy is loaded, while QEMU boots (see _boot).
                    self.egress_listener = _listen(self.files.egress_socket.name)
                watching = asyncio.ensure_future(self._watch_starter_while_booting())
                try:
                    await self._boot(started)
                finally:
                    watching.cancel()
            except VMError as exc:
                _report({"ok": False, "error": str(exc)})
                return 1
            control = ControlServer(
                self._control,
                self._relay,
                on_owner=self._owner_arrived,
                on_owner_gone=lambda: self.request_stop(OWNER_GONE),
            )
            control_server = await asyncio.start_unix_server(
                control.on_connect, self.files.control_socket.name
            )
            os.chmod(self.files.control_socket, 0o600)
            _report(
                {
                    "ok": True,
                    "pid": os.getpid(),
                    "qemu_pid": self.qemu.pid if self.qemu else None,
                    "boot_ms": self.boot_ms,
                    "boot_kind": self._boot_kind(),
                    "info": self.info,
                }
            )
            if self.owner_bound:
                loop.call_later(OWNER_CONNECT_TIMEOUT_SECONDS, self._check_owner_arrived)
            loop.call_later(DIRECTORY_CHECK_SECONDS, self._check_directory)
            async with control_server:
                await self.stopping.wait()
            return 0
        finally:
            agent_server.close()
            console_server.close()
            qmp_server.close()
            await self._shutdown()

    def _boot_kind(self) -> str:
        if not self.restore:
            return "cold"
        return "warm" if self.restore_shared else "resumed"

    async def _boot(self, started: float) -> None:
        qemu_log = self.files.qemu_log.open("wb")
        try:
            self.qemu = await host_tools.spawn_async(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            raise VMError(f"cannot start QEMU ({self.argv[0]}): {exc}") from exc
        finally:
            qemu_log.close()
        exit_watch: asyncio.Future[None] = asyncio.ensure_future(self._watch_qemu())
        loading: asyncio.Future[Any] | None = None
        if self.network:
            # Loading the proxy (imports, settings, secrets) overlaps QEMU's start.
            loading = asyncio.get_running_loop().run_in_executor(None, self._load_egress)
        if self.restore:
            await self._restore(exit_watch)
        else:
            assert self.agent_ready is not None
            await self._until(self.agent_ready, exit_watch, "the guest agent was not ready")
        self.boot_ms = int((time.monotonic() - started) * 1000)
        nonce = secrets.token_hex(8)
        hello_timeout = min(HELLO_TIMEOUT_SECONDS, self.boot_timeout)
        egress: dict[str, Any] = {}
        if loading is not None:
            try:
                self.egress = await loading
            except VMError:
                self._kill_qemu()
                raise
            assert self.egress_listener is not None
            self.egress.serve(self.egress_listener)
            egress = {"egress": self._guest_egress()}
        try:
            reply = await guest.hello(
                self,
                {
                    "time_ns": time.time_ns(),
                    "entropy": base64.b64encode(os.urandom(64)).decode(),
                    **self.hello,
                    **egress,
                    "nonce": nonce,
                },
                hello_timeout,
            )
        except VMError as exc:
            raise VMError(self._boot_failure(f"agent handshake failed: {exc}")) from exc
        result = reply.get("result")
        if not reply.get("ok") or not isinstance(result, dict) or result.get("nonce") != nonce:
            self._kill_qemu()
            raise VMError(
                self._boot_failure(f"agent handshake was answered wrongly: {reply!r:.300}")
            )
        self.info = {k: v for k, v in result.items() if k != "nonce" and isinstance(v, str)}
        self.boot_ms = int((time.monotonic() - started) * 1000)

    # --------------------------------------------------------------- egress

    def _load_egress(self) -> Any:
        """The VM's egress proxy, from its settings (in a worker thread, during boot)."""
        from pyro_mcp.egress import config as egress_config
        from pyro_mcp.egress.proxy import EgressProxy

        try:
            config = egress_config.read(self.files.dir)
            self.egress_ca = config.ca.cert.read_bytes() if config.ca is not None else None
            values = config.secret_values()
        except (OSError, ValueError, TypeError, KeyError, PyroError) as exc:
            raise VMError(
                f"the VM's egress settings ({self.files.dir / egress_config.EGRESS_FILE}) "
                f"cannot be read ({exc}); `pyro workspace start` writes them again from the "
                "workspace's record"
            ) from exc
        return EgressProxy(
            config.policy, values, config.ca, _journal_writer(config), scratch=self.files.dir
        )

    def _guest_egress(self) -> dict[str, Any]:
        """Every boot and restore (in the hello): the guest uses the proxy, trusts its CA."""
        from pyro_mcp.egress import config as egress_config

        args: dict[str, Any] = {"proxy": egress_config.PROXY_URL}
        if self.egress_ca is not None:
            args["ca"] = base64.b64encode(self.egress_ca).decode("ascii")
        return args

    def reload_egress(self) -> dict[str, Any]:
        """New rules from ``egress.json`` for the guest's next connections."""
        from pyro_mcp.egress import config as egress_config

        if self.egress is None:
            raise ValueError("this VM has no network")
        config = egress_config.read(self.files.dir)
        self.egress.update(config.policy, config.secret_values())
        return {"policy": config.policy.to_dict()}

    async def _until(
        self, waited: asyncio.Future[Any], exit_watch: asyncio.Future[None], what: str
    ) -> None:
        """Wait for ``waited`` within the boot bound; QEMU exiting first is a failure."""
        done, _ = await asyncio.wait(
            {waited, exit_watch}, timeout=self.boot_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if waited in done:
            return
        if exit_watch in done:
            raise VMError(self._boot_failure("QEMU exited during boot"))
        self._kill_qemu()
        raise VMError(self._boot_failure(f"{what} within {self.boot_timeout:.0f} s"))

    async def _restore(self, exit_watch: asyncio.Future[None]) -> None:
        """Load a warm snapshot's device state into the paused QEMU and let it run."""
        assert self.monitor.ready is not None and self.agent_connected is not None
        await self._until(self.monitor.ready, exit_watch, "QEMU's monitor did not answer")
        await self._until(self.agent_connected, exit_watch, "the agent port did not connect")
        deadline = time.monotonic() + self.boot_timeout
        # A suspended state's checksum is computed while QEMU loads it; the
        # guest runs only once it matched (the stream was saved paused, so it
        # loads paused and waits for our cont).
        checking: asyncio.Future[tuple[int, int]] | None = None
        if self.restore_check is not None:
            from pyro_mcp.vm import suspend

            checking = asyncio.get_running_loop().run_in_executor(
                None, suspend.measure, Path(self.restore or "")
            )
        try:
            await self.monitor.call(
                "migrate-set-capabilities",
                {"capabilities": [{"capability": "x-ignore-shared", "state": self.restore_shared}]},
            )
            await self.monitor.call(
                "migrate-incoming", {"uri": "exec:cat " + shlex.quote(self.restore or "")}
            )
            while True:
                status = await self.monitor.call("query-status")
                if status.get("status") in ("running", "paused") and checking is not None:
                    await self._check_restore(checking)
                    checking = None
                if status.get("status") == "running":
                    return
                if status.get("status") not in ("inmigrate", "paused", "prelaunch"):
                    raise VMError(f"the restored VM is {status.get('status')}")
                if status.get("status") == "paused":
                    await self.monitor.call("cont")
                if exit_watch.done():
                    raise VMError("QEMU exited while loading the snapshot")
                if time.monotonic() > deadline:
                    raise VMError(f"the snapshot did not load within {self.boot_timeout:.0f} s")
                await asyncio.sleep(RESTORE_POLL_SECONDS)
        except (VMError, TimeoutError, OSError) as exc:
            # OSError: QEMU quit on a bad stream in the middle of a monitor call.
            self._kill_qemu()
            reason = str(exc) or type(exc).__name__
            if checking is not None:  # a damaged stream often fails the load itself
                try:
                    await self._check_restore(checking)
                except VMError as corrupt:
                    reason = str(corrupt)  # the cause, not its symptom
            raise VMError(self._boot_failure(f"warm restore failed: {reason}")) from exc

    async def _check_restore(self, checking: asyncio.Future[tuple[int, int]]) -> None:
        assert self.restore_check is not None
        try:
            size, crc = await checking
        except OSError as exc:
            raise VMError(f"the saved memory cannot be read: {exc}") from exc
        if (size, crc) != (self.restore_check["bytes"], self.restore_check["crc32"]):
            self._kill_qemu()
            raise VMError("the saved memory is corrupt (its size or checksum changed)")

    async def save_template(self, path: str) -> dict[str, Any]:
        """Save this freshly booted guest's device state; the VM never runs again.

        Guest memory is already in the shared RAM file (``share=on``), so only the
        devices are written (``x-ignore-shared``). The guest must not run after
        this: it would change the RAM file every warm VM maps.
        """
        if self.restore:
            raise ValueError("only a cold-booted template VM can be saved")
        await guest.flush(self, HELLO_TIMEOUT_SECONDS)
        await self.monitor.call("stop")
        self.saved = True
        await self._save_to(path, shared_ram=True, timeout=60, what="saving the warm snapshot")
        with contextlib.suppress(VMError):
            await self.monitor.call("quit")
        self.request_stop("saved as a warm snapshot")
        return {"path": path}

    async def suspend(self, path: str) -> dict[str, Any]:
        """Save the running guest whole (RAM and devices) to ``path``; then QEMU exits.

        The guest's filesystems are flushed first, so the disks are consistent
        with the saved memory. If saving fails (a full disk), the guest runs on
        and the error says why.
        """
        started = time.monotonic()
        await guest.flush(self, SYNC_GRACE_SECONDS)
        await self.monitor.call("stop")
        try:
            await self._save_to(path, what="saving the guest's memory")
        except VMError as exc:
            with contextlib.suppress(VMError):
                await self.monitor.call("cont")
            raise VMError(f"{exc}; the workspace keeps running") from exc
        self.saved = True
        with contextlib.suppress(VMError):
            await self.monitor.call("quit")
        self.request_stop("suspended")
        return {"path": path, "suspend_ms": int((time.monotonic() - started) * 1000)}

    async def fork_save(self, path: str, splits: list[list[str]]) -> dict[str, Any]:
        """Save the running guest's memory and freeze its disks at one instant; it runs on.

        ``splits`` pairs each drive's live top image with an empty image made on
        it beforehand. The memory is saved live; QEMU pauses the guest for the
        last dirty pages and waits before switching over. There, in one
        transaction, every drive moves onto its new top (``blockdev-snapshot-sync``,
        an existing image): the old tops, now read-only, hold exactly the disks
        that match the saved memory, and become the layers forks share. Then the
        save completes and the guest continues on its new tops. Nothing is
        copied, so the pause does not grow with what the guest wrote.
        """
        started = time.monotonic()
        actions = await self._switch_actions(splits)
        # Flushed first, as for a suspend: a fork that cannot resume its memory
        # boots from its disks, and they should hold what the guest wrote.
        await guest.flush(self, SYNC_GRACE_SECONDS)

        async def switch() -> None:
            await self.monitor.call("transaction", {"actions": actions})

        try:
            state = await self._save_to(
                path, what="saving the guest's memory", before_switchover=switch
            )
            paused = time.monotonic()
        except VMError as exc:
            raise VMError(f"forking failed: {exc}; the workspace keeps running") from exc
        finally:
            status = await self.monitor.call("query-status")
            if status.get("status") != "running":
                await self.monitor.call("cont")
        downtime = int(state.get("downtime", 0))
        result = {
            "pause_ms": downtime + int((time.monotonic() - paused) * 1000),
            "save_ms": int((time.monotonic() - started) * 1000),
        }
        ram_file = reclaim.memory_file(self.argv)
        if ram_file is not None and self.qemu is not None:
            # Saving read every page of the snapshot's RAM file: hand back those
            # the guest never wrote, or this QEMU keeps ~1 GiB of them mapped.
            dropped = await asyncio.to_thread(reclaim.drop_read_only_pages, self.qemu.pid, ram_file)
            result["reclaimed_bytes"] = dropped
        return result

    async def _switch_actions(self, splits: list[list[str]]) -> list[dict[str, Any]]:
        """The transaction that moves each drive from its live top onto the new one."""
        drives = await self.drives()
        actions = []
        for live, top in splits:
            device = next(
                (d for d, f in drives.items() if os.path.realpath(f) == os.path.realpath(live)),
                None,
            )
            if device is None:
                raise VMError(f"no drive of this VM writes to {live} (drives: {drives})")
            actions.append(
                {
                    "type": "blockdev-snapshot-sync",
                    "data": {
                        "device": device,
                        "snapshot-file": top,
                        "format": "qcow2",
                        "mode": "existing",
                    },
                }
            )
        return actions

    async def drives(self) -> dict[str, str]:
        """Each drive and the image it writes to now."""
        return {
            str(b["device"]): _image_file(str(b["inserted"]["file"]))
            for b in await self.monitor.call("query-block")
            if b.get("inserted")
        }

    async def _save_to(
        self,
        path: str,
        *,
        shared_ram: bool = False,
        timeout: float = SUSPEND_TIMEOUT_SECONDS,
        what: str,
        before_switchover: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """QEMU's migration stream into ``path``, waited for; its final ``query-migrate``.

        ``shared_ram`` leaves out RAM kept in a shared file (a warm template's).
        The default bandwidth cap (32 MiB/s) is for live migration over a
        network; a local file takes it uncapped. ``before_switchover`` runs
        with the guest paused and its last pages not yet written.
        """
        await self.monitor.call(
            "migrate-set-capabilities",
            {
                "capabilities": [
                    {"capability": "x-ignore-shared", "state": shared_ram},
                    {"capability": "pause-before-switchover", "state": bool(before_switchover)},
                ]
            },
        )
        await self.monitor.call("migrate-set-parameters", {"max-bandwidth": SUSPEND_BANDWIDTH})
        await self.monitor.call("migrate", {"uri": "exec:cat > " + shlex.quote(path)})
        deadline = time.monotonic() + timeout
        while True:
            state: dict[str, Any] = await self.monitor.call("query-migrate")
            status = state.get("status")
            if status == "completed":
                return state
            if status == "pre-switchover" and before_switchover is not None:
                # Once: the state stays pre-switchover for a moment after the continue.
                switchover, before_switchover = before_switchover, None
                try:
                    await switchover()
                except BaseException:
                    with contextlib.suppress(VMError):
                        await self.monitor.call("migrate_cancel")
                        await self._migration_settled()
                    raise
                await self.monitor.call("migrate-continue", {"state": "pre-switchover"})
                continue
            if status in ("failed", "cancelled") or time.monotonic() > deadline:
                with contextlib.suppress(VMError):
                    await self.monitor.call("migrate_cancel")
                    await self._migration_settled()
                raise VMError(f"{what} failed ({status}): {state.get('error-desc', 'timed out')}")
            await asyncio.sleep(RESTORE_POLL_SECONDS)

    async def _migration_settled(self, timeout: float = 10.0) -> None:
        """Wait, bounded, until a cancelled migration has ended: until then QEMU
        refuses ``cont`` ("Migration is not finalized yet") and the guest would
        stay paused."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = await self.monitor.call("query-migrate")
            if state.get("status") in (None, "cancelled", "failed", "completed"):
                return
            await asyncio.sleep(RESTORE_POLL_SECONDS)

    def _boot_failure(self, what: str) -> str:
        code = self.qemu.returncode if self.qemu else None
        qemu_out = ""
        with contextlib.suppress(OSError):
            qemu_out = self.files.qemu_log.read_text(errors="replace")[-2000:].strip()
        parts = [f"VM boot failed: {what}"]
        if code is not None:
            parts.append(f"QEMU exit code: {code}")
        parts.append("QEMU command: " + " ".join(self.argv))
        if qemu_out:
            parts.append("QEMU said:\n" + qemu_out)
        parts.append("guest console (tail):\n" + (console_tail(self.files).strip() or "(empty)"))
        parts.append("Run `pyro doctor` to check this host.")
        return "\n".join(parts)

    async def _watch_qemu(self) -> None:
        assert self.qemu is not None
        code = await self.qemu.wait()
        if not self.stopping.is_set():
            self.dead_message = f"the VM died (QEMU exited with code {code})" + crash_summary(
                console_tail(self.files)
            )
            self.request_stop(f"QEMU exited with code {code}")
        for future in self.pending.values():
            if not future.done():
                future.set_exception(VMError(self.dead_message or "the VM was stopped"))

    # --------------------------------------------------------------- agent

    async def _on_agent(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.agent_writer = writer
        if self.agent_connected is not None and not self.agent_connected.done():
            self.agent_connected.set_result(None)
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            for message in decoder.feed(data):
                if message.get("event") == "ready":
                    if self.agent_ready is not None and not self.agent_ready.done():
                        self.agent_ready.set_result(message)
                    continue
                request_id = message.get("id")
                future = self.pending.pop(request_id, None) if isinstance(request_id, int) else None
                if future is not None and not future.done():
                    future.set_result(message)

    async def agent_request(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        if self.dead_message:
            raise VMError(self.dead_message)
        if self.agent_writer is None:
            raise VMError("the guest agent is not connected")
        request_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        self.agent_writer.write(encode_frame({"id": request_id, "op": op, "args": args}))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return {
                "ok": False,
                "error": {
                    "kind": "timeout",
                    "message": f"the guest agent did not answer {op} within {timeout:.0f} s",
                },
            }
        finally:
            self.pending.pop(request_id, None)

    # ------------------------------------------------------------- control

    async def _relay(self, args: dict[str, Any]) -> dict[str, Any]:
        """An ``agent`` request: the guest operation it wraps, and the guest's reply."""
        inner = args.get("op")
        timeout = float(args.get("timeout") or 60)
        if not isinstance(inner, str):
            raise ValueError("agent requests need an op")
        return await self.agent_request(inner, args.get("args") or {}, timeout)

    @functools.cached_property
    def _control(self) -> dict[str, Handler]:
        """The control socket's operations (besides ``agent``), by name."""

        async def status(args: dict[str, Any]) -> dict[str, Any]:
            return self.status()

        async def pause(args: dict[str, Any]) -> dict[str, Any]:
            await self.monitor.call("stop")
            return {"paused": True}

        async def resume(args: dict[str, Any]) -> dict[str, Any]:
            await self.monitor.call("cont")
            return {"paused": False}

        async def hostfwd(args: dict[str, Any]) -> dict[str, Any]:
            action, host_port = str(args.get("action")), int(args["host_port"])
            return await self.monitor.hostfwd(action, host_port, int(args.get("guest_port", 0)))

        async def suspend(args: dict[str, Any]) -> dict[str, Any]:
            return await self.suspend(str(args["path"]))

        async def fork_save(args: dict[str, Any]) -> dict[str, Any]:
            return await self.fork_save(str(args["path"]), list(args["splits"]))

        async def drives(args: dict[str, Any]) -> dict[str, Any]:
            return await self.drives()

        async def split(args: dict[str, Any]) -> dict[str, Any]:
            # Each drive moves onto its new top now (the caller froze what writes to it).
            actions = await self._switch_actions(list(args["splits"]))
            await self.monitor.call("transaction", {"actions": actions})
            return await self.drives()

        async def egress_reload(args: dict[str, Any]) -> dict[str, Any]:
            return self.reload_egress()

        async def save_template(args: dict[str, Any]) -> dict[str, Any]:
            return await self.save_template(str(args["path"]))

        async def shutdown(args: dict[str, Any]) -> dict[str, Any]:
            self.request_stop("stopped on request")
            return {}

        return {
            "status": status,
            "own": status,  # the connection that sends it owns the VM (see ControlServer)
            "pause": pause,
            "resume": resume,
            "hostfwd": hostfwd,
            "suspend": suspend,
            "fork_save": fork_save,
            "drives": drives,
            "split": split,
            "egress_reload": egress_reload,
            "save_template": save_template,
            "shutdown": shutdown,
        }

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "qemu_pid": self.qemu.pid if self.qemu else None,
            "boot_ms": self.boot_ms,
            "info": self.info,
            # Agent requests in flight (a running command, a transfer): a
            # workspace that has any is never reaped.
            "pending": sum(1 for f in self.pending.values() if not f.done()),
        }

    # ------------------------------------------------------------ stopping

    def _owner_arrived(self) -> None:
        self.owner_seen = True

    def request_stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            self.stop_reason = reason
            self.stopping.set()

    def _check_directory(self) -> None:
        if not self.files.dir.is_dir():
            self.request_stop("the VM directory was removed")
        elif self.watch_pid is not None and not _pid_alive(self.watch_pid):
            self.request_stop(f"{STARTER_GONE} (pid {self.watch_pid}) is gone")
        elif not self.stopping.is_set():
            asyncio.get_running_loop().call_later(DIRECTORY_CHECK_SECONDS, self._check_directory)

    @property
    def abandoned(self) -> bool:
        """An owner-bound guest (pyro run, a template, a building guest) whose owner
        went away: nobody uses its disks again, so no flush is waited for and
        the VM removes them itself."""
        reason = self.stop_reason or ""
        return self.owner_bound and (
            reason in OWNER_GONE_REASONS or reason.startswith(STARTER_GONE)
        )

    async def _watch_starter_while_booting(self) -> None:
        """A boot (cold under TCG: 10 s and more) ends as soon as the process that
        asked for it is gone: QEMU is killed, the boot fails, and an owner-bound
        VM's files go (``abandoned``)."""
        if self.watch_pid is None:
            return
        while _pid_alive(self.watch_pid):
            await asyncio.sleep(BOOT_WATCH_SECONDS)
        self.request_stop(f"{STARTER_GONE} (pid {self.watch_pid}) is gone")
        self._kill_qemu()

    def _check_owner_arrived(self) -> None:
        if not self.owner_seen:
            self.request_stop(NO_OWNER)

    def _kill_qemu(self) -> None:
        if self.qemu is not None and self.qemu.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.qemu.kill()

    async def _shutdown(self) -> None:
        qemu = self.qemu
        if qemu is not None and qemu.returncode is None:
            if (
                self.agent_writer is not None
                and not self.dead_message
                and not self.saved
                and not self.abandoned
            ):
                # Flush the guest's page cache so the root overlay is whole, and
                # freeze /workspace so its disk is clean. Under TCG on a busy
                # host a guest's first flush can take seconds: be generous.
                with contextlib.suppress(Exception):
                    await guest.flush(self, SYNC_GRACE_SECONDS, freeze=["/workspace"])
            with contextlib.suppress(ProcessLookupError):
                qemu.terminate()
            try:
                await asyncio.wait_for(qemu.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                self._kill_qemu()
                await qemu.wait()
        if self.egress is not None:
            await self.egress.close()
        for path in self.files.sockets():
            path.unlink(missing_ok=True)
        record = {
            "reason": self.dead_message or self.stop_reason,
            "died": self.dead_message is not None,
            "qemu_exit_code": qemu.returncode if qemu else None,
            "at": time.time(),
        }
        tmp = self.files.exit_record.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(record))
            tmp.replace(self.files.exit_record)


def _image_file(name: str) -> str:
    """The file of a drive's top image, from QEMU's name for it: a path, or (once
    the chain differs from what the image header says, as after a fork) a
    ``json:`` description whose ``file`` is the top's."""
    if not name.startswith("json:"):
        return name
    try:
        return str(json.loads(name[len("json:") :])["file"]["filename"])
    except (ValueError, KeyError, TypeError):
        return name


def _listen(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    listener.setblocking(False)
    return listener


def _journal_writer(config: Any) -> Any:
    """Records each crossing in the workspace's journal (None: a VM without a workspace)."""
    if config.journal_db is None or config.workspace_id is None:
        return None
    from pyro_mcp.store.db import Store

    store = Store(config.journal_db)
    workspace_id = config.workspace_id
    written = itertools.count(1)

    def write(entry: dict[str, Any]) -> None:
        # A guest opening connections without end must not grow the database
        # without end: past the limit, one entry says so and the rest go unrecorded.
        count = next(written)
        if count > EGRESS_JOURNAL_LIMIT + 1:
            return
        if count == EGRESS_JOURNAL_LIMIT + 1:
            entry = {
                **entry,
                "host": "(journal limit)",
                "reason": f"{EGRESS_JOURNAL_LIMIT} connections journalled since this VM "
                "started; later ones are not (they are still decided by the policy)",
            }
        with contextlib.suppress(Exception):  # bookkeeping must not break the proxy
            store.add_journal(workspace_id, "egress", entry["started_at"], entry)

    return write


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _report(message: dict[str, Any]) -> None:
    """The one line ``launch()`` waits for; then stdout is closed."""
    with contextlib.suppress(OSError):
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()
        sys.stdout.close()


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--detach":
        # Double fork: the launcher reaps the intermediate child at once and the
        # supervisor is adopted by init, so no pyro process inherits a zombie.
        argv = argv[1:]
        if os.fork() > 0:
            os._exit(0)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
    files = VmFiles(Path(argv[0]))
    spec = json.loads(files.spec.read_text())
    supervisor = Supervisor(files, spec)
    code = asyncio.run(supervisor.run())
    if supervisor.abandoned:
        # Nobody is left to delete this VM: remove its disks ourselves.
        shutil.rmtree(files.dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
