"""`pyro mcp serve` answers the handshake from a recorded cache before the SDK loads.

Raw JSON-RPC over a real spawned server, as a chat host speaks it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.vm

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}


class RawClient:
    def __init__(self, env: dict[str, str], *flags: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pyro_mcp.cli.main", "mcp", "serve", *flags],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the server closed stdout"
        return dict(json.loads(line))

    def handshake(self) -> list[dict[str, Any]]:
        self.send(INITIALIZE)
        assert self.receive()["result"]["serverInfo"]["name"] == "pyro"
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        self.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        return list(self.receive()["result"]["tools"])

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)
        assert self.process.stdout is not None
        self.process.stdout.close()


def cache_files(cache: Path) -> list[Path]:
    return sorted((cache / "mcp-handshake").glob("*.json"))


def test_a_second_spawn_replays_the_recorded_handshake_and_then_serves_for_real(
    cli_env: dict[str, str], private_cache: Path
) -> None:
    env = dict(cli_env, PYRO_CACHE_DIR=str(private_cache))
    first = RawClient(env, "--mode", "inspect", "--no-project-source")
    tools = first.handshake()
    first.close()
    [recorded] = cache_files(private_cache)
    assert json.loads(recorded.read_text())["tools"]["tools"] == tools

    second = RawClient(env, "--mode", "inspect", "--no-project-source")
    assert second.handshake() == tools
    # Past the handshake the real server answers: a tool call on unknown input.
    second.send(
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "workspace_status", "arguments": {"workspace_id": "ws-nope"}},
        }
    )
    answer = second.receive()
    assert answer["id"] == 3 and answer["result"]["isError"] is True
    assert (
        "workspace_list" in answer["result"]["content"][0]["text"]
        or "no workspace" in (answer["result"]["content"][0]["text"])
    )
    second.close()
    # Another configuration has its own record.
    third = RawClient(env, "--profile", "vm-run", "--no-project-source")
    assert [tool["name"] for tool in third.handshake()] == ["vm_run"]
    third.close()
    assert len(cache_files(private_cache)) == 2


def test_an_outdated_record_is_corrected_and_the_client_told(
    cli_env: dict[str, str], private_cache: Path
) -> None:
    env = dict(cli_env, PYRO_CACHE_DIR=str(private_cache))
    first = RawClient(env, "--no-project-source")
    tools = first.handshake()
    first.close()
    [recorded] = cache_files(private_cache)
    data = json.loads(recorded.read_text())
    data["tools"]["tools"] = data["tools"]["tools"][:1]
    recorded.write_text(json.dumps(data))

    second = RawClient(env, "--no-project-source")
    assert len(second.handshake()) == 1  # replayed from the (tampered) record
    assert second.receive() == {
        "jsonrpc": "2.0",
        "method": "notifications/tools/list_changed",
    }
    second.send({"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
    assert second.receive()["result"]["tools"] == tools
    second.close()
    assert json.loads(recorded.read_text())["tools"]["tools"] == tools


def test_an_unknown_protocol_version_is_answered_by_the_real_server(
    cli_env: dict[str, str], private_cache: Path
) -> None:
    env = dict(cli_env, PYRO_CACHE_DIR=str(private_cache))
    recording = RawClient(env, "--no-project-source")
    recording.handshake()
    recording.close()
    client = RawClient(env, "--no-project-source")
    client.send({**INITIALIZE, "params": {**INITIALIZE["params"], "protocolVersion": "2024-11-05"}})
    answer = client.receive()
    assert answer["id"] == 1 and answer["result"]["protocolVersion"] == "2024-11-05"
    client.close()
