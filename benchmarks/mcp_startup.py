"""How soon a freshly spawned `pyro mcp serve` answers a chat host (medians, no assertions).

    uv run python benchmarks/mcp_startup.py [--runs N]

Hosts spawn the server on every chat start and health check. This spawns it
as they do and times, over a raw stdio JSON-RPC exchange, `initialize` plus
`tools/list` from spawn, next to what importing the MCP SDK alone costs in a
fresh interpreter (the floor while the SDK is on the start-up path).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PYRO = Path(sys.executable).parent / "pyro"


def handshake_ms() -> float:
    started = time.monotonic()
    process = subprocess.Popen(
        [str(PYRO), "mcp", "serve", "--no-project-source"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdin is not None and process.stdout is not None

    def send(message: dict[str, object]) -> None:
        assert process.stdin is not None
        process.stdin.write((json.dumps(message) + "\n").encode())
        process.stdin.flush()

    send(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "bench", "version": "1"},
            },
        }
    )
    process.stdout.readline()
    send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    answer = process.stdout.readline()
    elapsed = (time.monotonic() - started) * 1000
    assert b"workspace_create" in answer, answer[:200]
    process.stdin.close()
    process.wait(timeout=30)
    return elapsed


def import_ms(module: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return (time.monotonic() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    spawn = statistics.median(handshake_ms() for _ in range(runs))
    sdk = statistics.median(import_ms("mcp.server.mcpserver") for _ in range(runs))
    bare = statistics.median(import_ms("sys") for _ in range(runs))
    print(f"pyro mcp serve: spawn to initialize + tools/list   {spawn:7.0f} ms (median of {runs})")
    print(f"python -c 'import mcp.server.mcpserver'            {sdk:7.0f} ms")
    print(f"python -c 'import sys' (interpreter start)          {bare:7.0f} ms")
    print(f"handshake / SDK import                              {spawn / sdk:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
