"""The real guest agent, served over a socketpair (no VM needed)."""

from __future__ import annotations

import ast
import base64
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from pyro_mcp.agent.protocol import FrameDecoder, encode_frame
from pyro_mcp.environments.builder import guest_files
from pyro_mcp.guest import agent, commands, network


class AgentPeer:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()
        self.ids = 0
        self.backlog: list[dict[str, Any]] = []

    def receive(self) -> dict[str, Any]:
        while not self.backlog:
            data = self.sock.recv(65536)
            assert data, "agent closed the connection"
            self.backlog += self.decoder.feed(data)
        return self.backlog.pop(0)

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        self.ids += 1
        self.sock.sendall(encode_frame({"id": self.ids, "op": op, "args": args}))
        while True:
            message = self.receive()
            if message.get("id") == self.ids:
                return message


@pytest.fixture
def peer() -> Iterator[AgentPeer]:
    host, guest = socket.socketpair()
    host.settimeout(30)

    def read() -> bytes:
        data = guest.recv(65536)
        if not data:
            raise EOFError
        return data

    thread = threading.Thread(target=agent.Agent(read, guest.sendall).serve, daemon=True)
    thread.start()
    p = AgentPeer(host)
    assert p.receive() == {"event": "ready", "version": agent.AGENT_VERSION}
    yield p
    host.close()
    thread.join(timeout=5)
    guest.close()


def _out(reply: dict[str, Any], stream: str) -> str:
    return base64.b64decode(reply["result"][stream]).decode()


def test_exec_keeps_stdout_and_stderr_apart_and_returns_the_exit_code(peer: AgentPeer) -> None:
    reply = peer.request("exec", shell="echo out; echo err >&2; exit 3", cwd="/")
    assert reply["ok"] is True
    assert _out(reply, "stdout") == "out\n"
    assert _out(reply, "stderr") == "err\n"
    assert reply["result"]["exit_code"] == 3
    assert reply["result"]["timed_out"] is False


def test_exec_runs_an_argv_without_a_shell(peer: AgentPeer) -> None:
    reply = peer.request("exec", argv=["printf", "%s|", "a b", "$HOME"], cwd="/")
    assert _out(reply, "stdout") == "a b|$HOME|"


def test_exec_past_its_timeout_is_killed_with_its_background_children(peer: AgentPeer) -> None:
    reply = peer.request(
        "exec", shell="echo started; sleep 30 & sleep 30", timeout_seconds=0.5, cwd="/"
    )
    result = reply["result"]
    assert result["timed_out"] is True
    assert result["exit_code"] == 124
    assert _out(reply, "stdout") == "started\n"
    assert result["duration_ms"] < 10_000


def test_exec_output_beyond_the_bound_is_counted_but_not_kept(peer: AgentPeer) -> None:
    reply = peer.request("exec", shell="head -c 300000 /dev/zero", max_output_bytes=1000, cwd="/")
    result = reply["result"]
    assert len(base64.b64decode(result["stdout"])) == 1000
    assert result["stdout_bytes"] == 300000


def test_exec_does_not_wait_for_background_processes_holding_its_pipes(peer: AgentPeer) -> None:
    reply = peer.request("exec", shell="sleep 20 & echo done", timeout_seconds=15, cwd="/")
    assert _out(reply, "stdout") == "done\n"
    assert reply["result"]["timed_out"] is False


def test_requests_in_flight_are_answered_independently(peer: AgentPeer) -> None:
    peer.sock.sendall(
        encode_frame({"id": 1, "op": "exec", "args": {"shell": "sleep 1; echo slow", "cwd": "/"}})
    )
    peer.sock.sendall(encode_frame({"id": 2, "op": "ping", "args": {}}))
    first = peer.receive()
    assert first["id"] == 2
    assert peer.receive()["id"] == 1


