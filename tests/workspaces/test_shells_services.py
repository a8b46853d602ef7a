"""Shells, services, network policy and published ports against real guests."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from pyro_mcp import InvalidArgument, NotFound, Pyro
from tests.cli_helper import pyro_cli

pytestmark = pytest.mark.vm


def read_until(pyro: Pyro, ws: str, sh: str, needle: str, cursor: int = 0) -> dict[str, Any]:
    """Read from ``cursor`` until ``needle`` shows (a quiet half second alone can
    come before a python3 start under a busy TCG)."""
    deadline = time.monotonic() + 30
    while True:
        got = pyro.read_shell(ws, sh, cursor=cursor, plain=True, wait_for_idle_ms=500)
        if needle in got["output"] or time.monotonic() > deadline:
            return got


def test_a_shell_is_a_real_terminal_with_cursors_and_plain_rendering(pyro: Pyro) -> None:
    ws = pyro.create_workspace()["workspace_id"]
    pyro.exec_workspace(ws, "mkdir -p src")
    sh = pyro.open_shell(ws, cwd="src", cols=100, rows=30)["shell_id"]
    pyro.write_shell(ws, sh, "pwd; python3 -c 'import sys; print(sys.stdin.isatty())'; stty size")
    first = read_until(pyro, ws, sh, "30 100")
    assert (
        "/workspace/src" in first["output"]
        and "True" in first["output"]
        and "30 100" in first["output"]
    )

    pyro.write_shell(ws, sh, "printf 'step 1\\rstep 2\\n'; tput setaf 1; echo red; tput sgr0")
    second = pyro.read_shell(ws, sh, cursor=first["next_cursor"], plain=True, wait_for_idle_ms=500)
    assert "\nstep 2\n" in second["output"] and "\r" not in second["output"]
    assert "red" in second["output"] and "\x1b" not in second["output"]
    raw = pyro.read_shell(ws, sh, cursor=first["next_cursor"])
    assert "\x1b[" in raw["output"]  # raw reads keep the escapes

    pyro.write_shell(ws, sh, "sleep 300")
    pyro.read_shell(ws, sh, wait_for_idle_ms=300)
    pyro.signal_shell(ws, sh, "INT")
    pyro.write_shell(ws, sh, "echo after-interrupt")
    after = pyro.read_shell(ws, sh, cursor=second["next_cursor"], plain=True, wait_for_idle_ms=500)
    assert "after-interrupt" in after["output"]

    # A flood: the ring keeps the newest MiB, an old cursor learns what it missed.
    pyro.write_shell(ws, sh, "head -c 3000000 /dev/zero | tr '\\0' z; echo; echo flood-done")
    pyro.read_shell(ws, sh, wait_for_idle_ms=1000, max_wait_ms=60000, max_chars=10)
    stale = pyro.read_shell(ws, sh, cursor=0, max_chars=1000)
    assert stale["missed_bytes"] > 0 and stale["more"] is True and len(stale["output"]) <= 1000

    pyro.close_shell(ws, sh)
    with pytest.raises(NotFound, match="no shell"):
        pyro.write_shell(ws, sh, "true")
    with pytest.raises(InvalidArgument, match="shell_id"):
        pyro.read_shell(ws, "../../etc")
    exiting = pyro.open_shell(ws)["shell_id"]
    pyro.write_shell(ws, exiting, "exit 7")
    ended = pyro.read_shell(ws, exiting, wait_for_idle_ms=500, max_wait_ms=20000)
    assert ended["closed"] is True and ended["exit_code"] == 7
    with pytest.raises(InvalidArgument, match="is closed"):
        pyro.write_shell(ws, exiting, "echo too late")
    pyro.close_shell(ws, exiting)
    second_shell = pyro.open_shell(ws)["shell_id"]
    assert len(pyro.list_shells(ws)["shells"]) == 1
    pyro.reset_workspace(ws)
    with pytest.raises(NotFound):
        pyro.read_shell(ws, second_shell)
    pyro.delete_workspace(ws)


def test_a_published_service_answers_on_the_host_until_stopped(pyro: Pyro) -> None:
    ws = pyro.create_workspace(network_policy="egress+published-ports")["workspace_id"]
    pyro.write_workspace_file(ws, "app/index.html", "hello from the guest\n")
    web = pyro.start_service(
        ws,
        "web",
        "python3 -m http.server 8000",
        cwd="app",
        ready_http="http://127.0.0.1:8000/",
        published_ports=["8000"],
    )
    assert web["state"] == "running"
    (port,) = web["published_ports"]
    assert port["host"] == "127.0.0.1" and port["guest_port"] == 8000
    body = urllib.request.urlopen(
        f"http://127.0.0.1:{port['host_port']}/index.html", timeout=30
    ).read()
    assert body == b"hello from the guest\n"
    assert pyro.status_workspace(ws)["services"] == {"running": 1, "total": 1}
    assert pyro.list_services(ws)["services"][0]["published_ports"] == [port]
    assert "GET /index.html" in pyro.logs_service(ws, "web", tail_lines=5)["stdout"]
    assert pyro.diff_workspace(ws)["changes"] == [
        {"path": "app", "status": "added", "type": "directory", "binary": False},
        {"path": "app/index.html", "status": "added", "type": "file", "binary": False},
    ]  # service logs live outside /workspace

    with pytest.raises(InvalidArgument, match="already running"):
        pyro.start_service(ws, "web", "sleep 1")
    stopped = pyro.stop_service(ws, "web")
    assert stopped["state"] == "stopped" and stopped["published_ports"] == []
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port['host_port']}/", timeout=5)

    worker = pyro.start_service(
        ws, "worker", "sleep 1; touch .ready; sleep 300", ready_file=".ready"
    )
    assert worker["state"] == "running"
    pyro.reset_workspace(ws)
    with pytest.raises(NotFound, match="no service"):
        pyro.status_service(ws, "worker")
    pyro.delete_workspace(ws)


def test_services_that_never_get_ready_or_exit_at_once_are_reported(pyro: Pyro) -> None:
    ws = pyro.create_workspace()["workspace_id"]
    never = pyro.start_service(
        ws, "never", "sleep 300", ready_tcp="127.0.0.1:9", ready_timeout_seconds=2
    )
    assert never["state"] == "failed" and "not ready after 2 s" in never["reason"]
    assert pyro.exec_workspace(ws, "pgrep -x sleep || echo none")["stdout"] == "none\n"
    quick = pyro.start_service(ws, "quick", "echo bye; exit 3", ready_file="never")
    assert (quick["state"], quick["exit_code"]) == ("exited", 3)
    assert pyro.logs_service(ws, "quick", all=True)["stdout"] == "bye\n"
    pyro.delete_workspace(ws)


def test_network_policy_off_has_no_network_and_cannot_publish(pyro: Pyro) -> None:
    ws = pyro.create_workspace()["workspace_id"]
    assert pyro.status_workspace(ws)["network_policy"] == "off"
    assert pyro.exec_workspace(ws, "ls /sys/class/net")["stdout"].split() == ["lo"]
    with pytest.raises(InvalidArgument, match="egress\\+published-ports"):
        pyro.start_service(ws, "web", "sleep 100", published_ports=["8000"])
    assert pyro.list_services(ws)["services"] == []
    pyro.delete_workspace(ws)
    egress = pyro.create_workspace(network_policy="egress")["workspace_id"]
    assert "eth0" in pyro.exec_workspace(egress, "ls /sys/class/net")["stdout"]
    with pytest.raises(InvalidArgument, match="cannot publish"):
        pyro.start_service(egress, "web", "sleep 100", published_ports=["8000"])
    pyro.delete_workspace(egress)


def test_a_host_port_already_in_use_is_refused(pyro: Pyro) -> None:
    ws = pyro.create_workspace(network_policy="egress+published-ports")["workspace_id"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(InvalidArgument, match=f"port {busy} is already in use"):
            pyro.start_service(
                ws, "web", "python3 -m http.server 8000", published_ports=[f"{busy}:8000"]
            )
    assert pyro.list_services(ws)["services"] == []
    pyro.delete_workspace(ws)


def test_shells_and_services_through_the_cli(cli_env: dict[str, str]) -> None:
    ws = pyro_cli(
        cli_env, "workspace", "create", "--network-policy", "egress+published-ports", "--id-only"
    ).stdout.strip()
    sh = pyro_cli(cli_env, "workspace", "shell", "open", ws, "--id-only").stdout.strip()
    assert (
        pyro_cli(
            cli_env, "workspace", "shell", "write", ws, sh, "--input", "echo cli-$((40+2))"
        ).returncode
        == 0
    )
    read = pyro_cli(
        cli_env, "workspace", "shell", "read", ws, sh, "--plain", "--wait-for-idle-ms", "500"
    )
    assert "cli-42" in read.stdout and "next_cursor=" in read.stderr
    assert pyro_cli(cli_env, "workspace", "shell", "close", ws, sh).returncode == 0
    started = pyro_cli(
        cli_env,
        "workspace",
        "service",
        "start",
        ws,
        "web",
        "--ready-tcp",
        "127.0.0.1:8000",
        "--publish",
        "8000",
        "--json",
        "--",
        "python3",
        "-m",
        "http.server",
        "8000",
    )
    assert started.returncode == 0, started.stderr
    host_port = json.loads(started.stdout)["published_ports"][0]["host_port"]
    assert urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=30).status == 200
    listing = pyro_cli(cli_env, "workspace", "service", "list", ws).stdout
    assert "web" in listing and f"{host_port}->8000" in listing
    failed = pyro_cli(
        cli_env,
        "workspace",
        "service",
        "start",
        ws,
        "bad",
        "--ready-file",
        "x",
        "--ready-timeout-seconds",
        "1",
        "--",
        "sleep",
        "100",
    )
    assert failed.returncode == 1 and "failed" in failed.stdout
    assert pyro_cli(cli_env, "workspace", "service", "stop", ws, "web").returncode == 0
    assert pyro_cli(cli_env, "workspace", "delete", ws).returncode == 0
