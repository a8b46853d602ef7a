"""Warming the server's environment in the background, after the MCP handshake.

A chat host starts ``pyro mcp serve`` and hands its tools to the model at once;
the server must never make that wait for a ``pyro prepare``. So when the
handshake completes and the environment is cold (or stale), a thread prepares
it; a ``workspace_create`` a few seconds later restores warm, an earlier one
simply cold-boots. Concurrent prepares (another server, the CLI) share the
snapshot's lock: one builds, the other waits and reuses it.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from pyro_mcp import config
from pyro_mcp.errors import PyroError

if TYPE_CHECKING:
    from pyro_mcp.sdk import Pyro

log = logging.getLogger("pyro.mcp.warmup")


class BackgroundWarmUp:
    """Starts at most one background prepare of ``environment``.

    ``network``: the server's tools can create guests with a NIC (workspaces
    with egress), so that variant is prepared too.
    """

    def __init__(self, pyro: Pyro, environment: str, *, network: bool = True) -> None:
        self.pyro = pyro
        self.environment = environment
        self.network = network
        self.thread: threading.Thread | None = None
        self.outcome: str | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Prepare in a daemon thread, unless already started or warm starts are off."""
        if not config.warm_enabled():
            self.outcome = "skipped: PYRO_WARM=0"
            return
        with self._lock:
            if self.thread is not None:
                return
            self.thread = threading.Thread(target=self._run, name="pyro-warm-up", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        try:
            loop = self.pyro.doctor(self.environment)["daily_loop"]
            cold = [("", loop)] if loop["status"] != "warm" else []
            network = loop.get("network") or {"status": "cold", "reason": "not checked"}
            if self.network and network["status"] != "warm":
                cold.append((" with a NIC", network))
            if not cold:
                self.outcome = "already warm"
                log.info("%s is warm: workspaces start from its snapshot", self.environment)
                return
            for variant, state in cold:
                log.info(
                    "%s%s is %s (%s): preparing a warm snapshot in the background",
                    self.environment,
                    variant,
                    state["status"],
                    state["reason"],
                )
            result = self.pyro.prepare(self.environment, network=self.network)
            self.outcome = "prepared"
            log.info("%s is warm (prepared in %s s)", self.environment, result["seconds"])
        except PyroError as exc:
            # Not fatal: workspaces cold-boot. Say why once, where the host logs it.
            self.outcome = f"failed: {exc}"
            log.warning(
                "could not prepare %s in the background (workspaces will cold-boot): %s",
                self.environment,
                str(exc).splitlines()[0],
            )


class WarmUpAfterHandshake:
    """MCP server middleware: starts the warm-up once the handshake is over.

    That is the client's ``notifications/initialized`` where the protocol has a
    handshake, or its first request where connections are born ready. The
    message itself is handled first and never waits for the warm-up.
    """

    def __init__(self, warm_up: BackgroundWarmUp) -> None:
        self.warm_up = warm_up

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        result = await call_next(ctx)
        if getattr(ctx, "method", None) != "initialize":
            self.warm_up.start()
        return result
