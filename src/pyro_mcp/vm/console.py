"""A VM's serial console: kept as a bounded log, and read back to explain a crash."""

from __future__ import annotations

import asyncio

from pyro_mcp.vm.files import VmFiles

CONSOLE_LOG_MAX_BYTES = 2 * 1024 * 1024
CRASH_MARKERS = ("Kernel panic", "BUG:", "Oops:", "general protection fault", "Out of memory")


def crash_summary(tail: str) -> str:
    """The lines that explain a guest crash first, then the console's last lines."""
    lines = tail.splitlines()[1:]  # the first line may be cut mid-way
    key = [line.strip() for line in lines if any(m in line for m in CRASH_MARKERS)]
    text = ""
    if key:
        text += "\nguest kernel said: " + " | ".join(dict.fromkeys(key))[:800]
    text += "\nguest console (last lines):\n" + "\n".join(lines[-12:])
    return text


class ConsoleLog:
    """Writes what QEMU's serial console sends to ``console.log``, keeping the
    newest ``CONSOLE_LOG_MAX_BYTES`` (and the part before in ``console.log.1``)."""

    def __init__(self, files: VmFiles) -> None:
        self.files = files
        self.written = 0

    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        log = self.files.console_log.open("ab")
        try:
            while data := await reader.read(65536):
                if self.written + len(data) > CONSOLE_LOG_MAX_BYTES:
                    # Keep the newest output: it explains a crash better.
                    log.close()
                    self.files.console_log.replace(self.files.console_log.with_suffix(".log.1"))
                    log = self.files.console_log.open("ab")
                    self.written = 0
                log.write(data)
                log.flush()
                self.written += len(data)
        finally:
            log.close()