def test_bad_requests_get_error_replies_and_the_agent_keeps_serving(peer: AgentPeer) -> None:
    assert peer.request("no-such-op")["error"]["kind"] == "unknown_op"
    assert peer.request("exec")["error"]["kind"] == "bad_args"
    assert peer.request("exec", shell="true", cwd="/does/not/exist")["error"]["kind"] == "bad_cwd"
    assert (
        peer.request("exec", argv=["/no/such/program"], cwd="/")["error"]["kind"] == "spawn_failed"
    )
    assert peer.request("exec", shell="true", env={"A": 1}, cwd="/")["error"]["kind"] == "bad_args"
    assert peer.request("ping")["ok"] is True


def test_hello_echoes_the_nonce_with_agent_facts(peer: AgentPeer) -> None:
    result = peer.request("hello", nonce="abc123")["result"]
    assert result["nonce"] == "abc123"
    assert result["agent_version"] == agent.AGENT_VERSION
    assert result["python"]


def test_guest_programs_import_only_the_standard_library() -> None:
    """Every Python file shipped into the guest imports the standard library
    and its siblings (or, on the host, their pyro_mcp names) only."""
    shipped = {n: data for n, data in guest_files().items() if n.endswith(".py")}
    siblings = {PurePosixPath(n).stem for n in shipped}
    assert {"agent", "protocol", "fileops", "processes", "changes"} <= siblings
    assert {"identity", "disks", "network", "commands", "system"} <= siblings
    for name, data in shipped.items():
        for node in ast.walk(ast.parse(data)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            for module in names:
                top = module.split(".")[0]
                allowed = top in sys.stdlib_module_names or top in {"pyro_mcp", *siblings}
                assert allowed, (name, module)


def test_a_plain_shell_command_runs_without_the_shell_and_anything_else_keeps_it() -> None:
    env = dict(agent.BASE_ENV)
    sh = ["/bin/sh", "-c"]
    direct = commands._without_shell([*sh, "true"], env)
    assert direct[0].endswith("/true") and len(direct) == 1
    ls = commands._without_shell([*sh, "ls -la --color=never /tmp"], env)
    assert ls[0].endswith("/ls") and ls[1:] == ["-la", "--color=never", "/tmp"]
    for shell_needed in (
        "echo -e x",  # a builtin that differs from /bin/echo
        "cd /tmp",  # a builtin with no binary
        "A=1 env",  # an assignment
        "ls *.py",  # a glob
        "ls | wc -l",  # a pipe
        "ls > out",  # a redirection
        "echo $HOME",  # an expansion
        "ls 'a b'",  # quoting
        "./run.sh",  # a path: looked up in the command's cwd
        "no-such-program-here x",  # not on PATH: the shell says so
    ):
        assert commands._without_shell([*sh, shell_needed], env) == [*sh, shell_needed]
    assert commands._without_shell(["true"], env) == ["true"]  # an argv is left alone


def test_ssh_reaches_the_egress_helper_without_the_image_s_python(tmp_path: Path) -> None:
    rt = "/run/pyro/runtime"
    agent = [
        f"{rt}/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "--library-path",
        f"{rt}/lib/x86_64-linux-gnu:{rt}/usr/lib/x86_64-linux-gnu",
        f"{rt}/usr/bin/python3.11",
        "-E",
        "-s",
        "-u",
        "/run/pyro/agent.py",
    ]
    assert network.connect_command(agent, "/usr/bin/python3") == network.CONNECT_HELPER
    command = network.connect_command(agent, str(tmp_path / "no-python"))
    assert command == " ".join([*agent[:6], network.CONNECT_HELPER])
    # An agent started on the image's own Python: the helper's #! line.
    plain = ["/usr/bin/python3", "-u", "/run/pyro/agent.py"]
    assert network.connect_command(plain, "/nope") == network.CONNECT_HELPER
    # The command init.sh really runs is the one the test spells.
    init = (Path(network.__file__).parent / "init.sh").read_text()
    assert "rt=/run/pyro/runtime" in init and '"$rt/usr/bin/python3.11" -E -s -u' in init
