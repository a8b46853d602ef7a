"""pyro registered with the real Claude Code, Codex and OpenCode CLIs (pinned in tools/host-clis).

Each test gives the host a throwaway HOME and a PATH without pyro on it: the
registration must work through the absolute command alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_mcp.hosts.configs import Entry
from pyro_mcp.hosts.service import health_check

ROOT = Path(__file__).resolve().parents[2]
HOST_BIN = ROOT / "tools" / "host-clis" / "node_modules" / ".bin"
PYRO = Path(sys.executable).parent / "pyro"


@pytest.fixture
def host_env(tmp_path: Path, cli_env: dict[str, str]) -> dict[str, str]:
    for name in ("claude", "codex", "opencode"):
        assert (HOST_BIN / name).exists(), "run `make test` (it installs tools/host-clis)"
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    env = {
        key: value
        for key, value in cli_env.items()
        if not key.startswith(("VIRTUAL_ENV", "UV_", "CLAUDE", "CODEX", "OPENCODE"))
    }
    env.update(
        HOME=str(home),
        TMPDIR=str(home / "tmp"),
        # The hosts' CLIs and node, but not pyro: it must be found by its absolute path.
        PATH=f"{HOST_BIN}:/usr/bin:/bin",
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
        OPENCODE_DISABLE_MODELS_FETCH="1",
        OPENCODE_DISABLE_AUTOUPDATE="1",
    )
    assert subprocess.run(["sh", "-c", "command -v pyro"], env=env, check=False).returncode != 0
    return env


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "app.py").write_text("print('hi')\n")
    git = ["git", "-C", str(root), "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    return root


def pyro(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PYRO), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def host(env: dict[str, str], cwd: Path, *argv: str) -> str:
    result = subprocess.run(
        [str(HOST_BIN / argv[0]), *argv[1:]],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return result.stdout + result.stderr


def doctor(env: dict[str, str], cwd: Path, *flags: str) -> dict[str, dict]:
    result = pyro(env, cwd, "host", "doctor", "--json", *flags)
    return {h["host"]: h for h in json.loads(result.stdout)["hosts"]}


def test_claude_code_connects_and_reports_healthy_then_drift_is_repaired(
    host_env: dict[str, str], project: Path
) -> None:
    connected = pyro(host_env, project, "host", "connect", "claude-code", "--json")
    assert connected.returncode == 0, connected.stderr
    assert json.loads(connected.stdout)["command"] == str(PYRO)
    assert "✔ Connected" in host(host_env, project, "claude", "mcp", "list")
    report = doctor(host_env, project)["claude-code"]
    assert report["status"] == "ok" and report["health"]["ok"]
    assert report["project_source"] == {
        "origin_kind": "project_path",
        "origin_ref": str(project),
        "tracked_files": 1,
    }
    # Connecting again replaces the entry (here: with a mode), never duplicates it.
    again = pyro(host_env, project, "host", "connect", "claude-code", "--mode", "inspect")
    assert again.returncode == 0, again.stderr
    config = Path(host_env["HOME"]) / ".claude.json"
    data = json.loads(config.read_text())
    assert data["mcpServers"]["pyro"]["args"] == ["mcp", "serve", "--mode", "inspect"]

    # Broken by hand: a bare `pyro` the host cannot find without PATH.
    data["mcpServers"]["pyro"]["command"] = "pyro"
    data["mcpServers"]["other"] = {"type": "stdio", "command": "/bin/true", "args": []}
    config.write_text(json.dumps(data))
    assert "Failed to connect" in host(host_env, project, "claude", "mcp", "list")
    assert doctor(host_env, project, "--no-health")["claude-code"]["status"] == "drifted"
    repaired = pyro(host_env, project, "host", "repair", "claude-code")
    assert repaired.returncode == 0, repaired.stderr
    assert doctor(host_env, project, "--no-health")["claude-code"]["status"] == "ok"
    data = json.loads(config.read_text())
    assert data["mcpServers"]["other"]["command"] == "/bin/true"
    assert "✔ Connected" in host(host_env, project, "claude", "mcp", "list").split("pyro:")[1]


def test_codex_connects_and_what_it_would_start_completes_a_handshake(
    host_env: dict[str, str], project: Path
) -> None:
    connected = pyro(host_env, project, "host", "connect", "codex", "--mode", "repro-fix")
    assert connected.returncode == 0, connected.stderr
    got = json.loads(host(host_env, project, "codex", "mcp", "get", "pyro", "--json"))
    transport = got["transport"]
    assert transport["command"] == str(PYRO)
    # `codex mcp list|get` never start a server: start exactly what Codex would,
    # where Codex would (outside a thread: ~/.codex), and shake hands.
    cwd = Path(host_env["HOME"]) / ".codex"
    health = health_check(Entry(transport["command"], transport["args"]), cwd)
    assert health["ok"] and health["tools"] > 5, health
    report = doctor(host_env, project)["codex"]
    assert report["status"] == "ok" and report["health"]["ok"]
    assert report["server_cwd"] == str(cwd)
    assert report["project_source"]["origin_kind"] == "none"
    assert "--project-path" in report["project_source"]["reason"]
    with pytest.raises(AssertionError):
        assert (
            pyro(host_env, project, "host", "connect", "codex", "--scope", "project").returncode
            == 0
        )


def test_opencode_connects_and_repair_keeps_the_users_config(
    host_env: dict[str, str], project: Path
) -> None:
    config = Path(host_env["HOME"]) / ".config" / "opencode" / "opencode.jsonc"
    config.parent.mkdir(parents=True)
    config.write_text(
        '{\n  // my opencode settings\n  "mcp": {\n'
        '    "pyro": {"type": "local", "command": ["pyro", "mcp", "serve"]}\n  }\n}\n'
    )
    assert doctor(host_env, project, "--no-health")["opencode"]["status"] == "drifted"
    listed = host(host_env, project, "opencode", "mcp", "list")
    assert "pyro" in listed and "connected" not in listed.split("pyro", 1)[1].splitlines()[0]
    result = pyro(host_env, project, "host", "repair", "opencode", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["backup"]
    assert "// my opencode settings" in config.read_text()
    assert "connected" in host(host_env, project, "opencode", "mcp", "list")
    report = doctor(host_env, project)["opencode"]
    assert report["status"] == "ok" and report["health"]["ok"]


def test_a_server_that_cannot_start_shows_its_own_error_in_doctor(
    host_env: dict[str, str], project: Path
) -> None:
    connected = pyro(
        host_env, project, "host", "connect", "claude-code", "--project-path", str(project / "gone")
    )
    # Registered, but connect says at once that the server does not start.
    assert connected.returncode == 1 and "FAILS" in connected.stdout and "gone" in connected.stdout
    report = doctor(host_env, project)["claude-code"]
    assert report["status"] == "ok"  # the entry is what connect wrote ...
    assert not report["health"]["ok"]  # ... but the server refuses to start, and says why
    assert "gone" in report["health"]["error"]
    assert pyro(host_env, project, "host", "doctor").returncode == 1


def test_print_config_redirected_into_each_hosts_config_file_is_read_by_that_host(
    host_env: dict[str, str], project: Path
) -> None:
    """`pyro host print-config HOST > FILE` writes exactly the host's format."""
    home = Path(host_env["HOME"])

    def printed(name: str) -> str:
        done = pyro(host_env, project, "host", "print-config", name)
        assert done.returncode == 0, done.stderr
        return done.stdout

    opencode = home / ".config" / "opencode" / "opencode.json"
    opencode.parent.mkdir(parents=True)
    opencode.write_text(printed("opencode"))
    listed = host(host_env, project, "opencode", "mcp", "list")
    assert "connected" in listed.split("pyro", 1)[1].splitlines()[0], listed

    (home / ".claude.json").write_text(printed("claude-code"))
    assert "✔ Connected" in host(host_env, project, "claude", "mcp", "list")

    codex = home / ".codex" / "config.toml"
    codex.parent.mkdir()
    codex.write_text(printed("codex"))
    got = json.loads(host(host_env, project, "codex", "mcp", "get", "pyro", "--json"))
    assert got["transport"]["command"] == str(PYRO)

    generic = json.loads(printed("generic"))
    assert generic["mcpServers"]["pyro"]["command"] == str(PYRO)
    # Where it goes is said on stderr, never mixed into the config.
    hint = pyro(host_env, project, "host", "print-config", "codex")
    assert "config.toml" in hint.stderr and "config.toml" not in hint.stdout
